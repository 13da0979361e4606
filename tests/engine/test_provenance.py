"""AI disclosure in every file Atelier writes: IPTC's digital source type in XMP, read back independently."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image, PngImagePlugin

from atelier.engine import (
    GenerationRequest,
    Provenance,
    check_output_format,
    combined_source_type,
    convert_image,
    declared_source_type,
    encode_image,
    read_infotext,
    save_image,
    source_type_of,
    write_png,
)
from atelier.engine.provenance import MIXED, with_xmp
from atelier.errors import AtelierError
from c2pa_helpers import COMPOSITE, GENERATED, strict_source_type, xmp_of

INFOTEXT = (
    'a "red" bottle, ünïcode\nNegative prompt: blurry\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5'
)


def _picture(mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (24, 16), (200, 40, 90, 128) if mode == "RGBA" else (200, 40, 90))


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("source_type", [GENERATED, COMPOSITE])
def test_each_format_carries_the_source_type_and_the_infotext(output_format, source_type):
    data = encode_image(_picture(), Provenance(source_type), output_format=output_format, infotext=INFOTEXT)
    assert strict_source_type(xmp_of(data)) == source_type
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[output_format]
        assert read_infotext(image) == INFOTEXT


def test_png_keeps_a1111_parameters_chunk_as_it_was(tmp_path):
    write_png(tmp_path / "a.png", _picture(), INFOTEXT)
    with Image.open(tmp_path / "a.png") as image:
        assert image.info["parameters"] == INFOTEXT  # what A1111's PNG Info reads
        assert image.text["parameters"] == INFOTEXT
    data = (tmp_path / "a.png").read_bytes()
    # The XMP is an uncompressed iTXt chunk with the keyword XMP part 3 gives it, before the pixels.
    assert data.index(b"iTXtXML:com.adobe.xmp\x00\x00\x00") < data.index(b"IDAT")
    assert strict_source_type(xmp_of(data)) == GENERATED


def test_jpeg_and_webp_store_infotext_as_a1111_does():
    data = encode_image(
        _picture(), Provenance(GENERATED), output_format="jpeg", infotext=INFOTEXT, quality=80
    )
    with Image.open(io.BytesIO(data)) as image:
        comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\x00" + INFOTEXT.encode("utf-16-be")  # piexif's "unicode" UserComment


def test_quality_changes_the_jpeg_and_transparency_becomes_white():
    photo = Image.effect_noise((64, 64), 60).convert("RGB")
    small = encode_image(photo, Provenance(GENERATED), output_format="jpeg", quality=20)
    large = encode_image(photo, Provenance(GENERATED), output_format="jpeg", quality=95)
    assert len(small) < len(large)
    flat = encode_image(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), Provenance(GENERATED), output_format="jpeg")
    with Image.open(io.BytesIO(flat)) as image:
        assert image.mode == "RGB" and image.getpixel((4, 4)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("output_format", "quality", "field"),
    [("gif", None, "format"), ("png", 90, "quality"), ("jpeg", 0, "quality"), ("webp", 101, "quality")],
)
def test_bad_format_or_quality_names_the_field(output_format, quality, field):
    with pytest.raises(AtelierError) as caught:
        check_output_format(output_format, quality)
    assert caught.value.field == field


def test_gif_and_mp4_get_their_xmp_where_xmp_part_3_puts_it():
    frames = [_picture(), Image.new("RGB", (24, 16), (0, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    gif = with_xmp(buffer.getvalue(), "image/gif", COMPOSITE)
    start = gif.index(b"\x21\xff\x0bXMP DataXMP") + 14
    assert gif.endswith(bytes([1, *range(255, -1, -1), 0]) + b";")  # the magic trailer, then GIF's end
    assert strict_source_type(gif[start:]) == COMPOSITE
    with Image.open(io.BytesIO(gif)) as image:  # still a valid two-frame GIF
        assert image.n_frames == 2
        image.seek(1)

    mp4 = struct.pack(">I", 16) + b"ftypisom" + b"\x00\x00\x02\x00"
    marked = with_xmp(mp4, "video/mp4", GENERATED)
    size, kind = struct.unpack(">I4s", marked[16:24])
    assert (kind, size) == (b"uuid", len(marked) - 16)
    assert marked[24:40] == bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
    assert strict_source_type(marked[40:]) == GENERATED


def test_what_a_picture_declares_is_read_back():
    declared = encode_image(_picture(), Provenance(COMPOSITE), output_format="webp")
    assert declared_source_type(declared) == COMPOSITE
    with Image.open(io.BytesIO(declared)) as image:
        assert source_type_of(image) == COMPOSITE
    a1111 = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", INFOTEXT)
    _picture().save(a1111, format="PNG", pnginfo=info)
    with Image.open(a1111) as image:
        assert source_type_of(image) == GENERATED  # an A1111 generation without XMP
    assert source_type_of(_picture()) is None
    assert declared_source_type(b'<x:xmpmeta><!DOCTYPE x [<!ENTITY a "b">]></x:xmpmeta>') is None
    assert combined_source_type([None, GENERATED]) == COMPOSITE
    assert combined_source_type([None, None]) == MIXED


def test_a_generation_declares_how_it_was_made(tiny_models, engine, tmp_path):
    model = str(tiny_models("sd15"))
    base = {"prompt": "a bottle", "model": model, "width": 64, "height": 64, "steps": 2, "seed": 3}
    made = engine.generate(GenerationRequest(**base)).images[0]
    assert made.provenance.source_type == GENERATED
    record = made.provenance.generation
    assert record["mode"] == "txt2img"
    assert record["checkpoint"]["sha256"] and record["checkpoint"]["name"] == made.params["Model"]
    edited = engine.generate(
        GenerationRequest(**base, init_image=_picture().resize((64, 64)), denoising_strength=0.5)
    ).images[0]
    assert edited.provenance.source_type == COMPOSITE

    path = save_image(edited, tmp_path, output_format="jpeg", quality=85)
    assert path.suffix == ".jpg"
    data = path.read_bytes()
    assert strict_source_type(xmp_of(data)) == COMPOSITE
    assert read_infotext(path) == edited.infotext


def test_a_stored_png_converts_to_jpeg_keeping_its_disclosure():
    png = encode_image(_picture(), Provenance(COMPOSITE), infotext=INFOTEXT)
    converted = convert_image(png, "webp", quality=70, title="1_2.png")
    assert converted.mime == "image/webp"
    assert strict_source_type(xmp_of(converted.data)) == COMPOSITE
    assert read_infotext(Image.open(io.BytesIO(converted.data))) == INFOTEXT
    plain = io.BytesIO()
    _picture().save(plain, format="PNG")
    with pytest.raises(AtelierError, match="no AI disclosure"):
        convert_image(plain.getvalue(), "jpeg")
