"""Captioning models from models/captioning/: tiny random-weight BLIP and Florence-2, end to end."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from atelier.engine import Captioner, find_captioning_model, list_captioning_models
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError


@pytest.fixture
def models_dir(tmp_path, tiny_captioner):
    """A studio models folder holding the tiny BLIP as models/captioning/tiny-blip/."""
    shutil.copytree(tiny_captioner, tmp_path / "models" / "captioning" / "tiny-blip")
    return tmp_path / "models"


@pytest.fixture(scope="module")
def captioner(tiny_captioner):
    return Captioner.load(tiny_captioner, device="cpu")


def _photo(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> Image.Image:
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    return image


def test_the_model_in_the_folder_is_found_and_captions(models_dir):
    assert list_captioning_models(models_dir) == ["tiny-blip"]
    folder = find_captioning_model(models_dir)
    assert folder == models_dir / "captioning" / "tiny-blip"
    assert find_captioning_model(models_dir, "tiny-blip") == folder
    captioner = Captioner.load(folder, device="cpu")
    assert captioner.name == "tiny-blip"
    assert captioner.family.model_type == "blip"
    caption = captioner.caption(_photo((200, 30, 30)), max_new_tokens=12)
    assert isinstance(caption, str) and caption
    assert caption == caption.strip() and "[" not in caption  # special tokens are not in the text
    assert len(caption.split()) <= 12


def test_captions_are_deterministic_and_follow_the_picture(captioner):
    red, blue = _photo((200, 30, 30)), _photo((20, 40, 220), size=(48, 80))
    first = captioner.caption(red, max_new_tokens=16)
    assert captioner.caption(red, max_new_tokens=16) == first
    assert captioner.caption(red, num_beams=2, max_new_tokens=16) == captioner.caption(
        red, num_beams=2, max_new_tokens=16
    )
    assert captioner.caption(blue, max_new_tokens=16) != first
    # RGBA and greyscale pictures are captioned too (converted to RGB).
    assert captioner.caption(red.convert("L"), max_new_tokens=4)
    assert captioner.caption(red.convert("RGBA"), max_new_tokens=4)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 9}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10_000}, "max_new_tokens"),
        ({"task": "<MORE_DETAILED_CAPTION>"}, "task"),  # BLIP has no task prompt
    ],
)
def test_decoding_options_out_of_range_are_refused(captioner, options, field):
    with pytest.raises(AtelierError) as caught:
        captioner.caption(_photo((0, 0, 0)), **options)
    assert caught.value.field == field


def test_pickle_weights_are_refused(models_dir):
    folder = models_dir / "captioning" / "tiny-blip"
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(UnsafeFileError, match=r"tiny-blip: refusing pytorch_model\.bin: pickle"):
        Captioner.load(folder, device="cpu")


def test_pickle_files_beside_safetensors_are_never_read(models_dir):
    folder = models_dir / "captioning" / "tiny-blip"
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: reading it would fail")
    assert Captioner.load(folder, device="cpu").caption(_photo((1, 2, 3)), max_new_tokens=3)


def test_an_unknown_model_type_is_refused_naming_the_folder_and_the_supported_ones(models_dir):
    folder = models_dir / "captioning" / "tiny-blip"
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "git"}))
    with pytest.raises(AtelierError) as caught:
        Captioner.load(folder, device="cpu")
    message = str(caught.value)
    assert "tiny-blip" in message and "'git'" in message and "blip, florence2" in message
    assert "\n" not in message


def test_weights_of_another_architecture_are_refused(models_dir, tmp_path):
    """A folder whose weights leave layers random would caption gibberish: it is refused."""
    from safetensors.torch import load_file, save_file

    folder = models_dir / "captioning" / "tiny-blip"
    weights = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "text_decoder" not in k}, folder / "model.safetensors")
    with pytest.raises(AtelierError, match="do not match a BLIP model"):
        Captioner.load(folder, device="cpu")


def test_a_missing_model_says_where_to_put_one(tmp_path, models_dir):
    empty = tmp_path / "empty-models"
    with pytest.raises(NotFoundError) as caught:
        find_captioning_model(empty)
    message = str(caught.value)
    assert f"{empty / 'captioning'}/" in message
    assert "config.json" in message and "safetensors" in message and "blip-image-captioning" in message
    with pytest.raises(NotFoundError, match="the captioning models are tiny-blip"):
        find_captioning_model(models_dir, "blip-large")
    with pytest.raises(AtelierError, match="invalid model name"):
        find_captioning_model(models_dir, "../tiny-blip")
    with pytest.raises(NotFoundError, match="not found"):
        Captioner.load(tmp_path / "nowhere", device="cpu")


def test_a_folder_without_config_is_not_listed(models_dir):
    (models_dir / "captioning" / "notes").mkdir()
    (models_dir / "captioning" / "notes" / "readme.txt").write_text("downloading...")
    assert list_captioning_models(models_dir) == ["tiny-blip"]


def test_a_florence2_folder_captions_with_its_task_prompts(tmp_path):
    from atelier.engine.tiny import create_tiny_captioning_model

    folder = create_tiny_captioning_model(tmp_path / "captioning" / "tiny-florence", family="florence2")
    captioner = Captioner.load(folder, device="cpu")
    assert captioner.family.model_type == "florence2"
    photo = _photo((200, 30, 30))
    for task in (None, "<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>"):
        caption = captioner.caption(photo, task=task, max_new_tokens=6)
        assert isinstance(caption, str) and caption and "<" not in caption
        assert captioner.caption(photo, task=task, max_new_tokens=6) == caption
    # Florence-2's other tasks (detection, OCR) do not answer with a caption.
    with pytest.raises(AtelierError, match="choices: <CAPTION>, <DETAILED_CAPTION>") as caught:
        captioner.caption(photo, task="<OD>")
    assert caught.value.field == "task"
