"""Turning a client's request into a queued job, after checking everything that can be checked up front.

Both HTTP APIs (native and A1111) and the bucket watcher go through here, so a request is refused with the
same message whichever way it came, and a queued job only fails later for reasons that did not exist at
submission (a model deleted meanwhile, an out-of-memory error).
"""

from __future__ import annotations

import io
import random
import tempfile
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image
from pydantic import BaseModel

from atelier.errors import AtelierError, UnsafeFileError
from atelier.files import TEMP_PREFIX, parse_toml
from atelier.images import check_pixels
from atelier.service.commercial import check_generation, check_model
from atelier.service.job_types import CaptionPayload, GeneratePayload, TrainPayload
from atelier.service.jobs import Job
from atelier.service.registry import ModelRecord
from atelier.service.studio import Studio
from atelier.service.training_rights import RIGHTS_KEY, check_rights_table, training_rights

# Request fields a client may set, in GenerationRequest's (A1111's) vocabulary. Images and model names are
# handled separately: images are stored as files, models are registry names.
GENERATION_FIELDS = (
    "prompt",
    "vae",
    "negative_prompt",
    "sampler",
    "schedule_type",
    "steps",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "batch_size",
    "batch_count",
    "clip_skip",
    "denoising_strength",
    "mask_blur",
    "inpaint_only_masked",
    "inpaint_padding",
    "inpainting_fill",
    "mask_invert",
    "refiner_prompt",
    "refiner_negative_prompt",
    "refiner_switch_at",
    "tiling",
    "fast",
    "enable_hr",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_sampler",
    "hr_prompt",
    "hr_negative_prompt",
)
# caption_missing: "clip" (the studio's captioning model) or a model in models/captioning/ captions the images
# that have none before training, like `atelier train --caption-missing`; the worker resolves it to a folder.
CAPTION_MISSING_KEY = "caption_missing"
TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO = (
    CAPTION_MISSING_KEY,
    RIGHTS_KEY,
    "base",
    "preset",
    "pretrained_model_name_or_path",
    "train_data_dir",
    "output_dir",
)
MAX_SEED = 2**32 - 2


@dataclass
class PreparedGeneration:
    """A checked generation request, ready to queue."""

    params: dict[str, Any]
    model: ModelRecord
    refiner: ModelRecord | None = None
    loras: list[ModelRecord] = field(default_factory=list)
    init_image: Image.Image | None = None
    mask: Image.Image | None = None
    controlnet_units: list[Any] = field(default_factory=list)  # engine ControlUnits, images included

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpaint"
        return "img2img" if self.init_image is not None else "txt2img"


def prepare_generation(
    studio: Studio,
    values: Mapping[str, Any],
    *,
    model: str | None = None,
    refiner: str | None = None,
    init_image: Image.Image | None = None,
    mask: Image.Image | None = None,
    controlnet_units: list[Any] | None = None,
    styles: list[str] | None = None,
) -> PreparedGeneration:
    """Check a generation request against the engine's rules, the registry and the studio's limits.

    ``styles`` names saved prompt styles, applied to the prompt and negative prompt first (A1111's ``styles``);
    an unknown one is refused rather than skipped, so a typo never silently changes the picture.

    Raises :class:`AtelierError` (or :class:`~atelier.errors.NotFoundError`) naming the offending field. The
    seed is fixed here (-1 becomes a random seed) so that the job's outputs are the same if it runs again.
    """
    from atelier.engine import GenerationRequest, resolve_sampler
    from atelier.prompts.parser import parse_prompt

    unknown = sorted(set(values) - set(GENERATION_FIELDS))
    if unknown:
        raise AtelierError(f"unknown field {unknown[0]!r}", field=unknown[0])
    params = dict(values)
    if styles:
        from atelier.prompts.styles import apply_styles
        from atelier.service.styles import StyleLibrary

        params["prompt"], params["negative_prompt"] = apply_styles(
            params.get("prompt", ""),
            params.get("negative_prompt", ""),
            StyleLibrary(studio.settings).find(styles),
        )
    request = GenerationRequest(
        **params, model=model, init_image=init_image, mask=mask, controlnet_units=list(controlnet_units or [])
    )
    request.validate(max_controlnet_units=studio.config.max_controlnet_units)
    limits = studio.config
    check_pixels(request.width, request.height, limits.max_image_pixels, label="width", field="width")
    out_width, out_height = request.output_size()
    if request.enable_hr:
        check_pixels(out_width, out_height, limits.max_image_pixels, label="hires size", field="hr_scale")
    if out_width * out_height * request.batch_size > limits.max_output_pixels:
        raise AtelierError(
            f"batch_size {request.batch_size} at {out_width}x{out_height} is over the limit of "
            f"{limits.max_output_pixels} pixels per batch",
            field="batch_size",
        )
    params["sampler"], params["schedule_type"] = resolve_sampler(request.sampler, request.schedule_type)
    if request.enable_hr and request.hr_sampler:
        try:
            params["hr_sampler"] = resolve_sampler(request.hr_sampler, request.schedule_type)[0]
        except AtelierError as problem:
            raise AtelierError(str(problem).replace("sampler", "hr_sampler", 1), field="hr_sampler") from None
    if request.seed == -1:
        params["seed"] = random.randrange(MAX_SEED - request.batch_size * request.batch_count)

    checkpoint = (
        studio.registry.find_checkpoint(model)
        if model
        else studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))
    )
    if checkpoint.architecture == "sdxl-refiner" and request.mode == "txt2img":
        raise AtelierError(
            f"{checkpoint.name} is an SDXL refiner; it cannot generate from text alone", field="model"
        )
    refiner_record = None
    if refiner:
        refiner_record = studio.registry.find_checkpoint(refiner, field="refiner")
        if refiner_record.architecture != "sdxl-refiner":
            raise AtelierError(f"{refiner_record.name} is not an SDXL refiner", field="refiner")
        if checkpoint.architecture != "sdxl":
            raise AtelierError("a refiner can only follow an SDXL base model", field="refiner")
        if request.mode != "txt2img":
            raise AtelierError("the refiner stage is available for txt2img only", field="refiner")

    if request.vae:
        # A1111 names VAEs with their suffix ("vae-ft-mse.safetensors"); the registry by the bare name.
        params["vae"] = studio.registry.get(request.vae.removesuffix(".safetensors"), "vae").name
    loras = []
    prompts = [request.prompt] + ([request.refiner_prompt] if request.refiner_prompt else [])
    for text in prompts:
        for tag in parse_prompt(text).loras:
            record = studio.registry.get(tag.name, "lora")
            if record.family not in ("unknown", checkpoint.family):
                raise AtelierError(
                    f"LoRA {record.name!r} was trained for {record.family.upper()} but the model "
                    f"{checkpoint.name!r} is {checkpoint.family.upper()}",
                    field="lora",
                )
            loras.append(record)
    controlnet_paths = []
    if request.controlnet_units:
        from atelier.service.controlnets import check_unit_models, controlnet_library

        library = controlnet_library(studio.storage, studio.config.cache_dir)
        check_unit_models(library, request.controlnet_units, checkpoint)
        controlnet_paths = [library.resolve(unit.model) for unit in request.controlnet_units]
    prepared = PreparedGeneration(
        params, checkpoint, refiner_record, loras, init_image, mask, request.controlnet_units
    )
    texts = [
        request.prompt,
        request.negative_prompt,
        request.refiner_prompt or "",
        request.refiner_negative_prompt or "",
        request.hr_prompt or "",
        request.hr_negative_prompt or "",
    ]
    check_generation(studio, prepared, texts, controlnet_paths)
    return prepared


def png_for_job(image: Image.Image) -> bytes:
    """An input image as a job stores it for its worker (transparency kept)."""
    buffer = io.BytesIO()
    # Inputs are read once by a worker: fast compression beats small files here.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def submit_generation(
    studio: Studio,
    prepared: PreparedGeneration,
    *,
    priority: int = 0,
    owner: str | None = None,
    webhook_url: str | None = None,
    origin: str | None = None,
) -> Job:
    """Store the request's images and queue the generate job (``origin``: which API queued it)."""
    check_webhook(studio, webhook_url)
    job_id = uuid.uuid4().hex
    keys: dict[str, str] = {}
    for name, image in (("init_image", prepared.init_image), ("mask", prepared.mask)):
        if image is not None:
            key = f"outputs/{job_id}/inputs/{name}.png"
            studio.storage.put_bytes(key, png_for_job(image))
            keys[f"{name}_key"] = key
    units = None
    if prepared.controlnet_units:
        from atelier.service.controlnets import store_units

        units = store_units(studio.storage, job_id, prepared.controlnet_units)
    payload = GeneratePayload(
        request=prepared.params,
        model=prepared.model.name,
        refiner=prepared.refiner.name if prepared.refiner else None,
        loras=[record.name for record in prepared.loras],
        mode=prepared.mode,
        controlnet_units=units,
        origin=origin,
        **keys,
    )
    return submit_job(studio, "generate", payload, job_id, priority, owner, webhook_url)


def submit_job(
    studio: Studio,
    kind: str,
    payload: BaseModel,
    job_id: str,
    priority: int,
    owner: str | None,
    webhook_url: str | None,
) -> Job:
    job = studio.store.submit(
        kind,
        payload.model_dump(mode="json"),
        priority=priority,
        owner=owner,
        max_attempts=studio.config.max_attempts,
        webhook_url=webhook_url,
        job_id=job_id,
    )
    return job


def submit_caption(
    studio: Studio,
    image: Image.Image,
    model: str,
    *,
    priority: int = 0,
    owner: str | None = None,
    origin: str | None = None,
) -> Job:
    """Queue a caption job (A1111's interrogate) for ``image`` with the captioning model serving ``model``.

    ``model`` is A1111's name (``clip``) or a captioning model's; an unknown one, or a studio without any, is
    refused here, before anything is stored. A worker runs the model, so the API process never loads torch.
    """
    from atelier.service.captioning import resolve_captioning_model

    name = resolve_captioning_model(studio.storage, model)
    job_id = uuid.uuid4().hex
    key = f"outputs/{job_id}/inputs/image.png"
    studio.storage.put_bytes(key, png_for_job(image))
    payload = CaptionPayload(image_key=key, model=name, origin=origin)
    return submit_job(studio, "caption", payload, job_id, priority, owner, None)


def check_webhook(studio: Studio, webhook_url: str | None) -> None:
    """Refuse a webhook URL that could never be delivered before anything is queued or stored."""
    if webhook_url is not None:
        studio.webhooks.check_url(webhook_url)


def read_train_config(data: bytes, *, name: str) -> dict[str, Any]:
    """Parse the TOML hyper-parameters uploaded next to a training zip."""
    return parse_toml(data, name=name, field="config")


def training_preset(base: ModelRecord) -> str:
    """The preset used when an upload names none: the one made for the base model's family."""
    return "sdxl-dreambooth-lora" if base.family == "sdxl" else "sd15-lora"


def check_train_config(
    studio: Studio, config: Mapping[str, Any], *, base: str | None = None
) -> tuple[ModelRecord, str]:
    """Check training hyper-parameters (kohya names) and the base model now, not hours later in the worker.

    Returns the base model and the preset to layer the config on.
    """
    from atelier.training import load_train_config

    settings = dict(config)
    caption_model(studio, settings)  # refuses an unknown or missing captioning model now
    base_name = settings.pop("base", None) or settings.pop("pretrained_model_name_or_path", None) or base
    preset = settings.pop("preset", None)
    for key in TRAIN_CONFIG_KEYS_OWNED_BY_STUDIO:
        settings.pop(key, None)
    if base_name is not None and not isinstance(base_name, str):
        raise AtelierError("base must be the name of a registered checkpoint", field="base")
    if base_name:
        base_record = studio.registry.find_checkpoint(base_name, field="base")
    else:
        base_record = studio.registry.default_checkpoint(studio.settings.get("sd_model_checkpoint"))
    check_model(studio.config, base_record, "base")
    if config.get(RIGHTS_KEY) is not None:
        check_rights_table(config[RIGHTS_KEY], where="the training settings", source="settings")
    if preset is not None and not isinstance(preset, str):
        raise AtelierError("preset must be a preset name", field="preset")
    preset = preset or training_preset(base_record)
    load_train_config(settings, preset=preset)
    return base_record, preset


def caption_model(studio: Studio, config: Mapping[str, Any]) -> str | None:
    """The captioning model a training config's ``caption_missing`` asks for (None: caption nothing)."""
    from atelier.service.captioning import A1111_CAPTION_MODEL, resolve_captioning_model

    wanted = config.get(CAPTION_MISSING_KEY)
    if wanted in (None, False, ""):
        return None
    if wanted is True:
        wanted = A1111_CAPTION_MODEL
    if not isinstance(wanted, str):
        raise AtelierError(
            "caption_missing must be true or the name of a captioning model", field=CAPTION_MISSING_KEY
        )
    try:
        return resolve_captioning_model(studio.storage, wanted)
    except AtelierError as problem:
        raise type(problem)(str(problem), field=CAPTION_MISSING_KEY) from None


def check_training_archive(path: Path, name: str, config: Mapping[str, Any]) -> Any:
    """Refuse, at the door, a training zip that a worker would refuse hours later; return its ``rights.toml``.

    The archive is read through as extraction would read it (escaping paths, links, bombs, too many entries,
    CRC errors: ``training.archive.check_zip``); it must hold at least one image; a ``dataset_config`` must
    name a file inside it, and a ``dataset.toml`` (named or found) must be valid TOML. A ``rights.toml`` in it
    is checked and returned (a ``RightsRecord``; None without one).
    """
    from atelier.training import IMAGE_EXTENSIONS, check_zip, rights_in_zip

    files = check_zip(path)
    rights = rights_in_zip(path, files)
    if not any(PurePosixPath(file).suffix.lower() in IMAGE_EXTENSIONS for file in files):
        raise AtelierError(
            f"{name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); put the training photos in the zip",
            field="training_data",
        )
    dataset_config = config.get("dataset_config")
    if dataset_config is not None:
        wanted = _inside_archive(dataset_config, name)
        if wanted not in files:
            raise AtelierError(
                f"dataset_config {dataset_config!r} is not a file in {name}", field="dataset_config"
            )
    elif "dataset.toml" in files:
        wanted = "dataset.toml"
    else:
        return rights
    with zipfile.ZipFile(path) as archive:
        parse_toml(archive.read(wanted), name=f"{name}/{wanted}", field="dataset_config")
    return rights


def _inside_archive(value: object, archive_name: str) -> str:
    """A dataset_config value as a path inside the archive; refused when it could point anywhere else."""
    if not isinstance(value, str) or not value.strip():
        raise AtelierError(
            "dataset_config must be a file name inside the training zip", field="dataset_config"
        )
    path = PurePosixPath(value.strip().replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or ":" in value:
        raise UnsafeFileError(
            f"dataset_config {value!r} must be a path inside {archive_name}, such as 'dataset.toml'",
            field="dataset_config",
        )
    return path.as_posix()


@contextmanager
def _local_copy(studio: Studio, key: str) -> Iterator[Path]:
    """The stored object as a local file: in place on local storage, else a temporary download."""
    local = studio.storage.local_path(key)
    if local is not None:
        yield local
        return
    folder = studio.config.cache_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=TEMP_PREFIX) as scratch:
        yield studio.storage.get_file(key, Path(scratch) / PurePosixPath(key).name)


def training_output_name(studio: Studio, wanted: str, training_data: str) -> str:
    """The name the trained LoRA gets: ``wanted`` unless another model holds it, then ``wanted-2``, ...

    A run may replace only the LoRA an earlier run trained from the same zip (retraining); never a checkpoint
    (training ``windbreaker.zip`` next to the ``windbreaker`` checkpoint is what people do), an uploaded LoRA,
    or a file of that name that is not registered. The name is chosen at submission, so the UI shows it.
    """
    from atelier.service.registry import check_model_name

    check_model_name(wanted, what="output_name")

    def free(name: str) -> bool:
        holder = studio.registry.holder(name)
        if holder is not None:
            return (
                holder.kind == "lora"
                and holder.source == "training"
                and holder.details.get("training_data") == training_data
                and holder.storage_key == f"models/{name}.safetensors"
            )
        return not studio.storage.exists(f"models/{name}.safetensors")

    candidate, number = wanted, 1
    while not free(candidate):
        number += 1
        candidate = f"{wanted}-{number}"
    return candidate


def submit_training(
    studio: Studio,
    training_data: str,
    *,
    config: Mapping[str, Any] | None = None,
    config_key: str | None = None,
    base: str | None = None,
    preset: str | None = None,
    priority: int = -1,
    owner: str | None = None,
    webhook_url: str | None = None,
    archive_checked: bool = False,
    rights: Mapping[str, Any] | None = None,
    zip_rights: Any = None,
) -> Job:
    """Queue a LoRA training job for a zip in the training-data bucket (checked first).

    ``archive_checked``: the caller already ran :func:`check_training_archive` on these bytes (an upload), which
    found ``zip_rights``. ``rights``: the request's own rights record (:mod:`atelier.service.training_rights`).
    """
    if not training_data.startswith("training-data/") or not training_data.lower().endswith(".zip"):
        raise AtelierError("training_data must be a .zip in the training-data bucket", field="training_data")
    check_webhook(studio, webhook_url)
    if not studio.storage.exists(training_data):
        raise AtelierError(f"{training_data} does not exist", field="training_data")
    settings = dict(config or {})
    if preset is not None:
        settings.setdefault("preset", preset)
    base_record, preset = check_train_config(studio, settings, base=base)
    zip_name = PurePosixPath(training_data).name
    if not archive_checked:
        with _local_copy(studio, training_data) as local:
            zip_rights = check_training_archive(local, zip_name, settings)
    record = training_rights(
        studio,
        requested=rights,
        settings=settings,
        settings_name=PurePosixPath(config_key).name if config_key else "the training settings",
        zip_rights=zip_rights,
    )
    settings.pop(RIGHTS_KEY, None)
    wanted = settings.get("output_name") or zip_name.removesuffix(".zip")
    payload = TrainPayload(
        training_data=training_data,
        rights=record,
        config=settings,
        config_key=config_key,
        base=base_record.name,
        preset=preset,
        output_name=training_output_name(studio, wanted, training_data),
    )
    return submit_job(studio, "train", payload, uuid.uuid4().hex, priority, owner, webhook_url)
