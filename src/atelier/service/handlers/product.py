"""The product job: the product cut out of its photo, scenes generated around it, a shadow, each channel's shape,
upscales (the flow is ``campaign/product``; this module runs it on the worker's warm engine and stores it).

The product's pixels are exact in every stored picture: the flow lays the product from the photo into every
output, and outputs are written losslessly (PNG). A SAM model (``models/segmentation/<name>/``) is loaded for
the job and let go after it, like a captioning model: the worker's memory belongs to the checkpoint it keeps
warm, and a product with its own transparency or mask needs no segmentation at all.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

from atelier.images import open_image
from atelier.service.handlers.context import WorkerContext
from atelier.service.handlers.generate import png_bytes
from atelier.service.job_types import ProductImage, ProductPayload, ProductResult
from atelier.service.jobs import Job
from atelier.service.lease import JobInterrupted, JobLease
from atelier.service.model_folders import local_model_folder
from atelier.service.product import SEGMENTATION_PREFIX, shot_settings


def run_product(worker: WorkerContext, job: Job, lease: JobLease) -> ProductResult:
    from atelier.campaign.batch import EngineBackend
    from atelier.campaign.product import (
        ScenePreset,
        channel,
        cut_out,
        product_mask,
        scene_preset,
        shoot,
        shot_to_channel,
        upscale_shot,
    )
    from atelier.engine import COMPOSITE, Ingredient, Provenance
    from atelier.prompts.parser import parse_prompt

    payload = ProductPayload.model_validate(job.payload)
    started = time.monotonic()
    timings: dict[str, float] = {}
    limit = worker.config.max_image_pixels
    photo = open_image(worker.storage.get_bytes(payload.photo_key), field="photo", max_pixels=limit)
    mask = (
        open_image(worker.storage.get_bytes(payload.mask_key), field="mask", max_pixels=limit)
        if payload.mask_key
        else None
    )
    options = payload.model_dump()
    settings = shot_settings(options)
    preset = scene_preset(payload.scene)
    scene = ScenePreset(
        name=preset.name,
        title=preset.title,
        prompt=payload.prompt if payload.prompt is not None else preset.prompt,
        negative=payload.negative_prompt if payload.negative_prompt is not None else preset.negative,
        light=preset.light,
    )

    if payload.expand_only:
        return _expand(worker, job, payload, photo, scene, settings, lease)
    segmenter, segmentation = _segmenter(worker, payload.segmentation_model)
    found = product_mask(photo, mask=mask, segmenter=segmenter)
    del segmenter
    cutout = cut_out(photo, found)
    prefix = f"outputs/{job.id}"
    mask_key, cutout_key = f"{prefix}/mask.png", f"{prefix}/cutout.png"
    worker.storage.put_bytes(mask_key, _png(found))
    worker.storage.put_bytes(cutout_key, _png(_on_transparency(cutout)))
    timings["cutout"] = round(time.monotonic() - started, 4)
    result = ProductResult(
        mask_key=mask_key, cutout_key=cutout_key, segmentation_model=segmentation, timings=timings
    )
    if payload.cutout_only:
        return result

    checkpoint = worker.registry.find_checkpoint(payload.model)
    result.model = {"name": checkpoint.name, "sha256": checkpoint.sha256}
    prompt = scene.prompt_for(payload.product)
    lora_names = {tag.name for tag in parse_prompt(prompt).loras}
    worker.files.place_loras(worker.registry.get(name, "lora") for name in sorted(lora_names))
    worker.files.place_embeddings(worker.registry.list("embedding"))
    backend = EngineBackend(worker.engine, worker.files.local_path(checkpoint))
    # A real photo is kept in every output: a composite with AI-made parts, the photo its parent.
    provenance = Provenance(
        COMPOSITE,
        generation={"model": checkpoint.name, "model_sha256": checkpoint.sha256, "kind": "product shot"},
        ingredients=(Ingredient("photo.png", worker.storage.get_bytes(payload.photo_key), "parentOf"),),
    )
    targets = [channel(name) for name in payload.channels]
    stages = settings.count * (1 + len(targets) + (1 if payload.upscale_by else 0))
    done = 0

    def step_done() -> None:
        nonlocal done
        done += 1
        lease.report(done, stages)
        if lease.should_stop():
            raise JobInterrupted()

    begun = time.monotonic()
    shots = shoot(cutout, backend, scene, product=payload.product, settings=settings)
    for _ in shots:
        step_done()
    timings["scene"] = round(time.monotonic() - begun, 4)
    for index, shot in enumerate(shots):
        result.images.append(_store(worker, f"{prefix}/shot-{index}.png", shot, "shot", provenance))
    begun = time.monotonic()
    for target in targets:
        for index, shot in enumerate(shots):
            shaped = shot_to_channel(
                shot, cutout, target, backend, scene, product=payload.product, settings=settings.inpaint
            )
            result.images.append(
                _store(
                    worker,
                    f"{prefix}/{target.name}-{index}.png",
                    shaped,
                    "channel",
                    provenance,
                    channel=target.name,
                )
            )
            step_done()
    if targets:
        timings["channels"] = round(time.monotonic() - begun, 4)
    if payload.upscale_by:
        begun = time.monotonic()
        for index, shot in enumerate(shots):
            bigger = upscale_shot(shot, cutout, payload.upscale_by)
            result.images.append(
                _store(worker, f"{prefix}/upscaled-{index}.png", bigger, "upscale", provenance)
            )
            step_done()
        timings["upscale"] = round(time.monotonic() - begun, 4)
    timings["total"] = round(time.monotonic() - started, 4)
    return result


def _expand(
    worker: WorkerContext,
    job: Job,
    payload: ProductPayload,
    picture: Any,
    scene: Any,
    settings: Any,
    lease: JobLease,
) -> ProductResult:
    """Expand (outpaint) a picture to each channel's shape: its own pixels exact, the new area generated."""
    from atelier.campaign.batch import EngineBackend
    from atelier.campaign.product import channel, expand_image
    from atelier.engine import COMPOSITE, Ingredient, Provenance

    started = time.monotonic()
    checkpoint = worker.registry.find_checkpoint(payload.model)
    backend = EngineBackend(worker.engine, worker.files.local_path(checkpoint))
    provenance = Provenance(
        COMPOSITE,
        generation={"model": checkpoint.name, "model_sha256": checkpoint.sha256, "kind": "expand"},
        ingredients=(Ingredient("picture.png", worker.storage.get_bytes(payload.photo_key), "parentOf"),),
    )
    result = ProductResult(model={"name": checkpoint.name, "sha256": checkpoint.sha256})
    targets = [channel(name) for name in payload.channels]
    for done, target in enumerate(targets, start=1):
        expanded = expand_image(
            picture.convert("RGB"),
            target.size,
            backend,
            prompt=scene.prompt_for(payload.product),
            negative=scene.negative,
            settings=settings.inpaint,
        )
        shot = _Picture(expanded.image, expanded.seed, expanded.infotext)
        result.images.append(
            _store(
                worker,
                f"outputs/{job.id}/{target.name}.png",
                shot,
                "channel",
                provenance,
                channel=target.name,
            )
        )
        lease.report(done, len(targets))
        if lease.should_stop():
            raise JobInterrupted()
    result.timings["total"] = round(time.monotonic() - started, 4)
    return result


@dataclass(frozen=True)
class _Picture:
    """An expanded picture, as :func:`_store` reads a shot (no product box, no note)."""

    image: Any
    seed: int | None
    infotext: str
    box: tuple[int, ...] = ()
    note: str = ""


def _segmenter(worker: WorkerContext, name: str | None) -> tuple[Any, dict[str, Any] | None]:
    """The job's SAM segmenter and what the result records of it (name and licence), or (None, None)."""
    if not name:
        return None, None
    from atelier.campaign.product import SamSegmenter, read_segmentation_model

    folder = local_model_folder(
        worker.storage, worker.config.cache_dir, SEGMENTATION_PREFIX, name, what="segmentation model"
    )
    model = read_segmentation_model(folder)
    record = {"name": name, "license": model.license, "source": model.source}
    # The engine's device (config, else CUDA when there is one): SAM runs where the checkpoint runs.
    return SamSegmenter(model, device=worker.engine.device), record


def _store(
    worker: WorkerContext, key: str, shot: Any, kind: str, provenance: Any, *, channel: str | None = None
) -> ProductImage:
    name = key.rsplit("/", 1)[-1]
    worker.storage.put_bytes(
        key, png_bytes(shot.image, shot.infotext, provenance, signer=worker.studio.signer, title=name)
    )
    return ProductImage(
        key=key,
        kind=kind,
        channel=channel,
        box=[int(side) for side in shot.box],
        seed=shot.seed,
        width=shot.image.width,
        height=shot.image.height,
        note=shot.note,
        infotext=shot.infotext,
    )


def _on_transparency(cutout: Any) -> Any:
    picture = cutout.image.convert("RGBA")
    picture.putalpha(cutout.mask)
    return picture


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
