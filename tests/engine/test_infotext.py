"""Infotext is written and read exactly as AUTOMATIC1111's web UI writes and reads it."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import pytest
from PIL import Image

from atelier.engine.infotext import format_infotext, parse_infotext, read_infotext, write_png
from atelier.errors import AtelierError, NotFoundError

# Hand-written in the layout A1111 v1.10 produces for a hires-fixed txt2img with a LoRA and an embedding.
A1111_INFOTEXT = (
    "masterpiece, best quality, (product photo:1.2) of a perfume bottle, studio lighting\n"
    "<lora:detail_tweaker:0.5>\n"
    "Negative prompt: (worst quality, low quality:1.4), watermark\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3735928559, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    'Clip skip: 2, Hires upscale: 2, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, Lora hashes: "detail_tweaker: '
    '7d1a1f0b3c2e", TI hashes: "easynegative: c74b4e810b03", Version: v1.10.1'
)


def _png_text_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(chunk type, keyword) of every text chunk in a PNG file, read straight from the bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = []
    position = 8
    while position < len(data):
        length = int.from_bytes(data[position : position + 4], "big")
        chunk_type = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if chunk_type in (b"tEXt", b"iTXt", b"zTXt"):
            chunks.append((chunk_type, body.split(b"\x00", 1)[0]))
        position += 12 + length
    return chunks


def test_layout_matches_a1111() -> None:
    text = format_infotext(
        "a red bottle on a marble table",
        "blurry, lowres",
        {
            "Steps": 20,
            "Sampler": "Euler a",
            "Schedule type": "Automatic",
            "CFG scale": 7,
            "Seed": 1,
            "Size": "512x512",
            "Model hash": "abcdef1234",
            "Model": "name",
            "Denoising strength": 0.75,
            "Clip skip": 2,
        },
    )
    assert text == (
        "a red bottle on a marble table\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, "
        "Model hash: abcdef1234, Model: name, Denoising strength: 0.75, Clip skip: 2"
    )


def test_empty_negative_prompt_line_is_left_out_and_none_values_skipped() -> None:
    text = format_infotext("a cat", "", {"Steps": 20, "Seed": None, "Sampler": "Euler", "CFG scale": 7.5})
    assert text == "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7.5"


def test_values_with_commas_colons_or_newlines_are_json_quoted() -> None:
    text = format_infotext(
        "p",
        "",
        {
            "Steps": 20,
            "Lora hashes": "a: 1, b: 2",
            "Styles": "studio, warm",
            "Note": "line one\nline two",
            "Plain": 'say "hi"',
            "Quoted": '"x"',
        },
    )
    params_line = text.split("\n")[-1]
    assert params_line == (
        r'Steps: 20, Lora hashes: "a: 1, b: 2", Styles: "studio, warm", Note: "line one\nline two", '
        r'Plain: say "hi", Quoted: "\"x\""'
    )
    parsed = parse_infotext(text)
    assert parsed["Lora hashes"] == "a: 1, b: 2"
    assert parsed["Styles"] == "studio, warm"
    assert parsed["Note"] == "line one\nline two"
    assert parsed["Plain"] == 'say "hi"'
    assert parsed["Quoted"] == '"x"'


def test_value_equal_to_its_key_is_written_bare_like_a1111() -> None:
    assert format_infotext("p", "", {"Steps": 20, "Tiling": "Tiling"}) == "p\nSteps: 20, Tiling"


def test_keys_the_format_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="infotext key"):
        format_infotext("p", "", {"Bad: key": 1})


def test_round_trip_keeps_prompts_and_parameters() -> None:
    prompt = "a perfume bottle, studio light\n(glass:1.2), BREAK reflections"
    negative = "blurry\nwatermark, text"
    params = {
        "Steps": 28,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 6.5,
        "Seed": 123456789,
        "Size": "768x512",
        "Model": "sdxl base",
        "Clip skip": 2,
        "Lora hashes": "shiny: 0123abcd",
    }
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    assert parsed["Size-1"] == "768"
    assert parsed["Size-2"] == "512"
    assert "Size" not in parsed
    for key, value in params.items():
        if key != "Size":
            assert parsed[key] == str(value)


def test_parses_a1111_output() -> None:
    parsed = parse_infotext(A1111_INFOTEXT)
    assert parsed["Prompt"] == (
        "masterpiece, best quality, (product photo:1.2) of a perfume bottle, studio lighting\n"
        "<lora:detail_tweaker:0.5>"
    )
    assert parsed["Negative prompt"] == "(worst quality, low quality:1.4), watermark"
    assert parsed["Steps"] == "30"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == "6.5"
    assert parsed["Seed"] == "3735928559"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Model hash"] == "6ce0161689"
    assert parsed["Model"] == "v1-5-pruned-emaonly"
    assert parsed["Denoising strength"] == "0.45"
    assert parsed["Clip skip"] == "2"
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+"
    assert parsed["Lora hashes"] == "detail_tweaker: 7d1a1f0b3c2e"
    assert parsed["TI hashes"] == "easynegative: c74b4e810b03"
    assert parsed["Version"] == "v1.10.1"


def test_defaults_a1111_fills_in_for_missing_parameters() -> None:
    parsed = parse_infotext("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    assert parsed["Clip skip"] == "1"
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["Negative prompt"] == ""


def test_prompt_without_parameters_is_all_prompt() -> None:
    parsed = parse_infotext("a cat\non a mat")
    assert parsed["Prompt"] == "a cat\non a mat"
    assert "Steps" not in parsed


def test_prompt_line_that_looks_like_parameters_stays_in_the_prompt() -> None:
    prompt = "poster text: Steps: 20, Sampler: none, CFG scale: 1\nsecond line"
    text = format_infotext(prompt, "", {"Steps": 25, "Sampler": "Euler", "Seed": 7})
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == prompt
    assert parsed["Steps"] == "25"
    assert parsed["Sampler"] == "Euler"


def test_parameters_only_infotext_has_empty_prompt() -> None:
    parsed = parse_infotext(format_infotext("", "", {"Steps": 20, "Sampler": "Euler", "Seed": 3}))
    assert parsed["Prompt"] == ""
    assert parsed["Seed"] == "3"


def test_png_round_trip_uses_the_parameters_chunk(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    write_png(path, image, A1111_INFOTEXT, extra={"atelier": '{"job": 1}'})

    data = path.read_bytes()
    assert (b"tEXt", b"parameters") in _png_text_chunks(data)
    with Image.open(path) as reopened:
        assert reopened.text["parameters"] == A1111_INFOTEXT
        assert reopened.text["atelier"] == '{"job": 1}'
        assert reopened.size == (16, 8)
        assert reopened.getpixel((3, 3)) == (10, 20, 30)
    assert read_infotext(path) == A1111_INFOTEXT
    assert read_infotext(str(path)) == A1111_INFOTEXT


def test_png_round_trip_keeps_non_latin_prompts(tmp_path: Path) -> None:
    path = tmp_path / "unicode.png"
    infotext = format_infotext("香水瓶, café ☕", "", {"Steps": 20, "Sampler": "Euler", "Seed": 1})
    write_png(path, Image.new("RGB", (4, 4)), infotext)
    assert (b"iTXt", b"parameters") in _png_text_chunks(path.read_bytes())
    assert read_infotext(path) == infotext


def test_write_png_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    write_png(path, Image.new("RGB", (4, 4)), "first\nSteps: 1, Sampler: Euler, Seed: 1")
    write_png(path, Image.new("RGB", (4, 4)), "second\nSteps: 2, Sampler: Euler, Seed: 2")
    assert os.listdir(tmp_path) == ["out.png"]
    assert parse_infotext(read_infotext(path) or "")["Prompt"] == "second"


def test_write_png_refuses_an_extra_chunk_named_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", Image.new("RGB", (4, 4)), "p", extra={"parameters": "other"})
    assert os.listdir(tmp_path) == []


def test_read_infotext_from_an_image_object(tmp_path: Path) -> None:
    path = tmp_path / "out.png"
    write_png(path, Image.new("RGB", (4, 4)), A1111_INFOTEXT)
    with Image.open(path) as image:
        assert read_infotext(image) == A1111_INFOTEXT
    assert read_infotext(Image.new("RGB", (4, 4))) is None


def test_read_infotext_from_a1111_jpeg_exif_user_comment(tmp_path: Path) -> None:
    # A1111 stores JPEG infotext with piexif as an EXIF UserComment: "UNICODE\0" then big-endian UTF-16.
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_INFOTEXT.encode("utf-16-be")
    path = tmp_path / "a1111.jpg"
    Image.new("RGB", (8, 8)).save(path, format="JPEG", exif=exif)
    assert read_infotext(path) == A1111_INFOTEXT


def test_read_infotext_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        read_infotext(tmp_path / "missing.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(zlib.compress(b"not a picture"))
    with pytest.raises(AtelierError) as excinfo:
        read_infotext(not_an_image)
    assert excinfo.value.field == "image"


def test_png_without_infotext_reads_as_none() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="PNG")
    buffer.seek(0)
    with Image.open(buffer) as image:
        assert read_infotext(image) is None
