"""The ad composer: exact channel sizes, text that always fits, metadata, animation and spec errors."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageSequence

from atelier.campaign.ad import (
    METADATA_KEY,
    AdRenderer,
    Brand,
    compose_ad,
    load_ad_spec,
    parse_ad_spec,
    parse_channel,
)
from atelier.campaign.templates import builtin_template_names, load_template
from atelier.campaign.text import BUNDLED_FAMILIES, ELLIPSIS
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError

CHANNEL_SIZES = {
    "square": (1080, 1080),
    "portrait": (1080, 1350),
    "story": (1080, 1920),
    "banner": (1200, 628),
    "640x480": (640, 480),
}
HEADLINE_120 = "Our lightest waterproof windbreaker yet: seam-sealed, breathable, and built for long wet days on the northern trails too"
PRIMARY = (242, 194, 48)


@pytest.fixture(scope="module")
def composed(tmp_path_factory, spec_folder):
    folder = tmp_path_factory.mktemp("ad")
    spec = load_ad_spec(spec_folder(folder / "spec"))
    return compose_ad(spec, folder / "out", make_video=False)


def inside(inner: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def test_every_channel_is_written_at_its_exact_size(composed):
    written = {result.channel.name: result.path for result in composed.channels}
    assert set(written) == set(CHANNEL_SIZES)
    for name, size in CHANNEL_SIZES.items():
        assert written[name] == composed.out_dir / f"{name}.png"
        with Image.open(written[name]) as image:
            assert image.size == size
            assert image.format == "PNG"


def test_outputs_are_only_the_promised_files(composed):
    # Atomic writes leave no temporary files behind.
    names = sorted(path.name for path in composed.out_dir.iterdir())
    assert names == sorted([f"{name}.png" for name in CHANNEL_SIZES] + ["ad.gif"])
    mode = stat.S_IMODE(os.stat(composed.out_dir / "square.png").st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_each_png_records_its_materials_and_texts(composed):
    for result in composed.channels:
        with Image.open(result.path) as image:
            record = json.loads(image.text[METADATA_KEY])
        assert record["channel"] == result.channel.name
        assert record["size"] == list(CHANNEL_SIZES[result.channel.name])
        assert record["template"] == "hero"
        assert record["layout"] == result.orientation
        assert record["materials"] == ["forest.png", "model.png", "rain.png"]
        assert record["texts"] == {
            "headline": "Rain-ready. Trail-ready.",
            "body": "The Aurora windbreaker sheds a downpour and packs into its own pocket.",
            "cta": "Shop the collection",
        }
        assert record["truncated"] == []


def test_text_boxes_lie_inside_the_canvas_and_the_text_inside_its_box(composed):
    for result in composed.channels:
        width, height = CHANNEL_SIZES[result.channel.name]
        roles = [text.role for text in result.texts]
        assert sorted(roles) == ["body", "cta", "headline"]
        for text in result.texts:
            assert inside(text.box, (0, 0, width, height)), (result.channel.name, text)
            assert text.bbox is not None and inside(text.bbox, text.box), (result.channel.name, text)
            assert not text.truncated


def test_the_cta_button_is_painted_in_the_brand_primary_colour(composed):
    result = next(result for result in composed.channels if result.channel.name == "square")
    cta = next(text for text in result.texts if text.role == "cta")
    left, top, right, bottom = cta.box
    with Image.open(result.path) as image:
        # Inside the pill, left of the label.
        pixel = image.convert("RGB").getpixel((left + (bottom - top) // 2, (top + bottom) // 2))
    assert max(abs(a - b) for a, b in zip(pixel, PRIMARY, strict=True)) <= 2


def test_the_gif_cycles_the_materials(composed):
    assert composed.gif_path == composed.out_dir / "ad.gif"
    assert composed.gif_channel.name == "square"
    with Image.open(composed.gif_path) as gif:
        assert gif.is_animated
        assert gif.n_frames > 3
        assert max(gif.size) == 240
        frames = [frame.convert("RGB") for frame in ImageSequence.Iterator(gif)]
        durations = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
    assert ImageChops.difference(frames[0], frames[len(frames) // 2]).getbbox() is not None
    assert sum(durations) >= 3 * 1000  # each of three materials held about a second
    assert composed.video_path is None


@pytest.mark.parametrize("template_name", builtin_template_names())
def test_a_120_character_headline_fits_every_channel(template_name):
    assert len(HEADLINE_120) == 120
    template = load_template(template_name)
    texts = {
        "headline": HEADLINE_120,
        "body": "Sheds a downpour, breathes on the climb and packs into its own chest pocket. Free returns.",
        "cta": "Shop the new collection",
    }
    for name, size in CHANNEL_SIZES.items():
        renderer = AdRenderer(template, size, Brand(), BUNDLED_FAMILIES["roboto"], texts)
        placed = renderer.draw_text(Image.new("RGBA", size))
        headline = next(text for text in placed if text.role == "headline")
        assert not headline.truncated, (template_name, name)
        assert " ".join(headline.lines).split() == HEADLINE_120.split()
        for text in placed:
            assert inside(text.box, (0, 0, *size)), (template_name, name, text)
            assert text.bbox is not None and inside(text.bbox, text.box), (template_name, name, text)


def test_copy_too_long_for_any_size_is_shortened_and_reported(tmp_path, spec_folder):
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    spec = replace(spec, headline=HEADLINE_120 * 8, channels=(parse_channel("banner"),))
    result = compose_ad(spec, tmp_path / "out", make_video=False)
    banner = result.channels[0]
    headline = next(text for text in banner.texts if text.role == "headline")
    assert headline.truncated
    assert headline.lines[-1].endswith(ELLIPSIS)
    assert inside(headline.bbox, headline.box)
    assert banner.truncated == ["headline"]
    with Image.open(banner.path) as image:
        assert json.loads(image.text[METADATA_KEY])["truncated"] == ["headline"]


def test_a_single_material_still_animates_by_fading_the_copy_in(tmp_path, spec_folder):
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    spec = replace(spec, materials=("model.png",), channels=(parse_channel("320x320"),))
    result = compose_ad(spec, tmp_path / "out", make_video=False)
    with Image.open(result.gif_path) as gif:
        assert gif.n_frames > 1
        first = gif.convert("RGB")
        gif.seek(gif.n_frames // 2)
        middle = gif.convert("RGB")
    assert ImageChops.difference(first, middle).getbbox() is not None


def test_the_service_can_resolve_material_ids(tmp_path, spec_folder, ad_spec_text):
    spec_path = spec_folder(tmp_path / "spec", ad_spec_text.replace('"forest.png"', '"gen:42"'))
    spec = load_ad_spec(spec_path)
    asked = []

    def resolve(entry: str) -> Path:
        asked.append(entry)
        return tmp_path / "spec" / ("forest.png" if entry == "gen:42" else entry)

    spec = replace(spec, channels=(parse_channel("300x300"),))
    result = compose_ad(spec, tmp_path / "out", resolve_material=resolve, make_video=False)
    assert asked == ["gen:42", "model.png", "rain.png"]
    with Image.open(result.channels[0].path) as image:
        assert json.loads(image.text[METADATA_KEY])["materials"][0] == "gen:42"
    with pytest.raises(NotFoundError, match="material file not found: gen:42"):
        compose_ad(spec, tmp_path / "out2", make_video=False)
    assert not (tmp_path / "out2").exists()


def test_a_template_file_in_the_spec_folder_can_be_used(tmp_path, spec_folder):
    folder = tmp_path / "spec"
    spec_folder(folder)
    (folder / "mine.toml").write_text(
        load_template("split").source.read_text().replace('name = "split"', 'name = "mine"')
    )
    spec = load_ad_spec(folder / "ad.toml")
    spec = replace(spec, template="mine.toml", channels=(parse_channel("400x300"),))
    result = compose_ad(spec, tmp_path / "out", make_video=False)
    assert result.template == "mine"


def fake_ffmpeg(folder: Path, body: str) -> None:
    script = folder / "ffmpeg"
    script.write_text(f"#!{sys.executable}\nimport sys\nargs = sys.argv[1:]\n{body}\n")
    script.chmod(0o755)


def test_an_mp4_is_encoded_by_piping_frames_to_ffmpeg(tmp_path, monkeypatch, spec_folder):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Stands in for ffmpeg: records its arguments and how many bytes of frames arrived on stdin.
    fake_ffmpeg(
        bin_dir,
        "import json\n"
        "data = sys.stdin.buffer.read()\n"
        "open(args[-1], 'w').write(json.dumps([args, len(data)]))",
    )
    monkeypatch.setenv("PATH", str(bin_dir))
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    spec = replace(spec, channels=(parse_channel("200x100"),))
    result = compose_ad(spec, tmp_path / "out")
    assert result.video_path == tmp_path / "out" / "ad.mp4"
    assert result.video_note is None
    # What ffmpeg wrote, then the XMP box Atelier appends (a top-level uuid box, XMP part 3).
    data = result.video_path.read_bytes()
    box = data.rindex(b"uuid\xbe\x7a\xcf\xcb") - 4
    assert int.from_bytes(data[box : box + 4], "big") == len(data) - box
    assert b"digitalsourcetype/composite" in data[box:]
    args, received = json.loads(data[:box])
    assert args[args.index("-s") + 1] == "200x100"
    assert args[args.index("-f") + 1] == "rawvideo"
    assert args[args.index("-c:v") + 1] == "libx264"
    frame_bytes = 200 * 100 * 3
    assert received % frame_bytes == 0
    # 1 s per material and 0.5 s per cross-fade, three times, at 25 frames a second.
    assert received // frame_bytes == pytest.approx(3 * 25 * 1.5, abs=3)


def test_a_failing_ffmpeg_is_reported_and_leaves_no_file(tmp_path, monkeypatch, spec_folder):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_ffmpeg(bin_dir, "sys.stdin.buffer.read()\nsys.stderr.write('Unknown encoder\\n')\nsys.exit(1)")
    monkeypatch.setenv("PATH", str(bin_dir))
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    result = compose_ad(replace(spec, channels=(parse_channel("100x100"),)), tmp_path / "out")
    assert result.video_path is None
    assert "Unknown encoder" in result.video_note
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["100x100.png", "ad.gif"]


def test_without_ffmpeg_the_mp4_is_skipped_with_a_note(tmp_path, monkeypatch, spec_folder):
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    result = compose_ad(replace(spec, channels=(parse_channel("100x100"),)), tmp_path / "out")
    assert result.video_path is None
    assert "ffmpeg not found" in result.video_note


@pytest.mark.skipif(
    not any((Path(p) / "ffmpeg").exists() for p in os.environ.get("PATH", "").split(os.pathsep)),
    reason="ffmpeg is not installed",
)
def test_a_real_ffmpeg_makes_a_playable_mp4(tmp_path, spec_folder):
    spec = load_ad_spec(spec_folder(tmp_path / "spec"))
    result = compose_ad(replace(spec, channels=(parse_channel("201x99"),)), tmp_path / "out")
    assert result.video_note is None
    assert result.video_path.read_bytes()[4:8] == b"ftyp"


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (("headline =", "headlien ="), AtelierError, "unknown key 'headlien'.*did you mean 'headline'"),
        (("[animation]", "[animation]\nfps = 3"), AtelierError, r"unknown key 'animation\.fps'"),
        (
            ('primary = "#F2C230"', 'primary = "#F2C23"'),
            AtelierError,
            r"brand\.primary: '#F2C23' is not a colour",
        ),
        (('"640x480"', '"640y480"'), AtelierError, "unknown channel '640y480'"),
        (('"640x480"', '"20000x480"'), AtelierError, "each side must be"),
        (('"640x480"', '"square"'), AtelierError, "channel 'square' is listed twice"),
        (('headline = "Rain-ready. Trail-ready."', 'headline = ""'), AtelierError, "headline is required"),
        (
            ('materials = ["forest.png", "model.png", "rain.png"]', "materials = []"),
            AtelierError,
            "materials",
        ),
        (('logo = "logo.png"', 'logo = "missing.png"'), NotFoundError, "logo file not found: missing.png"),
        (('logo = "logo.png"', 'logo = "../nologo.png"'), NotFoundError, r"logo file not found: \.\./nologo"),
        (('template = "hero"', 'template = "fancy"'), NotFoundError, "unknown template 'fancy'"),
        (('template = "hero"', 'template = "hero"\nfont = "comic"'), NotFoundError, "unknown font 'comic'"),
        (
            ('template = "hero"', 'template = "hero"\nfont = "brand.ttf"'),
            NotFoundError,
            "font file not found",
        ),
        (("gif_max_side = 240", "gif_max_side = 10"), AtelierError, r"animation\.gif_max_side must be"),
    ],
)
def test_spec_errors_name_the_problem(tmp_path, change, error, message, spec_folder, ad_spec_text):
    spec_path = spec_folder(tmp_path / "spec", ad_spec_text.replace(*change))
    with pytest.raises(error, match=message):
        load_ad_spec(spec_path)


def test_a_missing_material_is_named(tmp_path, spec_folder, ad_spec_text):
    spec_path = spec_folder(tmp_path / "spec", ad_spec_text.replace('"rain.png"', '"rain-closeup.png"'))
    spec = load_ad_spec(spec_path)
    with pytest.raises(NotFoundError, match="material file not found: rain-closeup.png"):
        compose_ad(spec, tmp_path / "out", make_video=False)


def test_a_material_that_is_not_an_image_is_named(tmp_path, spec_folder):
    spec_path = spec_folder(tmp_path / "spec")
    (tmp_path / "spec" / "rain.png").write_text("not an image")
    with pytest.raises(AtelierError, match="material rain.png is not a readable image"):
        compose_ad(load_ad_spec(spec_path), tmp_path / "out", make_video=False)


def test_specs_can_come_from_a_dict_with_defaults(tmp_path, spec_folder):
    spec_folder(tmp_path)
    spec = parse_ad_spec({"materials": ["forest.png"], "headline": "Hi"}, tmp_path)
    assert [channel.name for channel in spec.channels] == ["square"]
    assert spec.template == "hero"
    assert spec.font == "roboto"
    assert spec.brand == Brand()


def test_a_users_own_spec_may_name_images_anywhere(tmp_path, spec_folder, ad_spec_text):
    """The CLI reads the user's own spec: absolute paths and files beside the spec's folder are theirs."""
    spec_path = spec_folder(tmp_path / "spec", ad_spec_text)
    shared = tmp_path / "brand-assets"
    shared.mkdir()
    (spec_path.parent / "logo.png").rename(shared / "logo.png")
    (spec_path.parent / "forest.png").rename(shared / "forest.png")
    text = ad_spec_text.replace('logo = "logo.png"', 'logo = "../brand-assets/logo.png"')
    text = text.replace('"forest.png"', json.dumps(str(shared / "forest.png")))
    spec_path.write_text(text)
    spec = load_ad_spec(spec_path)
    assert spec.resolve_file(spec.logo, "logo") == shared / "logo.png"
    assert spec.resolve_file(spec.materials[0], "material") == shared / "forest.png"


@pytest.mark.parametrize(
    ("logo", "message"),
    [("../logo.png", "outside the spec's folder"), ("/etc/logo.png", "must be a path relative")],
)
def test_a_spec_from_the_api_stays_in_its_folder(tmp_path, spec_folder, ad_spec_text, logo, message):
    import tomllib

    spec_path = spec_folder(tmp_path / "spec", ad_spec_text.replace('logo = "logo.png"', f'logo = "{logo}"'))
    with pytest.raises(UnsafeFileError, match=message):
        parse_ad_spec(tomllib.loads(spec_path.read_text()), spec_path.parent)
