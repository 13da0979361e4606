"""Product shots end to end on a tiny SD 1.5 model: the product's pixels are exact in every output."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from atelier.campaign.ad.spec import Channel
from atelier.campaign.batch import EngineBackend
from atelier.campaign.product import (
    InpaintSettings,
    MaskRefinement,
    ProductShot,
    SamSegmenter,
    ShadowParams,
    ShotSettings,
    TileRefinement,
    channel,
    cut_out,
    expand_image,
    product_mask,
    product_shots,
    read_segmentation_model,
    scene_preset,
    shoot,
)
from atelier.engine import GeneratedImage, GenerationRequest
from atelier.errors import AtelierError
from product_helpers import cutout_photo, opaque_photo, write_tiny_sam

FAST = InpaintSettings(steps=2, sampler="Euler a", schedule_type=None, seed=11)
SETTINGS = ShotSettings(size=(96, 96), count=2, inpaint=FAST, shadow=ShadowParams(opacity=0.5))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def backend(engine, tiny_models) -> EngineBackend:
    return EngineBackend(engine, tiny_models("sd15"))


@pytest.fixture(scope="module")
def photo() -> tuple[Image.Image, Image.Image]:
    return cutout_photo((90, 72))


@pytest.fixture(scope="module")
def flow(backend, photo):
    """Two shots, each in two channels, each upscaled 2x with a tiled refinement: ten outputs."""
    return product_shots(
        photo[0],
        backend,
        scene_preset("marble"),
        product="a bottle",
        settings=SETTINGS,
        channels=(channel("128x64"), Channel("tall", 64, 112)),
        upscale_by=2.0,
        tile_refinement=TileRefinement(strength=0.5, tile=64, overlap=16),
    )


def assert_product_exact(
    output: ProductShot, photo: Image.Image, alpha: Image.Image, *, solid_share: float = 0.3
) -> None:
    """Where the output's mask is 255 its pixels are the photo's, resized once to the product's box."""
    extent = alpha.getbbox()
    assert extent is not None
    left, top, right, bottom = output.box
    size = (right - left, bottom - top)
    expected_pixels = np.asarray(photo.convert("RGB").crop(extent).resize(size, Image.Resampling.LANCZOS))
    expected_mask = np.asarray(alpha.crop(extent).resize(size, Image.Resampling.BILINEAR))
    mask = np.asarray(output.mask)
    assert mask.shape == (output.image.height, output.image.width)
    assert np.array_equal(mask[top:bottom, left:right], expected_mask)
    assert mask.sum() == expected_mask.sum()  # nothing outside the box
    solid = expected_mask == 255
    assert solid.sum() > solid_share * solid.size
    pixels = np.asarray(output.image.convert("RGB"))[top:bottom, left:right]
    assert np.array_equal(pixels[solid], expected_pixels[solid])


def every_output(flow) -> list[ProductShot]:
    return [*flow.shots, *(shot for shots in flow.channels.values() for shot in shots), *flow.upscaled]


def test_every_output_keeps_the_product_exact(flow, photo) -> None:
    outputs = every_output(flow)
    assert len(outputs) == 2 + 2 * 2 + 2
    for output in outputs:
        assert_product_exact(output, *photo)


def test_the_outputs_have_their_sizes_and_seeds(flow) -> None:
    assert [shot.image.size for shot in flow.shots] == [(96, 96), (96, 96)]
    assert [shot.seed for shot in flow.shots] == [11, 12]
    assert [shot.image.size for shot in flow.channels["128x64"]] == [(128, 64), (128, 64)]
    assert [shot.image.size for shot in flow.channels["tall"]] == [(64, 112), (64, 112)]
    assert [shot.image.size for shot in flow.upscaled] == [(192, 192), (192, 192)]
    assert "Steps: 2" in flow.shots[0].infotext
    assert flow.mask.size == (90, 72)


def test_the_scene_around_the_product_is_new(flow) -> None:
    shot = flow.shots[0]
    outside = np.asarray(shot.mask) == 0
    pixels = np.asarray(shot.image).astype(int)
    assert np.abs(pixels[outside] - 127).mean() > 3  # not the grey canvas the generator was given
    assert not np.array_equal(np.asarray(flow.shots[0].image), np.asarray(flow.shots[1].image))


def test_notes_say_whether_the_photo_had_enough_pixels(flow) -> None:
    # The photo's product is 57 px tall: 62 px in the 96 px shot, 41 px in the 64 px tall banner.
    assert "enlarged 1.1" in flow.shots[0].note
    assert "reduced" in flow.channels["128x64"][0].note and "full detail" in flow.channels["128x64"][0].note
    assert "enlarged" in flow.upscaled[0].note and "larger photo" in flow.upscaled[0].note


def test_the_shadow_darkens_only_outside_the_product(backend, photo) -> None:
    cutout = cut_out(photo[0], product_mask(photo[0]))
    scene = scene_preset("studio")
    plain = dataclasses.replace(SETTINGS, count=1, shadow=None, light_strength=0.0)
    shaded = dataclasses.replace(plain, shadow=ShadowParams(opacity=0.8, contact_opacity=0.8))
    without = shoot(cutout, backend, scene, settings=plain)[0]
    with_shadow = shoot(cutout, backend, scene, settings=shaded)[0]
    before, after = np.asarray(without.image).astype(int), np.asarray(with_shadow.image).astype(int)
    solid = np.asarray(without.mask) == 255
    assert np.array_equal(before[solid], after[solid])
    assert (after.sum(-1) < before.sum(-1))[~solid].any()
    assert not (after > before).any()


def test_a_photo_without_transparency_is_cut_out_by_sam(backend, tmp_path) -> None:
    segmenter = SamSegmenter(read_segmentation_model(write_tiny_sam(tmp_path / "sam")))
    photo, _ = opaque_photo((80, 64))
    result = product_shots(
        photo,
        backend,
        scene_preset("beach"),
        segmenter=segmenter,
        refinement=MaskRefinement(feather=0),
        settings=dataclasses.replace(SETTINGS, count=1),
    )
    # Random weights find some part of the photo; whatever it is, it is laid back exactly.
    assert_product_exact(result.shots[0], photo, result.mask, solid_share=0.01)


@pytest.mark.parametrize("arch", ["sd15-inpaint", "sdxl"])
def test_inpainting_and_sdxl_checkpoints_keep_the_product_exact(engine, tiny_models, photo, arch) -> None:
    backend = EngineBackend(engine, tiny_models(arch))
    cutout = cut_out(photo[0], product_mask(photo[0]))
    settings = dataclasses.replace(SETTINGS, size=(64, 64), count=1)
    shot = shoot(cutout, backend, scene_preset("kitchen"), settings=settings)[0]
    assert_product_exact(shot, *photo)
    assert f"Model hash: {backend.model_hash}" in shot.infotext  # made by that checkpoint


class NoiseBackend:
    """A generator that paints noise everywhere, over the product too, at a size of its own choosing."""

    model_name = "noise"
    model_hash = "0" * 10

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        rng = np.random.default_rng(request.seed)
        size = (request.width // 2, request.height // 2)
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        return GeneratedImage(image=image, seed=request.seed, infotext="", params={})


def test_the_product_is_exact_whatever_the_generator_returns(photo) -> None:
    result = product_shots(
        photo[0],
        NoiseBackend(),
        scene_preset("forest"),
        settings=dataclasses.replace(SETTINGS, size=(200, 136), count=1),
        channels=(channel("story"),),
        upscale_by=3.0,
    )
    for output in every_output(result):
        assert_product_exact(output, *photo)
    assert result.channels["story"][0].image.size == (1080, 1920)


def test_expand_as_a_step_of_its_own_keeps_the_original(backend) -> None:
    original = Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    expanded = expand_image(original, (128, 64), backend, prompt="a sunny beach", settings=FAST, feather=8)
    assert expanded.image.size == (128, 64) and expanded.seed == 11
    left, top, right, bottom = expanded.placement.box
    assert np.array_equal(np.asarray(expanded.image)[top:bottom, left:right], np.asarray(original))
    same = expand_image(original, (96, 96), backend, prompt="x", settings=FAST)
    assert same.seed is None and same.image.size == (96, 96)  # same shape: resized, nothing generated


@pytest.mark.parametrize(
    ("settings", "upscale_by", "field"),
    [
        (dataclasses.replace(SETTINGS, size=(100, 96)), None, "width"),
        (dataclasses.replace(SETTINGS, size=(96, 8192)), None, "height"),
        (dataclasses.replace(SETTINGS, count=0), None, "count"),
        (dataclasses.replace(SETTINGS, product_fraction=2.0), None, "product_fraction"),
        (dataclasses.replace(SETTINGS, inpaint=dataclasses.replace(FAST, sampler="Eulr")), None, "sampler"),
        (SETTINGS, 20.0, "scale"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(photo, settings, upscale_by, field) -> None:
    with pytest.raises(AtelierError) as caught:
        product_shots(
            photo[0], NoiseBackend(), scene_preset("studio"), settings=settings, upscale_by=upscale_by
        )
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_a_photo_with_nothing_to_cut_out_is_refused() -> None:
    opaque, _ = opaque_photo()
    with pytest.raises(AtelierError, match="models/segmentation/"):
        product_shots(opaque, NoiseBackend(), scene_preset("studio"), settings=SETTINGS)
    empty = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    with pytest.raises(AtelierError, match="no product found in the photo"):
        product_shots(empty, NoiseBackend(), scene_preset("studio"), settings=SETTINGS)
