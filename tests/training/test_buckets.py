"""kohya-style aspect-ratio bucketing, resize-and-crop and batching."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from atelier.errors import AtelierError
from atelier.training.buckets import (
    BucketManager,
    bucket_info,
    make_batches,
    make_bucket_resolutions,
    resize_and_crop,
)
from atelier.training.dataset import ImageItem
from atelier.training.dataset_config import DatasetConfig, SubsetConfig


def _item(name: str, size: tuple[int, int], repeats: int = 1) -> ImageItem:
    subset = SubsetConfig(image_dir=Path("/data/sample"), num_repeats=repeats)
    return ImageItem(Path("/data/sample") / name, "oue car", repeats, False, subset, size)


@pytest.mark.parametrize(("resolution", "max_size"), [(512, 1024), (768, 1024), (1024, 2048)])
def test_buckets_are_step_multiples_within_the_training_area(resolution: int, max_size: int) -> None:
    buckets = make_bucket_resolutions((resolution, resolution), 256, max_size, 64)
    assert buckets == sorted(set(buckets))
    assert (resolution, resolution) in buckets
    for width, height in buckets:
        assert width % 64 == 0 and height % 64 == 0
        assert width * height <= resolution * resolution
        assert min(width, height) >= 256 and max(width, height) <= max_size
        assert (height, width) in buckets
    # every width step from the minimum up to the limit has its bucket, as in kohya
    assert {width for width, _ in buckets} >= set(range(256, resolution + 1, 64))


def test_bucket_heights_are_the_tallest_that_fit() -> None:
    buckets = dict(make_bucket_resolutions((512, 512), 256, 1024, 64))
    assert buckets[448] == 576  # 448 x 640 would exceed 512 x 512 pixels
    assert buckets[384] == 640
    assert buckets[320] == 768


def test_seed_portrait_photos_land_in_a_portrait_bucket() -> None:
    choice = BucketManager(512).select_bucket(512, 704)
    width, height = choice.bucket
    assert width < height
    assert choice.bucket == (448, 576)  # the closest ratio (0.78) to 512/704 (0.73)
    assert choice.resized_size == (448, 616)  # width matches, height covers the bucket
    assert abs(choice.aspect_error - (448 / 576 - 512 / 704)) < 1e-9


def test_sdxl_seed_images_scaled_to_1024_long_side() -> None:
    manager = BucketManager(1024, max_size=2048)
    landscape = manager.select_bucket(1024, 683)
    portrait = manager.select_bucket(683, 1024)
    assert landscape.bucket == portrait.bucket[::-1]
    assert landscape.bucket[0] > landscape.bucket[1]
    assert landscape.bucket[0] * landscape.bucket[1] <= 1024 * 1024
    assert abs(landscape.bucket[0] / landscape.bucket[1] - 1024 / 683) < 0.1


def test_an_image_already_at_a_bucket_size_keeps_it() -> None:
    choice = BucketManager(512).select_bucket(384, 640)
    assert choice.bucket == (384, 640)
    assert choice.resized_size == (384, 640)


def test_every_image_gets_the_closest_aspect_ratio() -> None:
    manager = BucketManager(512)
    rng = random.Random(3)
    for _ in range(200):
        width, height = rng.randint(100, 3000), rng.randint(100, 3000)
        choice = manager.select_bucket(width, height)
        best = min(abs(w / h - width / height) for w, h in manager.resolutions)
        assert math.isclose(abs(choice.aspect_error), best)
        resized_width, resized_height = choice.resized_size
        assert resized_width >= choice.bucket[0] and resized_height >= choice.bucket[1]
        assert choice.bucket[0] in choice.resized_size or choice.bucket[1] in choice.resized_size


def test_no_upscale_keeps_small_images_small_and_shrinks_large_ones() -> None:
    manager = BucketManager(512, no_upscale=True)
    small = manager.select_bucket(300, 200)
    assert small.resized_size == (300, 200)
    assert small.bucket == (256, 192)
    large = manager.select_bucket(4000, 3000)
    assert large.bucket[0] * large.bucket[1] <= 512 * 512
    assert large.bucket[0] % 64 == 0 and large.bucket[1] % 64 == 0
    assert large.resized_size[0] >= large.bucket[0] and large.resized_size[1] >= large.bucket[1]
    assert large.resized_size[0] * large.resized_size[1] <= 512 * 512 * 1.05
    with pytest.raises(AtelierError, match=r"tiny.png: a 40x300 image is narrower than one bucket step"):
        manager.assign([_item("tiny.png", (40, 300))])


def test_without_bucketing_every_image_uses_the_training_resolution() -> None:
    config = DatasetConfig(resolution=(512, 512), enable_bucket=False, bucket_no_upscale=True)
    manager = BucketManager.from_config(config)
    items = [_item("a.png", (512, 704)), _item("b.png", (1024, 300)), _item("c.png", (100, 100))]
    assert [bucket for _, bucket in manager.assign(items)] == [(512, 512)] * 3


def test_bucket_limits_must_include_the_resolution() -> None:
    with pytest.raises(AtelierError, match="must include the resolution 1024x1024"):
        BucketManager(1024, max_size=768)


def _rows_image(size: tuple[int, int]) -> Image.Image:
    """Each pixel encodes its own (x, y) so crops can be located exactly."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [(x % 256, y % 256, (x // 256) * 16 + y // 256) for y in range(height) for x in range(width)]
    )
    return image


def _origin(pixel: tuple[int, int, int]) -> tuple[int, int]:
    red, green, blue = pixel
    return red + 256 * (blue // 16), green + 256 * (blue % 16)


def test_resize_and_crop_portrait_seed_photo() -> None:
    image = Image.new("RGB", (512, 704), (10, 20, 30))
    result = resize_and_crop(image, (448, 576))
    assert result.image.size == (448, 576)
    assert result.original_size == (704, 512)  # (height, width) for SDXL
    assert result.crop_top_left == (20, 0)  # resized to 448x616, (616 - 576) // 2 rows cut from the top
    image, original_size, crop_top_left = result  # unpacks as the plain 3-tuple trainers expect
    assert image.getpixel((0, 0)) == (10, 20, 30)


def test_crop_offsets_point_at_the_kept_pixels() -> None:
    tall = resize_and_crop(_rows_image((448, 700)), (448, 576))  # no resize needed, 124 rows to cut
    assert tall.crop_top_left == (62, 0)
    assert _origin(tall.image.getpixel((0, 0))) == (0, 62)
    assert _origin(tall.image.getpixel((447, 575))) == (447, 637)

    wide = resize_and_crop(_rows_image((800, 448)), (576, 448))  # 224 columns to cut
    assert wide.crop_top_left == (0, 112)
    assert _origin(wide.image.getpixel((0, 0))) == (112, 0)
    assert wide.original_size == (448, 800)


def test_resize_and_crop_upscales_small_images_to_cover() -> None:
    result = resize_and_crop(Image.new("RGB", (100, 50)), (512, 512))
    assert result.image.size == (512, 512)
    assert result.crop_top_left == (0, 256)  # resized to 1024x512, 256 columns cut from each side
    assert result.original_size == (50, 100)


def test_batches_never_mix_buckets_and_repeat_each_image() -> None:
    manager = BucketManager(512)
    items = [
        _item("p1.png", (512, 704), repeats=10),
        _item("p2.png", (512, 704), repeats=10),
        _item("p3.png", (510, 700), repeats=3),
        _item("l1.png", (704, 512), repeats=5),
        _item("s1.png", (600, 600), repeats=1),
    ]
    assigned = manager.assign(items)
    bucket_of = {item.path.name: bucket for item, bucket in assigned}

    batches = make_batches(assigned, 4, random.Random(0))

    for batch in batches:
        assert 1 <= len(batch) <= 4
        assert len({bucket_of[item.path.name] for item in batch}) == 1
    seen = Counter(item.path.name for batch in batches for item in batch)
    assert seen == {"p1.png": 10, "p2.png": 10, "p3.png": 3, "l1.png": 5, "s1.png": 1}
    per_bucket = Counter()
    for item in items:
        per_bucket[bucket_of[item.path.name]] += item.repeats
    assert len(batches) == sum(math.ceil(count / 4) for count in per_bucket.values())


def test_batches_are_reshuffled_per_epoch_and_reproducible() -> None:
    assigned = BucketManager(512).assign([_item(f"{i}.png", (512, 704), repeats=4) for i in range(6)])

    def order(seed: int) -> list[list[str]]:
        return [
            [item.path.name for item in batch] for batch in make_batches(assigned, 2, random.Random(seed))
        ]

    assert order(1) == order(1)
    assert order(1) != order(2)
    rng = random.Random(5)
    first_epoch = make_batches(assigned, 2, rng)
    second_epoch = make_batches(assigned, 2, rng)
    assert first_epoch != second_epoch


def test_bucket_info_counts_repeats_per_bucket() -> None:
    manager = BucketManager(512)
    assigned = manager.assign([_item("p.png", (512, 704), repeats=10), _item("l.png", (704, 512), repeats=2)])
    info = bucket_info(assigned)
    assert info["buckets"] == {
        0: {"resolution": (448, 576), "count": 10},
        1: {"resolution": (576, 448), "count": 2},
    }
    assert math.isclose(info["mean_img_ar_error"], ((448 / 576 - 512 / 704) + (704 / 512 - 576 / 448)) / 2)
