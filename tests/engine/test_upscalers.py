"""Built-in upscaling, and the tiles of SD upscale: they cover the picture and join without seams."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atelier.engine import merge_tiles, tile_boxes, upscale
from atelier.errors import AtelierError


def _photo(size=(100, 70)) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_tiles_cover_the_picture_with_the_overlap_and_have_the_full_size():
    boxes = tile_boxes((200, 130), (64, 64), 16)
    assert {(right - left, bottom - top) for left, top, right, bottom in boxes} == {(64, 64)}
    assert boxes[0][:2] == (0, 0) and boxes[-1][2:] == (200, 130)
    covered = np.zeros((130, 200), bool)
    for left, top, right, bottom in boxes:
        covered[top:bottom, left:right] = True
    assert covered.all()
    lefts = sorted({box[0] for box in boxes})
    assert all(later - earlier <= 64 - 16 for earlier, later in zip(lefts, lefts[1:], strict=False))
    assert tile_boxes((50, 40), (64, 64), 16) == [(0, 0, 50, 40)]  # smaller than a tile: one tile


def test_unchanged_tiles_join_back_into_the_same_picture():
    picture = _photo((200, 130))
    boxes = tile_boxes(picture.size, (64, 64), 16)
    merged = merge_tiles(picture.size, [(box, picture.crop(box)) for box in boxes], 16)
    assert np.abs(np.asarray(merged, np.int16) - np.asarray(picture, np.int16)).max() <= 1


def test_builtin_upscale_by_scale_or_to_a_size_with_crop():
    picture = _photo()
    assert upscale(picture, "Lanczos", scale=2).size == (200, 140)
    assert upscale(picture, "Nearest", to=(120, 120)).size == (120, 120)
    blended = upscale(picture, "Lanczos", scale=2, second="Nearest", second_visibility=0.5)
    assert blended.size == (200, 140)


def test_an_unknown_upscaler_is_named():
    from atelier.engine import check_upscaler_name

    with pytest.raises(AtelierError, match="available: None, Lanczos, Nearest"):
        check_upscaler_name("R-ESRGAN 4x+", field="upscaler_1")
