"""Shadows under the product and light matching around it: the product's pixels are never touched."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from atelier.campaign.product import ShadowParams, apply_shadow, match_edge_light
from atelier.errors import AtelierError
from product_helpers import product_mask_of, product_pixels

SIZE = (128, 128)


def _scene_and_mask(*, soft: bool = False) -> tuple[Image.Image, Image.Image]:
    mask = product_mask_of(SIZE, supersample=4 if soft else 1)
    scene = Image.new("RGB", SIZE, (180, 200, 220))
    scene.paste(Image.fromarray(product_pixels(SIZE)), (0, 0), mask)
    return scene, mask


@pytest.mark.parametrize("soft", [False, True])
def test_the_shadow_falls_outside_the_product_only(soft) -> None:
    scene, mask = _scene_and_mask(soft=soft)
    shaded = np.asarray(apply_shadow(scene, mask, ShadowParams(direction=90, distance=0.1, opacity=0.6)))
    before = np.asarray(scene)
    solid = np.asarray(mask) == 255
    assert np.array_equal(shaded[solid], before[solid])  # bit for bit inside the product
    darker = shaded.astype(int).sum(-1) < before.astype(int).sum(-1)
    assert darker[~solid].any()
    assert np.array_equal(shaded[:20, :20], before[:20, :20])  # far from the product: unchanged
    assert not (shaded.astype(int) > before.astype(int)).any()  # a shadow never lightens


def test_the_drop_shadow_follows_its_direction() -> None:
    scene, mask = _scene_and_mask()
    no_contact = {"contact_opacity": 0.0, "distance": 0.15, "softness": 0.02, "opacity": 0.8}
    right = np.asarray(apply_shadow(scene, mask, ShadowParams(direction=0, **no_contact)))
    left = np.asarray(apply_shadow(scene, mask, ShadowParams(direction=180, **no_contact)))
    before = np.asarray(scene).astype(int)
    darkening_right = (before - right.astype(int)).sum(-1)
    darkening_left = (before - left.astype(int)).sum(-1)
    middle = SIZE[0] // 2
    assert darkening_right[:, middle:].sum() > 5 * darkening_right[:, :middle].sum()
    assert darkening_left[:, :middle].sum() > 5 * darkening_left[:, middle:].sum()


def test_the_contact_shadow_sits_at_the_base() -> None:
    scene, mask = _scene_and_mask()
    params = ShadowParams(opacity=0.0, contact_opacity=0.9)
    darkening = (
        np.asarray(scene).astype(int) - np.asarray(apply_shadow(scene, mask, params)).astype(int)
    ).sum(-1)
    rows = np.nonzero(darkening.sum(axis=1))[0]
    bottom = mask.getbbox()[3]  # type: ignore[index]
    assert (
        rows.size and rows.min() >= bottom - 8 and rows.max() <= bottom + 8
    )  # a thin line under the product


def test_pixel_units_and_no_shadow_at_all() -> None:
    scene, mask = _scene_and_mask()
    off = ShadowParams(opacity=0.0, contact_opacity=0.0)
    assert np.array_equal(np.asarray(apply_shadow(scene, mask, off)), np.asarray(scene))
    in_px = apply_shadow(scene, mask, ShadowParams(units="px", distance=10, softness=3))
    assert in_px.size == SIZE


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (ShadowParams(opacity=1.5), "opacity"),
        (ShadowParams(distance=2.0), "distance"),
        (ShadowParams(units="cm"), "units"),
        (ShadowParams(color=(0, 0, 300)), "color"),
        (ShadowParams(direction="down"), "direction"),  # type: ignore[arg-type]
    ],
)
def test_bad_shadow_settings_name_the_field(params, field) -> None:
    scene, mask = _scene_and_mask()
    with pytest.raises(AtelierError) as caught:
        apply_shadow(scene, mask, params)
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_light_matching_changes_only_a_band_outside_the_product() -> None:
    mask = product_mask_of(SIZE)
    # A warm scene with a bright white halo hugging the product: what a white studio sweep leaves behind.
    scene = Image.new("RGB", SIZE, (200, 150, 100))
    halo = Image.fromarray(
        np.where(np.asarray(mask.resize((140, 140)).crop((6, 6, 134, 134))) > 0, 255, 0).astype(np.uint8)
    )
    scene.paste((250, 250, 250), (0, 0), halo)
    scene.paste(Image.fromarray(product_pixels(SIZE)), (0, 0), mask)
    matched = np.asarray(match_edge_light(scene, mask, band=6, strength=1.0)).astype(int)
    before = np.asarray(scene).astype(int)
    solid = np.asarray(mask) == 255
    assert np.array_equal(matched[solid], before[solid])
    changed = (matched != before).any(-1)
    assert changed.any()
    # Only within the band: nothing changes more than 6 pixels from the product.
    distance = cv2.distanceTransform((~solid).astype(np.uint8), cv2.DIST_L2, 5)
    assert distance[changed].max() <= 6
    # The halo is pulled toward the warm scene: less blue, darker.
    halo_pixels = changed & ~solid
    assert matched[halo_pixels][:, 2].mean() < before[halo_pixels][:, 2].mean()


def test_light_matching_checks_its_settings() -> None:
    scene, mask = _scene_and_mask()
    with pytest.raises(AtelierError) as caught:
        match_edge_light(scene, mask, band=0)
    assert caught.value.field == "light_band"
    assert np.array_equal(np.asarray(match_edge_light(scene, mask, strength=0)), np.asarray(scene))
