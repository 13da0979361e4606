"""Light matching at the product's edge: the thin band of scene around the product, brought to the scene's light.

What it does: the pixels within ``band`` pixels outside the product (where the mask is below 255, so the product's
soft edge counts as outside) are compared with a ring of scene just beyond them (``band`` to ``3 * band`` pixels
out). Each colour channel of the band is scaled by the ring's mean over the band's mean, which matches both the
luminance and the colour temperature (a warm scene lifts red, a cool one blue). The correction is strongest at the
product's edge and fades to nothing at the band's outer edge, times ``strength``.

Why: the generator redraws the edge from a photo whose old backdrop (often a white sweep) leaves a bright or tinted
halo around the product; pulling the band toward its surroundings removes it. What it does not do: relight the
product itself. Pixels where the mask is 255 are never changed, so the product stays exact.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from atelier.engine import check_same_size
from atelier.errors import AtelierError

MAX_BAND = 64
# The band is pulled toward the scene, not repainted: a correction beyond a third either way would be a new colour.
GAIN_LIMITS = (0.75, 1.33)


def match_edge_light(
    scene: Image.Image, mask: Image.Image, *, band: int = 6, strength: float = 0.6
) -> Image.Image:
    """``scene`` with the band around the product matched to the surrounding light (see the module text)."""
    check_light(band, strength)
    check_same_size(scene, mask)
    pixels = np.asarray(scene.convert("RGB"))
    solid = np.asarray(mask.convert("L")) == 255
    if strength == 0 or not solid.any() or solid.all():
        return Image.fromarray(pixels)
    # Distance of every pixel outside the product's solid part to the nearest solid pixel.
    distance = cv2.distanceTransform((~solid).astype(np.uint8), cv2.DIST_L2, 5)
    in_band = (distance > 0) & (distance <= band)
    in_ring = (distance > band) & (distance <= 3 * band)
    if not in_band.any() or not in_ring.any():
        return Image.fromarray(pixels)
    values = pixels.astype(np.float32)
    band_mean = values[in_band].mean(axis=0)
    ring_mean = values[in_ring].mean(axis=0)
    gain = np.clip(ring_mean / np.maximum(band_mean, 1.0), *GAIN_LIMITS)
    weight = np.where(in_band, strength * (1.0 - (distance - 1.0) / band), 0.0).astype(np.float32)
    factor = 1.0 + weight[..., np.newaxis] * (gain - 1.0)
    matched = np.clip(np.round(values * factor), 0, 255).astype(np.uint8)
    return Image.fromarray(np.where(solid[..., np.newaxis], pixels, matched))


def check_light(band: int, strength: float) -> None:
    """Raise AtelierError for a band or strength out of range."""
    if isinstance(band, bool) or not isinstance(band, int) or not 1 <= band <= MAX_BAND:
        raise AtelierError(f"light band must be 1 to {MAX_BAND} pixels, got {band!r}", field="light_band")
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 <= strength <= 1.0:
        raise AtelierError(
            f"light strength must be between 0 and 1, got {strength!r}", field="light_strength"
        )
