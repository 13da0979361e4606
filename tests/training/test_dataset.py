"""Scanning captioned image folders and kohya-style caption processing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from atelier.errors import AtelierError
from atelier.training.dataset import (
    ImageItem,
    balance_regularization,
    image_size,
    load_image,
    process_caption,
    read_caption,
    scan_dataset,
    scan_folder,
    tag_frequency,
)
from atelier.training.dataset_config import DatasetConfig, SubsetConfig, load_dataset_config


def _png(path: Path, size: tuple[int, int] = (64, 80), color: tuple[int, ...] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _seed_sample(folder: Path) -> None:
    """The seed article's data: 6 photos of 512x704 with same-named .txt captions."""
    for index in range(1, 7):
        _png(folder / f"{index}.png", (512, 704), (index * 30, 90, 120))
        (folder / f"{index}.txt").write_text(
            f"wta woman, photo {index}, Smiling, outdoors\n", encoding="utf-8"
        )


def test_seed_dataset_scans_all_six_captioned_images(tmp_path: Path, seed_dataset_toml: str) -> None:
    _seed_sample(tmp_path / "images" / "sample")
    (tmp_path / "dataset.toml").write_text(seed_dataset_toml, encoding="utf-8")
    [dataset] = load_dataset_config(tmp_path / "dataset.toml")
    warnings: list[str] = []

    items = scan_dataset(dataset, warn=warnings.append)

    assert [item.path.name for item in items] == [f"{index}.png" for index in range(1, 7)]
    assert items[0].caption == "wta woman, photo 1, Smiling, outdoors"
    assert all(item.repeats == 10 and not item.is_reg and item.size == (512, 704) for item in items)
    assert items[0].subset is dataset.subsets[0]
    assert warnings == []


def test_caption_extension_falls_back_between_txt_and_caption(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("from txt", encoding="utf-8")
    assert read_caption(image, ".caption") == ("from txt", tmp_path / "a.txt")
    (tmp_path / "a.caption").write_text("from caption", encoding="utf-8")
    assert read_caption(image, ".caption") == ("from caption", tmp_path / "a.caption")
    assert read_caption(image, ".txt") == ("from txt", tmp_path / "a.txt")
    (tmp_path / "a.txt").unlink()
    assert read_caption(image, ".txt") == ("from caption", tmp_path / "a.caption")
    assert read_caption(_png(tmp_path / "b.png"), ".txt") is None


def test_only_the_first_caption_line_is_used_and_bom_is_dropped(tmp_path: Path) -> None:
    image = _png(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("\ufeff\n  oue car, red  \nsecond line\n".encode())
    assert read_caption(image)[0] == "oue car, red"


def test_uncaptioned_images_use_the_folder_class_tokens(tmp_path: Path) -> None:
    folder = tmp_path / "10_oue car"
    _png(folder / "1.png")
    (folder / "1.txt").write_text("oue car, side view", encoding="utf-8")
    _png(folder / "2.png")
    warnings: list[str] = []

    items = scan_folder(tmp_path, instance_prompt="photo of something else", warn=warnings.append)

    assert [(item.caption, item.repeats) for item in items] == [("oue car, side view", 10), ("oue car", 10)]
    [warning] = warnings
    assert "2.png" in warning and "'oue car'" in warning


def test_uncaptioned_images_use_the_instance_prompt(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    _png(tmp_path / "2.png")
    (tmp_path / "2.txt").write_text("   \n", encoding="utf-8")  # empty caption file
    warnings: list[str] = []

    items = scan_folder(tmp_path, instance_prompt="photo of oue car", default_repeats=3, warn=warnings.append)

    assert [(item.caption, item.repeats) for item in items] == [("photo of oue car", 3)] * 2
    [warning] = warnings
    assert "1.png" in warning and "2.png" in warning and "photo of oue car" in warning


def test_uncaptioned_image_without_fallback_is_an_error_naming_it(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    with pytest.raises(AtelierError, match=r"1.png: it has no caption file \(expected 1.txt\)"):
        scan_folder(tmp_path)
    (tmp_path / "1.txt").write_text("", encoding="utf-8")
    with pytest.raises(AtelierError, match=r"1.png: its caption file .*1.txt is empty"):
        scan_folder(tmp_path)


def test_non_utf8_caption_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    (tmp_path / "1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(AtelierError, match=r"1.txt is not UTF-8"):
        scan_folder(tmp_path)


def test_no_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.raises(AtelierError, match="no training images found"):
        scan_folder(tmp_path)
    empty_subset = DatasetConfig(resolution=(512, 512), subsets=[SubsetConfig(image_dir=tmp_path)])
    with pytest.raises(AtelierError, match=r"no images \(.png, .jpg"):
        scan_dataset(empty_subset)
    missing = DatasetConfig(resolution=(512, 512), subsets=[SubsetConfig(image_dir=tmp_path / "nope")])
    with pytest.raises(AtelierError, match="image folder not found"):
        scan_dataset(missing)


def test_truncated_and_fake_images_are_errors_naming_the_file(tmp_path: Path) -> None:
    whole = _png(tmp_path / "whole.png", (128, 128)).read_bytes()
    (tmp_path / "whole.png").unlink()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "cut.txt").write_text("caption", encoding="utf-8")
    with pytest.raises(AtelierError, match=r"cut.png is not a readable image"):
        scan_folder(tmp_path)
    (tmp_path / "cut.png").write_bytes(b"GIF89a definitely not a png")
    with pytest.raises(AtelierError, match=r"cut.png is not a readable image"):
        scan_folder(tmp_path)


def test_images_smaller_than_the_resolution_are_named_in_a_warning(tmp_path: Path) -> None:
    _png(tmp_path / "small.png", (300, 300))
    _png(tmp_path / "big.png", (512, 704))
    for name in ("small", "big"):
        (tmp_path / f"{name}.txt").write_text("oue car", encoding="utf-8")
    warnings: list[str] = []
    scan_folder(tmp_path, resolution=(512, 512), warn=warnings.append)
    [warning] = warnings
    assert "small.png (300x300)" in warning and "big.png" not in warning and "512x512" in warning


def test_exif_rotation_is_respected(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(path, exif=exif, quality=95)

    assert image_size(path) == (40, 80)
    loaded = load_image(path)
    assert loaded.size == (40, 80)
    assert loaded.getpixel((20, 5))[2] > 200  # the stored left (blue) half is on top once displayed


def test_transparent_product_cutouts_load_on_white(tmp_path: Path) -> None:
    path = tmp_path / "cutout.png"
    image = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    image.paste((10, 200, 10, 255), (5, 5, 15, 15))
    image.save(path)
    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((10, 10)) == (10, 200, 10)


def test_process_caption_keeps_tokens_and_shuffles_the_rest() -> None:
    caption = "oue car, red, sporty, sleek, daytime, cityscape"
    rng = random.Random(0)
    results = {
        process_caption(caption, shuffle=True, keep_tokens=1, dropout_rate=0.0, rng=rng) for _ in range(30)
    }
    assert len(results) > 5
    for result in results:
        tags = result.split(", ")
        assert tags[0] == "oue car"
        assert sorted(tags) == sorted(caption.split(", "))

    same = [
        process_caption(caption, shuffle=True, keep_tokens=2, dropout_rate=0.0, rng=random.Random(7))
        for _ in "ab"
    ]
    assert same[0] == same[1]
    assert same[0].startswith("oue car, red, ")


def test_process_caption_without_shuffle_and_with_dropout() -> None:
    caption = "oue car,  red ,sporty"
    rng = random.Random(1)
    assert process_caption(caption, shuffle=False, keep_tokens=0, dropout_rate=0.0, rng=rng) == caption
    assert (
        process_caption(caption, shuffle=True, keep_tokens=3, dropout_rate=0.0, rng=rng)
        == "oue car, red, sporty"
    )
    assert process_caption(caption, shuffle=True, keep_tokens=0, dropout_rate=1.0, rng=rng) == ""
    dropped = sum(
        process_caption(caption, shuffle=False, keep_tokens=0, dropout_rate=0.25, rng=rng) == ""
        for _ in range(2000)
    )
    assert 400 < dropped < 600


def _item(name: str, caption: str, folder: str, repeats: int = 1, is_reg: bool = False) -> ImageItem:
    subset = SubsetConfig(image_dir=Path("/data") / folder, num_repeats=repeats, is_reg=is_reg)
    return ImageItem(Path("/data") / folder / name, caption, repeats, is_reg, subset, (512, 512))


def test_tag_frequency_matches_kohya_metadata_shape() -> None:
    items = [
        _item("1.png", "oue car, Red, sporty", "10_oue car", repeats=10),
        _item("2.png", "oue car, red,, sleek ", "10_oue car", repeats=10),
        _item("r.png", "car", "1_car", is_reg=True),
    ]
    assert tag_frequency(items) == {
        "10_oue car": {"oue car": 2, "red": 2, "sporty": 1, "sleek": 1},
        "1_car": {"car": 1},
    }


def test_regularization_repeats_are_balanced_like_kohya() -> None:
    train = [_item(f"{i}.png", "oue car", "10_oue car", repeats=10) for i in range(2)]
    reg = [_item(f"r{i}.png", "car", "1_car", is_reg=True) for i in range(3)]
    balanced = balance_regularization(train + reg)
    assert [item.repeats for item in balanced if item.is_reg] == [7, 7, 6]
    assert sum(item.repeats for item in balanced if item.is_reg) == 20

    many_reg = [_item(f"r{i}.png", "car", "1_car", repeats=2, is_reg=True) for i in range(15)]
    warnings: list[str] = []
    balanced = balance_regularization(train + many_reg, warn=warnings.append)
    assert [item.repeats for item in balanced if item.is_reg] == [2] * 10
    assert "5 of 15 regularization images are not used" in warnings[0]

    with pytest.raises(AtelierError, match="only regularization images"):
        balance_regularization(reg)


def test_a_folder_listed_twice_is_used_once(tmp_path: Path) -> None:
    _png(tmp_path / "1.png")
    (tmp_path / "1.txt").write_text("oue car", encoding="utf-8")
    subset = SubsetConfig(image_dir=tmp_path, num_repeats=2)
    warnings: list[str] = []
    items = scan_dataset(DatasetConfig(resolution=(64, 64), subsets=[subset, subset]), warn=warnings.append)
    assert len(items) == 1
    assert "listed twice" in warnings[0]
