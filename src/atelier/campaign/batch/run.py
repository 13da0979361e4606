"""Planning a batch (row x scene x seed, what is done already, what cannot work) and running it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from atelier.campaign.batch.backends import Backend
from atelier.campaign.batch.catalog import Catalog, CatalogRow, PhotoFile, _photo
from atelier.campaign.batch.manifest import Manifest
from atelier.campaign.batch.scenes import HASHED_SETTINGS, Scene
from atelier.engine import (
    GeneratedImage,
    GenerationRequest,
    Ingredient,
    check_name,
    save_image,
)
from atelier.errors import AtelierError


@dataclass(frozen=True)
class BatchProblem:
    """Something that kept images of one row from being made; ``scene``/``seed`` narrow it down."""

    sku: str
    reason: str
    line: int
    scene: str | None = None
    seed: int | None = None

    def __str__(self) -> str:
        who = self.sku or f"line {self.line}"
        where = [f"scene {self.scene}"] if self.scene else []
        if self.seed is not None:
            where.append(f"seed {self.seed}")
        if where:
            who = f"{who} [{', '.join(where)}]"
        return f"{who}: {self.reason}"


@dataclass
class BatchJob:
    """One image to make. ``request`` names no model and holds no pixels until it runs."""

    row: CatalogRow
    scene: Scene
    seed: int
    request: GenerationRequest
    request_hash: str
    image: PhotoFile | None
    mask: PhotoFile | None

    @property
    def sku(self) -> str:
        return self.row.sku


@dataclass
class BatchPlan:
    out_dir: Path
    manifest: Manifest
    jobs: list[BatchJob]  # still to make
    done: int  # asked for and already in the manifest
    total: int  # rows x scenes x seeds
    problems: list[BatchProblem] = field(default_factory=list)


@dataclass
class BatchSummary:
    total: int
    done_before: int
    generated: list[dict[str, Any]]  # the manifest records written by this run
    problems: list[BatchProblem]
    manifest_lines_dropped: int

    @property
    def failed_images(self) -> int:
        return self.total - self.done_before - len(self.generated)

    @property
    def failed_skus(self) -> list[str]:
        return list(dict.fromkeys(problem.sku or f"line {problem.line}" for problem in self.problems))

    @property
    def succeeded(self) -> bool:
        return not self.problems


def request_hash(
    sku: str,
    scene: str,
    request: GenerationRequest,
    model_hash: str,
    image_sha256: str | None,
    mask_sha256: str | None,
) -> str:
    """The identity of one image: what it shows (every setting and input) and where it goes (SKU, scene).

    Only the settings a scene controls are hashed, so a new engine option with a default (or a model path
    that differs between machines) leaves finished batches finished.
    """
    params = {name: getattr(request, name) for name in HASHED_SETTINGS}
    payload = {
        "sku": sku,
        "scene": scene,
        "params": params,
        "model": model_hash,
        "image": image_sha256,
        "mask": mask_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _RowPhotos:
    image: PhotoFile | None = None
    mask: PhotoFile | None = None
    # Header-only images: enough for GenerationRequest.validate(), which reads only their sizes.
    image_header: Image.Image | None = None
    mask_header: Image.Image | None = None


def _row_photos(catalog: Catalog, row: CatalogRow) -> _RowPhotos:
    image_name, mask_name = row.values.get("image", ""), row.values.get("mask", "")
    if mask_name and not image_name:
        raise AtelierError(
            f"mask {mask_name} has no image to inpaint; fill in the image column", field="image"
        )
    if not image_name:
        return _RowPhotos()
    image, image_header = _photo(catalog, image_name, "image")
    if not mask_name:
        return _RowPhotos(image, None, image_header, None)
    mask, mask_header = _photo(catalog, mask_name, "mask")
    if image.size != mask.size:
        raise AtelierError(
            f"mask {mask_name} is {mask.size[0]}x{mask.size[1]} but image {image_name} is "
            f"{image.size[0]}x{image.size[1]}",
            field="mask",
        )
    return _RowPhotos(image, mask, image_header, mask_header)


def _check_row(row: CatalogRow, first_line: dict[str, int]) -> None:
    if not row.sku:
        raise AtelierError("the sku is empty", field="sku")
    try:
        check_name(row.sku, what="sku")
    except AtelierError:
        raise AtelierError(
            f"sku {row.sku!r} cannot be a folder name (no / or \\, not starting with '.')"
        ) from None
    if row.sku in first_line:
        raise AtelierError(
            f"the same sku is on line {first_line[row.sku]}; each sku must be unique", field="sku"
        )
    if row.extra_values:
        raise AtelierError("the line has more values than the header has columns")


def plan_batch(
    catalog: Catalog, scenes: list[Scene], model_hash: str, out_dir: str | os.PathLike[str]
) -> BatchPlan:
    """Check every row against every scene and list the images still to make; nothing is generated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    done = manifest.done
    per_row = sum(len(scene.seeds) for scene in scenes)
    plan = BatchPlan(out, manifest, jobs=[], done=0, total=len(catalog.rows) * per_row)
    first_line: dict[str, int] = {}
    for row in catalog.rows:
        try:
            _check_row(row, first_line)
            first_line[row.sku] = row.line
            photos = _row_photos(catalog, row)
        except AtelierError as exc:
            plan.problems.append(BatchProblem(row.sku, str(exc), row.line))
            continue
        image, mask = photos.image, photos.mask
        for scene in scenes:
            try:
                prompt, negative = scene.fill(row.values, catalog.columns)
                requests = [scene.request(prompt, negative, seed) for seed in scene.seeds]
                for request in requests:
                    dataclasses.replace(
                        request, init_image=photos.image_header, mask=photos.mask_header
                    ).validate()
            except AtelierError as exc:
                plan.problems.append(BatchProblem(row.sku, str(exc), row.line, scene=scene.name))
                continue
            for seed, request in zip(scene.seeds, requests, strict=True):
                key = request_hash(
                    row.sku,
                    scene.name,
                    request,
                    model_hash,
                    image.sha256 if image else None,
                    mask.sha256 if mask else None,
                )
                if key in done:
                    plan.done += 1
                else:
                    plan.jobs.append(BatchJob(row, scene, seed, request, key, image, mask))
    return plan


def _record(
    job: BatchJob,
    request: GenerationRequest,
    item: GeneratedImage,
    path: Path,
    out_dir: Path,
    backend: Backend,
) -> dict[str, Any]:
    params = request.to_params()
    params.update(
        model=backend.model_name,
        model_hash=backend.model_hash,
        mode=request.mode,
        size=f"{item.image.width}x{item.image.height}",
        image=job.image.relative if job.image else None,
        # A photo cut out automatically (its transparency or a SAM model) has no mask file.
        mask=job.mask.relative if job.mask else ("automatic" if request.mask is not None else None),
    )
    return {
        "sku": job.sku,
        "scene": job.scene.name,
        "seed": job.seed,
        "file": path.relative_to(out_dir).as_posix(),
        "prompt": job.request.prompt,
        "negative_prompt": job.request.negative_prompt,
        "params": params,
        "request_hash": job.request_hash,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_batch(
    plan: BatchPlan,
    backend: Backend,
    *,
    on_problem: Callable[[BatchProblem], None] | None = None,
    progress: bool = True,
    output_format: str = "png",
    quality: int | None = None,
    signer: Any = None,
    segmenter: Any = None,
) -> BatchSummary:
    """Make the plan's images one by one, appending each to the manifest as soon as its file is written.

    Files are ``output_format`` (png, jpeg, webp, at ``quality``), with their AI disclosure, and signed with
    Content Credentials by ``signer`` (an ``atelier.engine.ContentSigner``), the product photo as parent.

    A row with a photo and no mask is a product shot: the product's mask comes from the photo's transparency,
    else from ``segmenter`` (a SAM model, ``campaign.product.SamSegmenter``); the scene is inpainted around it
    and the product laid again from the photo, exact. An opaque photo with no segmenter is img2img of the
    whole photo, as before.

    A problem with one image (the engine or the studio refusing the request) is passed to ``on_problem`` and
    the batch goes on. Problems found while planning are part of the summary but not passed again.
    """
    from tqdm import tqdm

    from atelier.campaign.product import relay_product  # campaign.product uses this package's backends

    summary = BatchSummary(plan.total, plan.done, [], list(plan.problems), plan.manifest.dropped)
    photos = _DecodedPhotos()
    with tqdm(
        total=len(plan.jobs), unit="image", desc="generating", disable=not progress, dynamic_ncols=True
    ) as bar:
        for job in plan.jobs:
            bar.set_postfix_str(f"{job.sku} / {job.scene.name}", refresh=False)
            try:
                init_image, mask = photos.of(job)
                product = photos.product_mask(job, segmenter)
                if product is not None:
                    # A photo without a mask: everything but the product is the scene to generate.
                    mask = ImageOps.invert(product)
                request = dataclasses.replace(job.request, init_image=init_image, mask=mask)
                item = backend.generate(request)
                if product is not None and init_image is not None:
                    item = dataclasses.replace(item, image=relay_product(item.image, init_image, product))
            except AtelierError as exc:
                problem = BatchProblem(job.sku, str(exc), job.row.line, scene=job.scene.name, seed=job.seed)
                summary.problems.append(problem)
                if on_problem is not None:
                    on_problem(problem)
                bar.update(1)
                continue
            photo: tuple[Ingredient, ...] = ()
            if signer is not None and job.image is not None:
                photo = (Ingredient(job.image.relative, job.image.path.read_bytes(), "parentOf"),)
            path = save_image(
                item,
                plan.out_dir / job.sku / job.scene.name,
                output_format=output_format,
                quality=quality,
                signer=signer,
                ingredients=photo,
            )
            record = _record(job, request, item, path, plan.out_dir, backend)
            plan.manifest.append(record)
            summary.generated.append(record)
            bar.update(1)
    return summary


class _DecodedPhotos:
    """The current row's photo and mask, decoded once for all its scenes and seeds; earlier rows are let go."""

    def __init__(self) -> None:
        self.line: int | None = None
        self.images: tuple[Image.Image | None, Image.Image | None] = (None, None)
        self._product: tuple[int, Image.Image | None] | None = None

    def product_mask(self, job: BatchJob, segmenter: Any) -> Image.Image | None:
        """The automatic product mask of a row with a photo and no mask (None: there is none to find)."""
        image, mask = self.of(job)
        if image is None or mask is not None:
            return None
        if self._product is None or self._product[0] != job.row.line:
            from atelier.campaign.product import alpha_mask, product_mask

            found = None
            if alpha_mask(image) is not None or segmenter is not None:
                found = product_mask(image, segmenter=segmenter)
            self._product = (job.row.line, found)
        return self._product[1]

    def of(self, job: BatchJob) -> tuple[Image.Image | None, Image.Image | None]:
        if job.row.line != self.line:
            self.line, self.images = None, (None, None)
            image = job.image.open("image") if job.image else None
            mask = job.mask.open("mask") if job.mask else None
            self.line, self.images = job.row.line, (image, mask)
        return self.images
