"""Aspect-ratio bucketing, following kohya-ss sd-scripts.

Instead of cropping every image to one square, kohya trains on a set of bucket sizes that all hold about the
training resolution's area (``512x512`` gives ``448x576``, ``384x640``, ``576x448``, ...; every side a multiple
of ``bucket_reso_steps``). Each image goes to the bucket whose aspect ratio is closest to its own, is scaled
until it covers the bucket, and is centre-cropped to it. A batch only ever holds images of one bucket, since
tensors in a batch must share a shape.

With ``bucket_no_upscale`` there is no fixed list: an image larger than the training area is scaled down to
about that area, a smaller one keeps its size, and its bucket is that size rounded down to the step. Without
bucketing, the only bucket is the training resolution itself.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

from PIL import Image

from atelier.errors import AtelierError
from atelier.training.dataset import ImageItem, image_size
from atelier.training.dataset_config import DatasetConfig

Size = tuple[int, int]


def make_bucket_resolutions(
    max_reso: Size = (512, 512), min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[Size]:
    """kohya's bucket list: ``(width, height)`` pairs of multiples of ``divisible`` within ``max_reso``'s area.

    For each width from ``min_size`` to ``max_size`` in ``divisible`` steps, the height is the tallest multiple
    of ``divisible`` that keeps the area within ``max_reso``'s (capped at ``max_size``); both orientations are
    kept, plus the largest square. Sorted by width, then height.
    """
    if divisible < 1 or min_size < 1 or max_size < min_size:
        raise AtelierError(
            f"bucket limits are inconsistent: min {min_size}, max {max_size}, step {divisible}",
            field="buckets",
        )
    max_area = max_reso[0] * max_reso[1]
    square = math.isqrt(max_area) // divisible * divisible
    resolutions = {(square, square)}
    for width in range(min_size, max_size + 1, divisible):
        height = min(max_size, max_area // width // divisible * divisible)
        if height >= min_size:
            resolutions.add((width, height))
            resolutions.add((height, width))
    return sorted(resolutions)


class BucketChoice(NamedTuple):
    """Where one image goes: its bucket, the size it is scaled to before cropping, and the aspect mismatch."""

    bucket: Size
    resized_size: Size
    aspect_error: float


class CropResult(NamedTuple):
    """An image cut to its bucket, with SDXL's size conditioning.

    ``original_size`` is ``(height, width)`` of the image before resizing and ``crop_top_left`` is
    ``(top, left)`` in pixels of the resized image: the order SDXL's ``add_time_ids`` takes them in.
    """

    image: Image.Image
    original_size: Size
    crop_top_left: Size


def _cover_size(size: Size, bucket: Size) -> Size:
    """The size that keeps the aspect ratio and just covers ``bucket``: one side equal, the other larger."""
    width, height = size
    bucket_width, bucket_height = bucket
    # Compared as integer cross-products so equal ratios never flip on float rounding.
    if width * bucket_height > bucket_width * height:
        # Wider than the bucket: match heights, crop the sides.
        return max(bucket_width, (2 * width * bucket_height + height) // (2 * height)), bucket_height
    return bucket_width, max(bucket_height, (2 * height * bucket_width + width) // (2 * width))


class BucketManager:
    """Assigns images to buckets the way kohya's ``BucketManager.select_bucket`` does."""

    def __init__(
        self,
        resolution: int | Size,
        *,
        enable_bucket: bool = True,
        min_size: int = 256,
        max_size: int = 1024,
        steps: int = 64,
        no_upscale: bool = False,
    ) -> None:
        if isinstance(resolution, int):
            resolution = (resolution, resolution)
        width, height = resolution  # a list from a config file works too
        self.resolution: Size = (width, height)
        self.enable_bucket = enable_bucket
        self.no_upscale = enable_bucket and no_upscale
        self.steps = steps
        self.max_area = self.resolution[0] * self.resolution[1]
        if not enable_bucket:
            self.resolutions: list[Size] = [self.resolution]
        elif self.no_upscale:
            # Buckets come from each image's own size; kohya ignores min/max bucket sizes here.
            self.resolutions = []
        else:
            if max_size < max(self.resolution) or min_size > min(self.resolution):
                raise AtelierError(
                    f"bucket sizes {min_size}-{max_size} must include the resolution "
                    f"{self.resolution[0]}x{self.resolution[1]}",
                    field="buckets",
                )
            self.resolutions = make_bucket_resolutions(self.resolution, min_size, max_size, steps)
        self._resolution_set = set(self.resolutions)

    @classmethod
    def from_config(cls, config: DatasetConfig) -> BucketManager:
        return cls(
            config.resolution,
            enable_bucket=config.enable_bucket,
            min_size=config.min_bucket_reso,
            max_size=config.max_bucket_reso,
            steps=config.bucket_reso_steps,
            no_upscale=config.bucket_no_upscale,
        )

    def select_bucket(self, width: int, height: int) -> BucketChoice:
        """Choose the bucket for an image of ``width`` x ``height`` pixels."""
        aspect = width / height
        if self.no_upscale:
            resized = self._downscaled_size(width, height)
            bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
            if bucket[0] == 0 or bucket[1] == 0:
                raise AtelierError(
                    f"a {width}x{height} image is narrower than one bucket step ({self.steps} px)",
                    field="images",
                )
        else:
            if (width, height) in self._resolution_set:
                bucket = (width, height)
            else:
                # min() keeps the first of equally close buckets, as kohya's argmin does.
                bucket = min(self.resolutions, key=lambda reso: abs(reso[0] / reso[1] - aspect))
            resized = _cover_size((width, height), bucket)
        return BucketChoice(bucket, resized, bucket[0] / bucket[1] - aspect)

    def _round_to_steps(self, value: float) -> int:
        rounded = int(value + 0.5)
        return rounded - rounded % self.steps

    def _downscaled_size(self, width: int, height: int) -> Size:
        if width * height <= self.max_area:
            return width, height
        aspect = width / height
        scaled_width = math.sqrt(self.max_area * aspect)
        scaled_height = self.max_area / scaled_width
        # Round either the width or the height to the step, whichever keeps the aspect ratio closer (kohya).
        width_first = self._round_to_steps(scaled_width)
        height_for_width = self._round_to_steps(width_first / aspect)
        height_first = self._round_to_steps(scaled_height)
        width_for_height = self._round_to_steps(height_first * aspect)
        error_width_first = abs(width_first / height_for_width - aspect) if height_for_width else math.inf
        error_height_first = abs(width_for_height / height_first - aspect) if height_first else math.inf
        if error_width_first < error_height_first:
            return width_first, int(width_first / aspect + 0.5)
        return int(height_first * aspect + 0.5), height_first

    def assign(self, items: Sequence[ImageItem]) -> list[tuple[ImageItem, Size]]:
        """Pair each image with its bucket (image sizes are read from disk where scanning did not record them)."""
        assigned: list[tuple[ImageItem, Size]] = []
        for item in items:
            width, height = item.size if item.size is not None else image_size(item.path)
            try:
                choice = self.select_bucket(width, height)
            except AtelierError as exc:
                raise AtelierError(f"{item.path}: {exc}", field=exc.field) from exc
            assigned.append((item, choice.bucket))
        return assigned


def resize_and_crop(image: Image.Image, bucket: Size) -> CropResult:
    """Scale ``image`` to cover ``bucket`` (aspect ratio kept), then centre-crop it to exactly ``bucket``."""
    width, height = image.size
    bucket_width, bucket_height = bucket
    resized_width, resized_height = _cover_size((width, height), bucket)
    if (resized_width, resized_height) != (width, height):
        # reducing_gap first shrinks by whole factors, much faster for big photos at no visible cost.
        image = image.resize((resized_width, resized_height), Image.Resampling.LANCZOS, reducing_gap=3.0)
    left = (resized_width - bucket_width) // 2
    top = (resized_height - bucket_height) // 2
    cropped = image.crop((left, top, left + bucket_width, top + bucket_height))
    return CropResult(cropped, (height, width), (top, left))


def make_batches(
    items_with_buckets: Sequence[tuple[ImageItem, Size]], batch_size: int, rng: random.Random
) -> list[list[ImageItem]]:
    """One epoch of batches: each image repeated ``item.repeats`` times, every batch from a single bucket.

    Images are shuffled within their bucket and the batches are shuffled across buckets, both with ``rng``, so
    a new ``rng`` state gives a new epoch order. A bucket's last batch may be smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise AtelierError(f"batch_size must be at least 1, got {batch_size}", field="batch_size")
    by_bucket: dict[Size, list[ImageItem]] = {}
    for item, bucket in items_with_buckets:
        by_bucket.setdefault(bucket, []).extend([item] * item.repeats)

    batches: list[list[ImageItem]] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches += [members[start : start + batch_size] for start in range(0, len(members), batch_size)]
    rng.shuffle(batches)
    return batches


def bucket_info(items_with_buckets: Sequence[tuple[ImageItem, Size]]) -> dict[str, object]:
    """Bucket usage in kohya's ``ss_bucket_info`` metadata shape (counts include repeats)."""
    counts: Counter[Size] = Counter()
    errors: list[float] = []
    for item, bucket in items_with_buckets:
        counts[bucket] += item.repeats
        width, height = item.size if item.size is not None else image_size(item.path)
        errors.append(abs(bucket[0] / bucket[1] - width / height))
    buckets = {
        index: {"resolution": bucket, "count": counts[bucket]} for index, bucket in enumerate(sorted(counts))
    }
    return {"buckets": buckets, "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}
