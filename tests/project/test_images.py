"""The one image opener: the pixel limit is checked before decoding, and every failure is one named error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from atelier.errors import AtelierError, NotFoundError
from atelier.images import open_image


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but carries no pixel data: a bomb's first bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(size: tuple[int, int] = (32, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_pixel_limit_is_checked_from_the_header() -> None:
    with pytest.raises(
        AtelierError, match=r"^init_image is 9000x9000 = 81000000 pixels, over the limit of 67108864"
    ):
        open_image(_png_header(9000, 9000), field="init_image")
    with pytest.raises(AtelierError, match="over the limit of 100 pixels") as caught:
        open_image(_png(), field="mask", max_pixels=100)
    assert caught.value.field == "mask"


def test_pillows_own_bomb_guard_is_one_named_error_too() -> None:
    with pytest.raises(AtelierError, match="photo has more pixels than the limit"):
        open_image(_png_header(60000, 60000), field="photo", max_pixels=10**12)


def test_unreadable_files_name_the_image(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    with pytest.raises(AtelierError, match=r"material notes.png is not a readable image \(not an image file"):
        open_image(tmp_path / "notes.png", field="material", label="material notes.png")
    (tmp_path / "cut.png").write_bytes(_png((256, 256))[:80])
    with pytest.raises(AtelierError, match="cut.png is not a readable image"):
        open_image(tmp_path / "cut.png", field="images", label="cut.png")
    with pytest.raises(NotFoundError, match="control image not found: .*missing.png"):
        open_image(tmp_path / "missing.png", field="control image")


def test_orient_applies_the_cameras_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (40, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg", field="image").size == (40, 20)
    assert open_image(tmp_path / "phone.jpg", field="image", orient=True).size == (20, 40)


def test_header_only_opening_leaves_the_pixels_undecoded() -> None:
    cut = _png((256, 256))[:80]
    assert open_image(cut, field="photo", load=False).size == (256, 256)
    with pytest.raises(AtelierError, match="photo is not a readable image"):
        open_image(cut, field="photo")
    assert open_image(_png(), field="photo").getpixel((0, 0)) == (200, 10, 10)
