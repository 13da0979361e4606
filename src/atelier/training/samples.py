"""Verification images during training, from prompt lines in kohya's sample-prompt format.

One prompt per line, options after `` --``, as in kohya-ss sd-scripts::

    photo of oue car, studio --n blurry, watermark --w 512 --h 512 --d 42 --l 7.5 --s 28 --ss euler_a

``--n`` negative prompt, ``--w``/``--h`` size (rounded down to a multiple of 8), ``--d`` seed, ``--l`` CFG scale,
``--s`` steps, ``--ss`` sampler. Lines starting with ``#`` are comments. kohya's defaults apply to what a line
leaves out (512x512, 30 steps, CFG 7.5, a random seed). Images are rendered by the generation engine with the
LoRA being trained active, and file names carry their seeds so a sample can be reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError
from atelier.prompts.parser import extract_loras

DEFAULT_SIZE = 512
DEFAULT_STEPS = 30
DEFAULT_CFG_SCALE = 7.5

# kohya's --sample_sampler / --ss names that are not already A1111 names or k-diffusion aliases.
KOHYA_SAMPLERS = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "dpm_2_a": "DPM2 a",
    "dpmsolver": "DPM++ 2M",
    "dpmsolver++": "DPM++ 2M",
}


@dataclass(frozen=True)
class SamplePrompt:
    """One sample prompt line, parsed."""

    prompt: str
    negative_prompt: str = ""
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    seed: int | None = None
    cfg_scale: float = DEFAULT_CFG_SCALE
    steps: int = DEFAULT_STEPS
    sampler: str | None = None


def sampler_name(name: str) -> str:
    """An A1111 sampler name for a kohya or A1111 one (the engine resolves aliases such as ``k_euler_a``)."""
    return KOHYA_SAMPLERS.get(name.strip().lower(), name.strip())


def _number(option: str, value: str, kind: type, line: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise AtelierError(
            f"sample prompt option --{option} needs a number, got {value!r} in: {line}",
            field="sample_prompts",
        ) from None


def parse_sample_prompt(line: str, *, warn: Callable[[str], None] | None = None) -> SamplePrompt:
    """Parse one kohya sample prompt line; unknown options are reported through ``warn`` and skipped."""
    # The leading space makes a line that starts with an option have an empty prompt rather than "--w 512".
    prompt, *options = (" " + line.strip()).split(" --")
    values: dict[str, Any] = {"prompt": prompt.strip()}
    for option_text in options:
        option, _, value = option_text.strip().partition(" ")
        option, value = option.lower(), value.strip()
        if option == "n":
            values["negative_prompt"] = value
        elif option in ("w", "h"):
            size = _number(option, value, int, line)
            values["width" if option == "w" else "height"] = max(64, size - size % 8)
        elif option == "d":
            values["seed"] = _number(option, value, int, line)
        elif option == "l":
            values["cfg_scale"] = _number(option, value, float, line)
        elif option == "s":
            values["steps"] = max(1, min(1000, _number(option, value, int, line)))
        elif option == "ss":
            values["sampler"] = sampler_name(value)
        elif warn is not None:
            warn(f"sample prompt option --{option} is not supported and was ignored: {line}")
    if not values["prompt"]:
        raise AtelierError(f"sample prompt line has no prompt: {line!r}", field="sample_prompts")
    # Found now rather than at the first sample, hours into a run: samples have no LoRA folder to draw from.
    for text in (values["prompt"], values.get("negative_prompt", "")):
        if extract_loras(text)[1]:
            raise AtelierError(
                f"sample prompts cannot use <lora:...> tags (the LoRA being trained is applied already): {line}",
                field="sample_prompts",
            )
    return SamplePrompt(**values)


def load_sample_prompts(
    source: str | os.PathLike[str] | Sequence[str] | None, *, warn: Callable[[str], None] | None = None
) -> list[SamplePrompt]:
    """Prompts from a ``.txt`` file of lines or from a list of lines (a TOML array); comments and blanks skipped."""
    if source is None:
        return []
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except FileNotFoundError:
            raise AtelierError(f"sample prompt file not found: {path}", field="sample_prompts") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise AtelierError(
                f"cannot read sample prompt file {path}: {exc}", field="sample_prompts"
            ) from None
    else:
        lines = list(source)
    return [
        parse_sample_prompt(line, warn=warn)
        for line in lines
        if line.strip() and not line.strip().startswith("#")
    ]


def sample_filename(output_name: str, label: str, index: int, seed: int) -> str:
    """kohya's naming, minus the timestamp: ``<output_name>_<e000002 or 000150>_<index>_<seed>.png``."""
    return f"{output_name}_{label}_{index:02d}_{seed}.png"


class _OneModel:
    """Stands in for the engine's model cache: always the model being trained, never a reload from disk."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def get(self, path: Any, *, device: Any = None, dtype: Any = None) -> Any:
        return self.model


def render_samples(
    model: Any,
    prompts: Sequence[SamplePrompt],
    out_dir: Path,
    *,
    output_name: str,
    label: str,
    default_sampler: str,
    clip_skip: int,
    device: str,
) -> list[Path]:
    """Render every prompt with ``model`` (an engine ``LoadedModel``) into ``out_dir``; return the PNG paths."""
    from atelier.engine import Engine, GenerationRequest, write_png

    engine = Engine(
        device=device, dtype=model.pipeline.unet.dtype, models=_OneModel(model), memory_plans=False
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, sample in enumerate(prompts):
        request = GenerationRequest(
            prompt=sample.prompt,
            negative_prompt=sample.negative_prompt,
            model=str(model.path),
            sampler=sample.sampler or sampler_name(default_sampler),
            steps=sample.steps,
            cfg_scale=sample.cfg_scale,
            seed=-1 if sample.seed is None else sample.seed,
            width=sample.width,
            height=sample.height,
            clip_skip=clip_skip,
        )
        result = engine.generate(request)
        for generated in result.images:
            path = out_dir / sample_filename(output_name, label, index, generated.seed)
            write_png(path, generated.image, generated.infotext)
            paths.append(path)
    return paths


def generate_class_images(
    model: Any,
    prompt: str,
    folder: Path,
    count: int,
    *,
    width: int,
    height: int,
    steps: int,
    sampler: str,
    seed: int,
    device: str,
    on_image: Callable[[int, int], None] | None = None,
) -> int:
    """Top up ``folder`` to ``count`` class images of ``prompt`` from the base model (prior preservation).

    Each image gets a caption file holding the class prompt, so the folder is an ordinary regularization
    subset. Image ``i`` uses seed ``seed + i``, so an interrupted run generates the same set when resumed.
    Returns how many images were generated.
    """
    from atelier.engine import Engine, GenerationRequest, write_png
    from atelier.training.dataset import list_images

    folder.mkdir(parents=True, exist_ok=True)
    existing = len(list_images(folder))
    engine = Engine(
        device=device, dtype=model.pipeline.unet.dtype, models=_OneModel(model), memory_plans=False
    )
    for index in range(existing, count):
        request = GenerationRequest(
            prompt=prompt,
            model=str(model.path),
            sampler=sampler_name(sampler),
            steps=steps,
            seed=seed + index,
            width=width,
            height=height,
        )
        generated = engine.generate(request).images[0]
        stem = f"class_{index:05d}_{generated.seed}"
        (folder / f"{stem}.txt").write_text(prompt + "\n", encoding="utf-8")
        write_png(folder / f"{stem}.png", generated.image, generated.infotext)
        if on_image is not None:
            on_image(index + 1, count)
    return max(0, count - existing)
