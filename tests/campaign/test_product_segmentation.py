"""SAM model folders for product cut-outs: found, checked, their licences read, and the segmenter end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atelier.campaign.product import (
    MaskRefinement,
    SamSegmenter,
    list_segmentation_models,
    product_mask,
    read_segmentation_model,
    segmentation_model,
)
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from product_helpers import opaque_photo, write_tiny_sam

APACHE_NOTE = 'license = "apache-2.0"\nsource = "https://huggingface.co/facebook/sam-vit-base"\n'


@pytest.fixture(scope="module")
def models_root(tmp_path_factory) -> Path:
    """``models/segmentation/`` with a tiny SAM (licence in atelier.toml) and a tiny SAM-HQ (licence in its card)."""
    root = tmp_path_factory.mktemp("segmentation")
    write_tiny_sam(root / "sam-tiny", license_note=APACHE_NOTE)
    hq = write_tiny_sam(root / "sam-hq-tiny", kind="sam_hq", seed=1)
    (hq / "README.md").write_text(
        "---\nlicense: apache-2.0\ntags:\n- vision\n---\n# SAM-HQ\n", encoding="utf-8"
    )
    return root


@pytest.fixture(scope="module")
def segmenter(models_root) -> SamSegmenter:
    return SamSegmenter(segmentation_model(models_root, "sam-tiny"))


def test_models_are_listed_with_their_licences(models_root) -> None:
    listed = {model.name: model for model in list_segmentation_models(models_root)}
    assert set(listed) == {"sam-tiny", "sam-hq-tiny"}
    assert listed["sam-tiny"].kind == "sam"
    assert listed["sam-tiny"].license == "apache-2.0"
    assert listed["sam-tiny"].source == "https://huggingface.co/facebook/sam-vit-base"
    assert listed["sam-hq-tiny"].kind == "sam_hq"
    assert listed["sam-hq-tiny"].license == "apache-2.0"  # from the model card's front matter
    assert listed["sam-hq-tiny"].source is None


def test_a_model_without_a_licence_says_unknown(tmp_path) -> None:
    write_tiny_sam(tmp_path / "plain")
    assert read_segmentation_model(tmp_path / "plain").license == "unknown"


def test_a_licence_note_with_a_misspelt_key_is_refused(tmp_path) -> None:
    write_tiny_sam(tmp_path / "noted", license_note='licence = "mit"\n')
    with pytest.raises(AtelierError, match="did you mean 'license'") as caught:
        read_segmentation_model(tmp_path / "noted")
    assert caught.value.field == "segmentation_model"


def test_an_unknown_model_name_lists_the_known_ones(models_root) -> None:
    with pytest.raises(NotFoundError, match="did you mean 'sam-tiny'") as caught:
        segmentation_model(models_root, "sam-tiyn")
    assert caught.value.field == "segmentation_model"
    with pytest.raises(AtelierError, match="invalid"):
        segmentation_model(models_root, "../sam-tiny")


def test_a_folder_with_only_pickled_weights_is_refused(tmp_path) -> None:
    folder = write_tiny_sam(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(UnsafeFileError, match="pickle"):
        read_segmentation_model(folder)
    assert list_segmentation_models(tmp_path) == []  # left out of the listing, not crashing it


def test_models_that_need_remote_code_are_refused(tmp_path) -> None:
    folder = tmp_path / "birefnet"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "BiRefNet", "auto_map": {}}', encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(AtelierError, match="SAM") as caught:
        read_segmentation_model(folder)
    assert caught.value.field == "segmentation_model"


@pytest.mark.parametrize("name", ["sam-tiny", "sam-hq-tiny"])
def test_the_segmenter_gives_a_binary_mask_of_the_photo_size(models_root, name) -> None:
    segmenter = SamSegmenter(segmentation_model(models_root, name))
    photo, _ = opaque_photo((120, 80))
    first = segmenter.segment(photo)
    assert first.mode == "L" and first.size == (120, 80)
    pixels = np.asarray(first)
    assert pixels.dtype == np.uint8
    assert set(np.unique(pixels)) <= {0, 255}
    assert np.array_equal(pixels, np.asarray(segmenter.segment(photo)))  # deterministic


def test_an_opaque_photo_is_cut_out_by_the_segmenter_end_to_end(segmenter) -> None:
    photo, _ = opaque_photo((120, 80))
    hard = np.asarray(product_mask(photo, segmenter=segmenter, refinement=MaskRefinement(feather=0)))
    assert set(np.unique(hard)) <= {0, 255} and hard.max() == 255
    # Refined (largest part kept) it is a subset of the raw mask, and one connected part.
    raw = np.asarray(segmenter.segment(photo))
    assert np.all(hard <= raw)
    soft = np.asarray(product_mask(photo, segmenter=segmenter, refinement=MaskRefinement(feather=3)))
    assert np.array_equal(soft > 0, hard > 0)  # feathering works inward only
    assert np.count_nonzero((soft > 0) & (soft < 255)) > 0


def test_segmenting_an_rgba_photo_uses_its_colours(segmenter) -> None:
    photo, _ = opaque_photo((120, 80))
    with_alpha = photo.convert("RGBA")
    assert np.array_equal(np.asarray(segmenter.segment(with_alpha)), np.asarray(segmenter.segment(photo)))
    assert segmenter.segment(Image.new("RGB", (120, 80), (9, 9, 9))).size == (120, 80)
