"""kohya dataset.toml parsing and plain-folder dataset configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.errors import AtelierError, UnsafeFileError
from atelier.training.dataset_config import (
    DatasetConfig,
    SubsetConfig,
    from_folder,
    load_dataset_config,
    parse_dataset_config,
    parse_repeat_folder,
)


def _write(tmp_path: Path, text: str, name: str = "dataset.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_dataset_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed_dataset_toml: str) -> None:
    (tmp_path / "sd-scripts").mkdir()
    config_path = _write(tmp_path / "sd-scripts", seed_dataset_toml)
    monkeypatch.chdir(tmp_path)  # a different folder: image_dir must still resolve against the TOML's

    [dataset] = load_dataset_config(config_path)

    assert dataset == DatasetConfig(
        resolution=(512, 512),
        batch_size=2,
        enable_bucket=True,
        min_bucket_reso=256,
        max_bucket_reso=1024,
        bucket_reso_steps=64,
        bucket_no_upscale=False,
        subsets=[
            SubsetConfig(
                image_dir=(tmp_path / "sd-scripts" / "images" / "sample").resolve(),
                num_repeats=10,
                caption_extension=".txt",
                shuffle_caption=True,
                keep_tokens=0,
                class_tokens=None,
                is_reg=False,
                flip_aug=False,
                caption_dropout_rate=0.0,
            )
        ],
    )


def test_subset_beats_dataset_beats_general_beats_defaults(tmp_path: Path) -> None:
    data = {
        "general": {"shuffle_caption": True, "keep_tokens": 1, "caption_dropout_rate": 0.1, "batch_size": 4},
        "datasets": [
            {
                "resolution": [768, 512],
                "keep_tokens": 2,
                "batch_size": 3,
                "subsets": [
                    {"image_dir": "a", "keep_tokens": 3, "class_tokens": "oue car"},
                    {"image_dir": "b", "is_reg": True, "caption_extension": "caption"},
                ],
            },
            {"subsets": [{"image_dir": "c"}]},
        ],
    }
    first, second = parse_dataset_config(
        data, tmp_path, defaults={"resolution": 1024, "flip_aug": True, "keep_tokens": 9}
    )

    assert first.resolution == (768, 512)
    assert first.batch_size == 3
    a, b = first.subsets
    assert (a.keep_tokens, a.shuffle_caption, a.caption_dropout_rate, a.flip_aug) == (3, True, 0.1, True)
    assert a.class_tokens == "oue car"
    assert (b.keep_tokens, b.is_reg, b.caption_extension) == (2, True, ".caption")
    assert b.image_dir == (tmp_path / "b").resolve()

    assert second.resolution == (1024, 1024)  # from the caller's defaults, like kohya's --resolution
    assert second.batch_size == 4
    assert second.subsets[0].keep_tokens == 1


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[general]\nshufle_caption = true\n", r"unknown key `shufle_caption` in \[general\]"),
        (
            "[[datasets]]\nresolution = 512\nbatchsize = 2\n[[datasets.subsets]]\nimage_dir = 'x'\n",
            r"unknown key `batchsize` in \[\[datasets\]\] #1",
        ),
        (
            "[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'x'\nrepeats = 3\n",
            r"unknown key `repeats` in \[\[datasets.subsets\]\] #1 of dataset #1",
        ),
        (
            "[general]\ncolor_aug = true\n",
            r"`color_aug` in \[general\] is a kohya option Atelier does not support",
        ),
        (
            "[general]\nimage_dir = 'x'\n",
            r"`image_dir` in \[general\] is only allowed in \[\[datasets.subsets\]\]",
        ),
        (
            "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\nresolution = 512\n",
            r"`resolution` in \[\[datasets.subsets\]\] #1 of dataset #1 is only allowed in \[general\] or",
        ),
        ("[trainer]\nepochs = 1\n", r"unknown top-level key `trainer`"),
    ],
)
def test_unknown_keys_name_the_key_and_table(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(AtelierError, match=message):
        load_dataset_config(_write(tmp_path, toml))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("keep_tokens = '1'", r"`keep_tokens` in \[general\] must be an integer, got '1' \(string\)"),
        ("enable_bucket = 1", r"`enable_bucket` in \[general\] must be true or false, got 1 \(integer\)"),
        ("batch_size = true", r"`batch_size` in \[general\] must be an integer, got True \(boolean\)"),
        ("resolution = '512'", r"`resolution` in \[general\] must be an integer or \[width, height\]"),
        ("resolution = [512]", r"`resolution` in \[general\] must be an integer or \[width, height\]"),
        ("resolution = 500", r"`resolution` in \[general\] must be a multiple of 8, got 500"),
        ("caption_dropout_rate = 'often'", r"`caption_dropout_rate` in \[general\] must be a number"),
        ("caption_dropout_rate = 1.5", r"`caption_dropout_rate` in \[general\] must be between 0 and 1"),
        ("num_repeats = 0", r"`num_repeats` in \[general\] must be at least 1, got 0"),
        ("class_tokens = 3", r"`class_tokens` in \[general\] must be a string, got 3 \(integer\)"),
    ],
)
def test_wrong_types_name_the_key_and_expected_type(tmp_path: Path, line: str, message: str) -> None:
    toml = f"[general]\n{line}\n[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'x'\n"
    with pytest.raises(AtelierError, match=message) as excinfo:
        load_dataset_config(_write(tmp_path, toml))
    assert excinfo.value.field == line.split()[0]


def test_missing_pieces_are_reported(tmp_path: Path) -> None:
    with pytest.raises(AtelierError, match=r"no \[\[datasets\]\]"):
        load_dataset_config(_write(tmp_path, "[general]\nenable_bucket = true\n"))
    with pytest.raises(AtelierError, match=r"\[\[datasets\]\] #1 has no `resolution`"):
        load_dataset_config(_write(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'x'\n"))
    with pytest.raises(AtelierError, match=r"#1 of dataset #1 has no `image_dir`"):
        load_dataset_config(
            _write(tmp_path, "[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nnum_repeats = 2\n")
        )
    with pytest.raises(AtelierError, match=r"\[\[datasets\]\] #1 has no \[\[datasets.subsets\]\]"):
        load_dataset_config(_write(tmp_path, "[[datasets]]\nresolution = 512\n"))
    with pytest.raises(AtelierError, match="dataset config not found"):
        load_dataset_config(tmp_path / "nope.toml")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(AtelierError, match=r"broken.toml is not valid TOML.*line 2"):
        load_dataset_config(_write(tmp_path, "[general]\nenable_bucket = \n", name="broken.toml"))


def test_bucket_limits_must_contain_the_resolution(tmp_path: Path) -> None:
    base = "[[datasets]]\nresolution = 512\nenable_bucket = true\n{extra}\n[[datasets.subsets]]\nimage_dir = 'x'\n"
    with pytest.raises(AtelierError, match=r"min_bucket_reso \(576\) must not exceed"):
        load_dataset_config(_write(tmp_path, base.format(extra="min_bucket_reso = 576")))
    with pytest.raises(AtelierError, match=r"max_bucket_reso \(448\) must not be below"):
        load_dataset_config(_write(tmp_path, base.format(extra="max_bucket_reso = 448")))
    with pytest.raises(
        AtelierError, match=r"min_bucket_reso \(264\) must be a multiple of bucket_reso_steps"
    ):
        load_dataset_config(_write(tmp_path, base.format(extra="min_bucket_reso = 264")))
    # kohya ignores the limits when bucketing is off
    [dataset] = load_dataset_config(
        _write(tmp_path, base.format(extra="min_bucket_reso = 576").replace("enable_bucket = true", ""))
    )
    assert dataset.enable_bucket is False


def test_image_dir_outside_the_upload_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    toml = "[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = '{}'\n"
    for image_dir in ("../../etc", "/etc"):
        with pytest.raises(UnsafeFileError, match="points outside"):
            load_dataset_config(_write(upload, toml.format(image_dir)), confine_to=upload)
    [dataset] = load_dataset_config(_write(upload, toml.format("./images/sample")), confine_to=upload)
    assert dataset.subsets[0].image_dir == (upload / "images" / "sample").resolve()


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("10_oue car", (10, "oue car")),
        ("5_oue_car", (5, "oue_car")),
        ("3", (3, None)),
        ("1_", (1, None)),
        ("0_unused", (0, "unused")),
        ("sample", None),
        ("car_10", None),
        ("٣_arabic digits", None),
    ],
)
def test_parse_repeat_folder(name: str, parsed: tuple[int, str | None] | None) -> None:
    assert parse_repeat_folder(name) == parsed


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not decoded here")


def test_from_folder_reads_kohya_repeat_folders(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "10_oue car" / "1.png")
    _image(tmp_path / "train" / "2_oue scooter" / "1.jpg")
    _image(tmp_path / "train" / "0_off" / "1.jpg")
    _image(tmp_path / "train" / "notes" / "1.jpg")
    _image(tmp_path / "reg" / "1_car" / "r.png")
    warnings: list[str] = []

    [dataset] = from_folder(
        tmp_path / "train", 1024, 2, reg_root=tmp_path / "reg", warn=warnings.append, shuffle_caption=True
    )

    assert dataset.resolution == (1024, 1024)
    assert dataset.batch_size == 2
    assert dataset.enable_bucket is True
    summary = [
        (s.image_dir.name, s.num_repeats, s.class_tokens, s.is_reg, s.shuffle_caption)
        for s in dataset.subsets
    ]
    assert summary == [
        ("10_oue car", 10, "oue car", False, True),
        ("2_oue scooter", 2, "oue scooter", False, True),
        ("1_car", 1, "car", True, True),
    ]
    assert any("0_off" in warning and "0 repeats" in warning for warning in warnings)
    assert any("notes" in warning and "repeat count" in warning for warning in warnings)


def test_from_folder_looks_through_the_zip_wrapper_folder(tmp_path: Path) -> None:
    _image(tmp_path / "extracted" / "sample" / "1.png")
    [dataset] = from_folder(tmp_path / "extracted", 512, num_repeats=10, enable_bucket=False)
    [subset] = dataset.subsets
    assert subset.image_dir == (tmp_path / "extracted" / "sample").resolve()
    assert subset.num_repeats == 10
    assert subset.caption_extension == ".txt"
    assert dataset.enable_bucket is False


def test_from_folder_checks_options_like_the_toml(tmp_path: Path) -> None:
    _image(tmp_path / "1.png")
    with pytest.raises(AtelierError, match="unknown key `shuffle` in the training options"):
        from_folder(tmp_path, 512, shuffle=True)
    with pytest.raises(AtelierError, match="`batch_size` in the training options must be at least 1"):
        from_folder(tmp_path, 512, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AtelierError, match="no training images found"):
        from_folder(tmp_path / "empty", 512)
    with pytest.raises(AtelierError, match="training image folder not found"):
        from_folder(tmp_path / "missing", 512)
