"""One way to read hand-written TOML and to write files, whatever the layer."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from atelier.errors import AtelierError
from atelier.files import read_toml, write_atomic, write_text_atomic

BOM = "\ufeff"


def _bom_file(path: Path, text: str) -> Path:
    # What Notepad and some Excel exports write: UTF-8 with a byte-order mark.
    path.write_bytes((BOM + text).encode("utf-8"))
    return path


def test_every_toml_file_reads_the_same_with_a_byte_order_mark(tmp_path):
    from atelier.campaign.ad import load_ad_spec
    from atelier.campaign.batch import load_scenes
    from atelier.campaign.templates import BUILTIN_DIR, load_template
    from atelier.training.config import load_train_config
    from atelier.training.dataset_config import load_dataset_config

    assert read_toml(_bom_file(tmp_path / "plain.toml", 'a = "b"\n'), what="file") == {"a": "b"}
    config = load_train_config(_bom_file(tmp_path / "train.toml", "network_dim = 8\noutput_name = 'bom'\n"))
    assert (config.network_dim, config.output_name) == (8, "bom")
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    datasets = load_dataset_config(
        _bom_file(
            tmp_path / "dataset.toml",
            "[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = 'img'\n",
        )
    )
    assert datasets[0].resolution == (64, 64)
    scenes = load_scenes(
        _bom_file(tmp_path / "scenes.toml", '[[scene]]\nname = "s"\nprompt = "a {product}"\nseeds = [1]\n')
    )
    assert [scene.name for scene in scenes] == ["s"]
    Image.new("RGB", (32, 32)).save(tmp_path / "m.png")
    spec = load_ad_spec(_bom_file(tmp_path / "ad.toml", 'materials = ["m.png"]\nheadline = "Hi"\n'))
    assert spec.headline == "Hi"
    builtin = (BUILTIN_DIR / "hero.toml").read_text()
    template = load_template(str(_bom_file(tmp_path / "mine.toml", builtin)))
    assert template.name


def test_toml_problems_are_one_line_naming_the_file(tmp_path):
    with pytest.raises(AtelierError, match=r"^settings not found: .*missing\.toml$"):
        read_toml(tmp_path / "missing.toml", what="settings")
    (tmp_path / "latin1.toml").write_bytes('name = "caf\xe9"'.encode("latin-1"))
    with pytest.raises(AtelierError, match=r"^latin1\.toml is not UTF-8 text$"):
        read_toml(tmp_path / "latin1.toml", what="settings")


def test_written_files_are_readable_by_the_team_and_never_half_written(tmp_path):
    previous = os.umask(0o022)
    try:
        text = write_text_atomic(tmp_path / "out" / "notes.txt", "hello")

        # A writer that replaces the file it is given, as safetensors' does, still ends at the usual mode.
        def replace_it(temp: Path) -> None:
            temp.unlink()
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, b"data")
            os.close(fd)

        replaced = write_atomic(tmp_path / "out" / "model.safetensors", replace_it)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(replaced.stat().st_mode) == 0o644

    def fails(temp: Path) -> None:
        temp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "out" / "notes.txt", fails)
    assert (tmp_path / "out" / "notes.txt").read_text() == "hello"
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["model.safetensors", "notes.txt"]
