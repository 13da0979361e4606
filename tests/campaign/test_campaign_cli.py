"""`atelier ad` and `atelier sheet` from the command line."""

from __future__ import annotations

import pytest
from PIL import Image, PngImagePlugin

import atelier.cli


@pytest.fixture(autouse=True)
def campaign_commands(monkeypatch):
    monkeypatch.setattr(atelier.cli, "COMMAND_MODULES", ["atelier.cli.ad", "atelier.cli.sheet"])


def test_ad_writes_every_channel_and_says_so(tmp_path, capsys, monkeypatch, spec_folder, ad_spec_text):
    monkeypatch.setenv("PATH", str(tmp_path / "no-ffmpeg-here"))
    spec = spec_folder(
        tmp_path / "spec", ad_spec_text.replace('"square", "portrait", "story", "banner", ', "")
    )
    code = atelier.cli.main(["ad", str(spec), "--out", str(tmp_path / "out"), "--template", "split"])
    output = capsys.readouterr().out
    assert code == 0
    with Image.open(tmp_path / "out" / "640x480.png") as image:
        assert image.size == (640, 480)
    assert (tmp_path / "out" / "ad.gif").is_file()
    assert "640x480.png (640x480, split template, landscape layout)" in output
    assert "note: ffmpeg not found on PATH" in output


def test_ad_warns_when_copy_had_to_be_shortened(tmp_path, capsys, spec_folder, ad_spec_text):
    spec_text = ad_spec_text.replace(
        '"square", "portrait", "story", "banner", "640x480"', '"300x100"'
    ).replace('headline = "Rain-ready. Trail-ready."', f'headline = "{"Very long headline " * 30}"')
    spec = spec_folder(tmp_path / "spec", spec_text)
    assert atelier.cli.main(["ad", str(spec), "--out", str(tmp_path / "out"), "--no-video"]) == 0
    output = capsys.readouterr().out
    assert "warning: the headline was too long for 300x100" in output
    assert "ffmpeg" not in output


def test_ad_spec_errors_are_one_line(tmp_path, capsys, spec_folder, ad_spec_text):
    spec = spec_folder(tmp_path / "spec", ad_spec_text.replace("headline =", "headlien ="))
    assert atelier.cli.main(["ad", str(spec), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == "error: unknown key 'headlien' in ad spec; did you mean 'headline'?\n"
    assert not (tmp_path / "out").exists()


def test_sheet_writes_the_page_and_the_grid(tmp_path, capsys):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a jacket\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 9, Size: 32x32")
    Image.new("RGB", (32, 32), "orange").save(tmp_path / "one.png", pnginfo=info)
    grid = tmp_path / "grid.png"
    code = atelier.cli.main(["sheet", str(tmp_path), "--png", str(grid), "--title", "Spring drop"])
    assert code == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'index.html'}", f"wrote {grid}"]
    assert "<title>Spring drop</title>" in (tmp_path / "index.html").read_text()
    assert grid.is_file()


def test_sheet_of_a_missing_folder_fails_cleanly(tmp_path, capsys):
    assert atelier.cli.main(["sheet", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.startswith("error: folder not found")
