"""Captioning models: a picture in, one line of text out (A1111's "interrogate", kohya's BLIP captions).

A captioning model is a transformers folder in the studio's ``models/captioning/<name>/``: ``config.json``,
``*.safetensors`` weights and its processor files (tokenizer, ``preprocessor_config.json``), as
``huggingface-cli download Salesforce/blip-image-captioning-large --local-dir models/captioning/blip-large``
leaves it. The folder's ``config.json`` says which family it is:

- ``blip``: BLIP captioning (``BlipForConditionalGeneration``), the model A1111's interrogator and kohya's
  ``make_captions.py`` use; unconditional captions ("a red bag on a white table").
- ``florence2``: Florence-2 in transformers' own format (``Florence2ForConditionalGeneration``, e.g.
  ``florence-community/Florence-2-base``), with a task prompt: ``<CAPTION>`` (the default),
  ``<DETAILED_CAPTION>`` or ``<MORE_DETAILED_CAPTION>``. Remote code is never run; a folder whose weights do
  not fit the architecture (such as one made for remote code) is refused rather than run with random layers.

Nothing is ever downloaded (``local_files_only``), only safetensors weights are read (pickle files can run
code when loaded), and decoding is greedy or beam search, never sampling: the same picture always gets the
same caption.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from atelier.engine.paths import PICKLE_SUFFIXES, check_name
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError

# The folder inside the studio's models folder (A1111 keeps its interrogators under models/ too).
CAPTIONING_FOLDER = "captioning"
# Florence-2's caption tasks; the others (detection, OCR, ...) do not answer with a caption.
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
DEFAULT_FLORENCE_TASK = "<CAPTION>"
# 75 tokens is one CLIP chunk: a caption that long is read whole by the text encoder it is trained with.
DEFAULT_MAX_NEW_TOKENS = 75
MAX_NEW_TOKENS = 512
MAX_BEAMS = 8
EXAMPLE_MODEL = "Salesforce/blip-image-captioning-large"


@dataclass(frozen=True)
class CaptioningFamily:
    """How one model_type of config.json is loaded."""

    model_type: str
    model_class: str  # in transformers
    processor_class: str
    label: str


FAMILIES = {
    family.model_type: family
    for family in (
        CaptioningFamily("blip", "BlipForConditionalGeneration", "BlipProcessor", "BLIP"),
        CaptioningFamily(
            "florence2", "Florence2ForConditionalGeneration", "Florence2Processor", "Florence-2"
        ),
    )
}


def captioning_model_hint(models_dir: str | os.PathLike[str]) -> str:
    """The sentence every "no captioning model" error ends with."""
    folder = Path(models_dir) / CAPTIONING_FOLDER
    return (
        f"put a transformers captioning model ({', '.join(FAMILIES)}: config.json, *.safetensors weights "
        f"and its processor files) in a folder of its own in {folder}/, e.g. {folder}/blip-large/ "
        f"downloaded from {EXAMPLE_MODEL}"
    )


def list_captioning_models(models_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the captioning models in ``models_dir/captioning/`` (folders with a config.json), sorted."""
    folder = Path(models_dir) / CAPTIONING_FOLDER
    if not folder.is_dir():
        return []
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / "config.json").is_file()
    )


def find_captioning_model(models_dir: str | os.PathLike[str], name: str | None = None) -> Path:
    """The folder of captioning model ``name`` in ``models_dir/captioning/``; without a name, the first one.

    The first by name, rather than an error when there are several, because A1111 clients can only ask for
    "clip": a studio with two captioning models still answers them (its caption job records which one).
    """
    names = list_captioning_models(models_dir)
    folder = Path(models_dir) / CAPTIONING_FOLDER
    if name is None:
        if not names:
            raise NotFoundError(
                f"no captioning model in {folder}/: {captioning_model_hint(models_dir)}", field="model"
            )
        return folder / names[0]
    check_name(name, what="model")
    if name not in names:
        available = captioning_model_hint(models_dir)
        if names:
            available = f"the captioning models are {', '.join(names)}"
        raise NotFoundError(f"captioning model {name!r} not found in {folder}/; {available}", field="model")
    return folder / name


def read_model_type(folder: str | os.PathLike[str]) -> str:
    """The family of a captioning model folder, from its config.json; refused unless it is supported."""
    path = Path(folder)
    config_file = path / "config.json"
    if not path.is_dir():
        raise NotFoundError(f"captioning model folder not found: {path}", field="model")
    if not config_file.is_file():
        raise AtelierError(f"{path} has no config.json; it is not a transformers model folder", field="model")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AtelierError(f"{config_file} is not valid JSON ({exc})", field="model") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise AtelierError(
            f"{path.name}: model_type {model_type!r} is not a captioning model Atelier runs; supported: "
            f"{', '.join(FAMILIES)}",
            field="model",
        )
    return str(model_type)


def check_weights(folder: str | os.PathLike[str]) -> None:
    """Refuse a folder whose weights are only pickle files (``pytorch_model.bin``): loading one runs code."""
    path = Path(folder)
    if any(path.glob("*.safetensors")):
        return  # pickle files beside them (as Hugging Face downloads often have) are never read
    pickles = sorted(entry.name for entry in path.iterdir() if entry.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise UnsafeFileError(
            f"{path.name}: refusing {pickles[0]}: pickle weights can run code hidden in them when loaded; "
            "download the model's .safetensors weights instead",
            field="model",
        )
    raise AtelierError(f"{path.name} has no *.safetensors weights", field="model")


def _check_decoding(num_beams: int, max_new_tokens: int) -> None:
    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or not 1 <= num_beams <= MAX_BEAMS:
        raise AtelierError(f"num_beams must be 1 to {MAX_BEAMS}, got {num_beams!r}", field="num_beams")
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, int)
        or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        raise AtelierError(
            f"max_new_tokens must be 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}", field="max_new_tokens"
        )


class Captioner:
    """A loaded captioning model and its processor. Build it with :meth:`load`."""

    def __init__(self, *, name: str, family: CaptioningFamily, model: Any, processor: Any) -> None:
        self.name = name
        self.family = family
        self.model = model
        self.processor = processor

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: str | None = None) -> Captioner:
        """Load the model in ``folder`` onto ``device``, after checking its family and safetensors weights.

        ``device`` None means CUDA when there is one, else the CPU; half precision on CUDA, fp32 on the CPU
        (the engine's rule, repeated here so that captioning does not import diffusers).
        """
        import torch
        import transformers

        path = Path(folder)
        family = FAMILIES[read_model_type(path)]
        check_weights(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model_class = getattr(transformers, family.model_class)
        processor_class = getattr(transformers, family.processor_class)
        try:
            processor = processor_class.from_pretrained(str(path), local_files_only=True)
            model, loading = model_class.from_pretrained(
                str(path),
                local_files_only=True,
                use_safetensors=True,
                dtype=dtype,
                output_loading_info=True,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AtelierError(
                f"{path.name}: cannot load it as a {family.label} model ({first_line})", field="model"
            ) from None
        # Weights that do not fit the architecture would leave layers random and every caption gibberish.
        missing = sorted(loading.get("missing_keys") or [])
        if missing:
            raise AtelierError(
                f"{path.name}: its weights do not match a {family.label} model (missing {missing[0]} and "
                f"{len(missing) - 1} more); is it in transformers' own format?",
                field="model",
            )
        model.to(device).eval()
        return cls(name=path.name, family=family, model=model, processor=processor)

    @property
    def device(self) -> Any:
        return self.model.device

    def caption(
        self,
        image: Image.Image,
        *,
        num_beams: int = 1,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        task: str | None = None,
    ) -> str:
        """One caption for ``image``: greedy (``num_beams`` 1) or beam search, at most ``max_new_tokens``.

        ``task`` is Florence-2's caption task (default ``<CAPTION>``); BLIP has none and refuses one, rather
        than quietly giving a short caption to someone who asked for a detailed one.
        """
        import torch

        _check_decoding(num_beams, max_new_tokens)
        is_florence = self.family.model_type == "florence2"
        if is_florence:
            task = task or DEFAULT_FLORENCE_TASK
        if task is not None and (not is_florence or task not in FLORENCE_TASKS):
            choices = (
                ", ".join(FLORENCE_TASKS) if is_florence else f"none ({self.family.label} has no task prompt)"
            )
            raise AtelierError(
                f"task {task!r} is not available for {self.name}; choices: {choices}", field="task"
            )
        picture = image.convert("RGB")
        if is_florence:
            inputs = self.processor(text=task, images=picture, return_tensors="pt")
        else:
            inputs = self.processor(images=picture, return_tensors="pt")
        inputs = {
            key: value.to(self.device, self.model.dtype)
            if value.is_floating_point()
            else value.to(self.device)
            for key, value in inputs.items()
        }
        # A caption cannot be longer than the decoder has positions for (512 in BLIP, 1024 in Florence-2).
        positions = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if positions:
            max_new_tokens = min(max_new_tokens, positions - 1)
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs, do_sample=False, num_beams=num_beams, max_new_tokens=max_new_tokens
            )
        # Caption tasks answer plain text (Florence-2's "pure_text" post-processing only drops the special
        # tokens that skip_special_tokens drops): one decode serves both families.
        return " ".join(self.processor.decode(tokens[0], skip_special_tokens=True).split())
