"""Catalog batch generation: every product row x scene x seed, resumable, with a manifest for the contact sheet.

A catalog is a CSV file with a ``sku`` column, optional ``image`` and ``mask`` columns (a product photo and its
mask, relative to the CSV's folder) and any attributes (``product``, ``color``, ...). A scenes file is TOML with
``[[scene]]`` tables whose prompts use the attributes as ``{placeholders}``. A row with a photo and a mask is an
inpainting job: outside the mask the photo comes back pixel for pixel. A photo without a mask is img2img.

Generation runs in-process (:class:`EngineBackend`) or through a running studio's A1111-compatible API
(:class:`StudioBackend`). Either way each image is written as ``DIR/<sku>/<scene>/<seed>_<timestamp>.png`` with
its A1111 infotext, and recorded as one JSON line in ``DIR/manifest.jsonl``: ``sku``, ``scene``, ``seed``,
``file``, ``prompt``, ``negative_prompt``, ``params`` (every generation setting) and ``request_hash``.

The request hash covers what decides the picture and where it goes: SKU, scene name, the filled-in prompts and
every generation setting, the seed, the model's sha256 and the photo and mask contents. A re-run skips every
request already in the manifest, so an interrupted batch resumes, and adding a seed, a scene or a row makes
only the new images. Editing a column that no prompt uses, or renaming a photo file, regenerates nothing.

Problems that belong to one row (a missing photo, an empty attribute, a placeholder the catalog lacks, a mask
of the wrong size) are reported by SKU and the rest of the batch goes on; problems with the files themselves
(an unreadable CSV, an unknown scene key) raise :class:`~atelier.errors.AtelierError` before anything runs.
"""

from __future__ import annotations

from atelier.campaign.batch.backends import Backend, EngineBackend, StudioBackend
from atelier.campaign.batch.catalog import Catalog, CatalogRow, PhotoFile, load_catalog
from atelier.campaign.batch.manifest import Manifest
from atelier.campaign.batch.run import (
    BatchJob,
    BatchPlan,
    BatchProblem,
    BatchSummary,
    plan_batch,
    request_hash,
    run_batch,
)
from atelier.campaign.batch.scenes import (
    HASHED_SETTINGS,
    MAX_PHOTO_PIXELS,
    MAX_SEED,
    MODEL_HASH_LENGTH,
    SCENE_KEYS,
    Scene,
    SceneLora,
    load_scenes,
)

__all__ = [
    "Backend",
    "BatchJob",
    "BatchPlan",
    "BatchProblem",
    "BatchSummary",
    "Catalog",
    "CatalogRow",
    "EngineBackend",
    "HASHED_SETTINGS",
    "MAX_PHOTO_PIXELS",
    "MAX_SEED",
    "MODEL_HASH_LENGTH",
    "Manifest",
    "PhotoFile",
    "SCENE_KEYS",
    "Scene",
    "SceneLora",
    "StudioBackend",
    "load_catalog",
    "load_scenes",
    "plan_batch",
    "request_hash",
    "run_batch",
]
