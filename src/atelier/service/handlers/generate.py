"""The generate job: a generation request run on the worker's warm engine, images and sidecars stored.

Outputs are idempotent: images are stored as ``outputs/<job id>/<seed>_<timestamp>.png`` where the timestamp is
the job's creation time and the seed is fixed when the job is submitted, so a job that runs twice overwrites
its files instead of adding new ones.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import replace
from datetime import UTC
from typing import Any

from atelier.images import open_image
from atelier.service.commercial import controlnet_license, controlnet_name, licensed_generation
from atelier.service.handlers.context import WorkerContext
from atelier.service.job_types import GeneratedImage, GeneratePayload, GenerateResult
from atelier.service.jobs import Job
from atelier.service.lease import JobInterrupted, JobLease


def seed_for_job(job_id: str) -> int:
    """A seed derived from the job id, for jobs submitted with seed -1 outside the API: reruns stay identical."""
    return int(uuid.uuid5(uuid.NAMESPACE_URL, f"atelier-job:{job_id}").hex[:8], 16)


def output_key(job: Job, seed: int) -> str:
    """Where an image of ``job`` is stored: ``outputs/<job id>/<seed>_<job timestamp>.png``."""
    from atelier.engine import output_filename

    # The job's creation time (not the run's), in UTC, keeps names identical when the job runs again anywhere.
    return f"outputs/{job.id}/{output_filename(seed, job.created_at.astimezone(UTC))}"


def png_bytes(
    image: Any, infotext: str, provenance: Any = None, *, signer: Any = None, title: str = "image.png"
) -> bytes:
    """The image as PNG with A1111's ``parameters`` text chunk and its AI disclosure (default: made from a
    prompt), signed with Content Credentials when the studio has a signer."""
    from atelier.engine import GENERATED, Provenance, encode_image

    return encode_image(
        image, provenance or Provenance(GENERATED), infotext=infotext, signer=signer, title=title
    )


def preview_interval(worker: WorkerContext) -> int:
    """Steps between live previews: A1111's options when an admin set them, else the studio's setting."""
    options = worker.studio.settings.all()
    if options.get("live_previews_enable") is False:
        return 0
    every = options.get("show_progress_every_n_steps")
    if isinstance(every, int) and not isinstance(every, bool):
        return max(0, every)  # A1111's -1 (only at the end) and 0: no previews while sampling
    return worker.config.preview_every_steps


def preview_data_url(picture: Any) -> str:
    """A live preview as a small JPEG data URL: a few kB in the job's progress, shown as it forms."""
    import base64

    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run_generate(worker: WorkerContext, job: Job, lease: JobLease) -> GenerateResult:
    """Run a generate job on the worker's engine; store each image (PNG with infotext) and its JSON sidecar."""
    from atelier.engine import GenerationCanceled, GenerationRequest
    from atelier.prompts.parser import parse_prompt

    payload = GeneratePayload.model_validate(job.payload)
    params = dict(payload.request)
    checkpoint = worker.registry.find_checkpoint(payload.model)
    refiner = worker.registry.find_checkpoint(payload.refiner, field="refiner") if payload.refiner else None
    lora_names = {tag.name for tag in parse_prompt(params.get("prompt", "")).loras}
    if params.get("refiner_prompt"):
        lora_names |= {tag.name for tag in parse_prompt(params["refiner_prompt"]).loras}
    loras = {name: worker.registry.get(name, "lora") for name in sorted(lora_names)}
    worker.files.place_loras(loras.values())
    embeddings = worker.registry.list("embedding")
    worker.files.place_embeddings(embeddings)
    vae = worker.registry.get(params["vae"], "vae") if params.get("vae") else None
    if vae is not None:
        worker.files.place_vae(vae)
    if params.get("seed", -1) == -1:
        params["seed"] = seed_for_job(job.id)
    images = {
        name: _load_input(worker, key)
        for name, key in (("init_image", payload.init_image_key), ("mask", payload.mask_key))
        if key
    }
    controlnet_units = []
    if payload.controlnet_units:
        from atelier.service.controlnets import controlnet_library, load_units

        # Refreshes the S3 mirror too, so a ControlNet uploaded after this worker started is found.
        worker.engine.controlnets = controlnet_library(worker.storage, worker.config.cache_dir)
        controlnet_units = load_units(
            worker.storage, payload.controlnet_units, max_pixels=worker.config.max_image_pixels
        )
    request = GenerationRequest(
        **params,
        model=str(worker.files.local_path(checkpoint)),
        refiner=str(worker.files.local_path(refiner)) if refiner else None,
        controlnet_units=controlnet_units,
        **images,
    )
    preview_every = preview_interval(worker)
    started = time.monotonic()
    steps = {"done": 0}

    def on_step(done: int, total: int) -> None:
        steps["done"] = done
        lease.report(done, total)

    def on_preview(picture: Any, done: int, total: int) -> None:
        # The picture travels in the job's progress (SSE events, A1111's /progress current_image).
        lease.report(done, total, {"preview": preview_data_url(picture), "preview_step": done})

    try:
        result = worker.engine.generate(
            request,
            on_step=on_step,
            should_cancel=lease.should_stop,
            on_preview=on_preview if preview_every else None,
            preview_every=preview_every,
        )
    except GenerationCanceled as stop:
        result = _kept_on_interrupt(worker, job, stop)
    generated = time.monotonic()
    shown_params = {
        **request.to_params(),
        "model": checkpoint.name,
        "refiner": refiner.name if refiner else None,
    }
    stored: list[GeneratedImage] = []
    ingredients = _ingredients(worker, payload)
    controlnet_licenses = {
        controlnet_name(path): controlnet_license(path)
        for path in (worker.engine.controlnets.resolve(unit.model) for unit in controlnet_units)
    }
    for index, item in enumerate(result.images):
        key = output_key(job, item.seed)
        sidecar_key = key.removesuffix(".png") + ".json"
        provenance = item.provenance.with_ingredients(*ingredients) if item.provenance else None
        if provenance is not None and provenance.generation is not None:
            # The studio's licence records join the engine's record before it is signed and stored.
            generation = licensed_generation(
                provenance.generation,
                checkpoint=checkpoint,
                refiner=refiner,
                vae=vae,
                loras=loras,
                embeddings={record.name: record for record in embeddings},
                controlnets=controlnet_licenses,
            )
            provenance = replace(provenance, generation=generation)
        worker.storage.put_bytes(
            key,
            png_bytes(
                item.image,
                item.infotext,
                provenance,
                signer=worker.studio.signer,
                title=key.rsplit("/", 1)[-1],
            ),
        )
        sidecar = {
            "job_id": job.id,
            # Who asked for it: the name of the API key that queued the job (the audit trail's answer).
            "owner": job.owner,
            "origin": payload.origin,
            "index": index,
            "seed": item.seed,
            "image": key,
            "width": item.image.width,
            "height": item.image.height,
            "params": {**shown_params, "seed": params["seed"]},
            "infotext": item.infotext,
            "infotext_params": item.params,
            "model": {
                "name": checkpoint.name,
                "sha256": checkpoint.sha256,
                "storage_key": checkpoint.storage_key,
            },
            "created_at": job.created_at.isoformat(),
            # The pictures it started from, as stored beside the job.
            "inputs": _input_keys(payload),
            # What the file declares (XMP) and its Content Credentials record (README, "Provenance").
            "provenance": {
                "digital_source_type": provenance.source_type,
                "generation": dict(provenance.generation or {}),
                "signed": worker.studio.signer is not None,
            }
            if provenance
            else None,
        }
        worker.storage.put_bytes(sidecar_key, json.dumps(sidecar, indent=2, default=str).encode("utf-8"))
        stored.append(
            GeneratedImage(
                key=key,
                sidecar=sidecar_key,
                seed=item.seed,
                width=item.image.width,
                height=item.image.height,
                infotext=item.infotext,
            )
        )
    return GenerateResult(
        images=stored,
        seeds=[item.seed for item in stored],
        infotexts=[item.infotext for item in stored],
        model={"name": checkpoint.name, "title": checkpoint.title, "sha256": checkpoint.sha256},
        params={**shown_params, "seed": params["seed"]},
        timings={
            "generate_seconds": round(generated - started, 4),
            "store_seconds": round(time.monotonic() - generated, 4),
            "steps": steps["done"],
            "seconds_per_step": round((generated - started) / steps["done"], 4) if steps["done"] else 0.0,
        },
    )


def _kept_on_interrupt(worker: WorkerContext, job: Job, stop: Any) -> Any:
    """The pictures as they were at the stop when the job was interrupted A1111-style; else stop the job."""
    current = worker.store.get(job.id)
    if current.cancel_requested and current.keep_partial and stop.result is not None and stop.result.images:
        return stop.result
    raise JobInterrupted() from None


def _ingredients(worker: WorkerContext, payload: GeneratePayload) -> tuple[Any, ...]:
    """The photo a generation started from, as the parent ingredient of its Content Credentials (read only when
    the studio signs)."""
    from atelier.engine import Ingredient

    if worker.studio.signer is None or not payload.init_image_key:
        return ()
    return (Ingredient("init image", worker.storage.get_bytes(payload.init_image_key), "parentOf"),)


def _input_keys(payload: GeneratePayload) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    if payload.init_image_key:
        inputs["init_image"] = payload.init_image_key
    if payload.mask_key:
        inputs["mask"] = payload.mask_key
    units = [unit.get("image_key") for unit in payload.controlnet_units or []]
    if any(units):
        inputs["controlnet_images"] = units
    return inputs


def _load_input(worker: WorkerContext, key: str) -> Any:
    # Checked at submission; checked again because storage may be shared with other writers.
    return open_image(worker.storage.get_bytes(key), field=key, max_pixels=worker.config.max_image_pixels)
