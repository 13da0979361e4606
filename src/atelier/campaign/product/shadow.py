"""Shadows that ground a product in its new scene, rendered from the product's mask and laid under it.

Two shadows, set like the commercial tools set them:

- a **drop shadow**: the product's silhouette moved ``distance`` in ``direction``, blurred by ``softness`` and
  darkened by ``opacity``: the shadow a light from the other side casts onto the backdrop;
- a **contact shadow**: a flat, blurred ellipse under the product's base, where it touches the surface (the dark
  line that keeps a product from floating).

``direction`` is where the shadow falls, in degrees on the picture: 0 to the right, 90 down, 180 to the left,
270 up (a scene preset's light comes from the opposite side). ``distance`` and ``softness`` are fractions of the
product's height by default (``units = "fraction"``), so a preset looks the same at every size; with
``units = "px"`` they are pixels.

The shadow darkens the scene *under* the product: it is weighted by ``1 - mask / 255``, so wherever the mask is
255 the pixels are returned untouched (bit for bit), and the product's soft edge is shaded only as far as the
backdrop shows through it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from atelier.engine import check_same_size
from atelier.errors import AtelierError

SHADOW_UNITS = ("fraction", "px")
MAX_SHADOW_PX = 4096.0
# The contact shadow spans the product's base a little wider than the base itself, like a real one.
CONTACT_WIDTH = 1.08
# The base is the lowest part of the silhouette: this fraction of the product's height.
BASE_BAND = 0.08


@dataclass(frozen=True)
class ShadowParams:
    """A drop shadow and a contact shadow; an opacity of 0 turns either off. ``direction`` None: straight down."""

    direction: float | None = None
    distance: float = 0.03
    softness: float = 0.04
    opacity: float = 0.35
    contact_opacity: float = 0.55
    contact_softness: float = 0.015
    contact_height: float = 0.025
    units: str = "fraction"
    color: tuple[int, int, int] = (0, 0, 0)

    def check(self) -> None:
        """Raise AtelierError naming the first bad setting."""
        if self.units not in SHADOW_UNITS:
            raise AtelierError(
                f"shadow units must be one of {', '.join(SHADOW_UNITS)}, got {self.units!r}", field="units"
            )
        if self.direction is not None:
            _number("direction", self.direction, -360.0, 360.0)
        top = 1.0 if self.units == "fraction" else MAX_SHADOW_PX
        for name in ("distance", "softness", "contact_softness", "contact_height"):
            _number(name, getattr(self, name), 0.0, top)
        for name in ("opacity", "contact_opacity"):
            _number(name, getattr(self, name), 0.0, 1.0)
        if len(self.color) != 3 or any(not isinstance(c, int) or not 0 <= c <= 255 for c in self.color):
            raise AtelierError(
                f"shadow color must be three values from 0 to 255, got {self.color!r}", field="color"
            )

    def length(self, value: float, product_height: int) -> float:
        """A distance or softness in pixels for a product ``product_height`` pixels tall."""
        return value * product_height if self.units == "fraction" else value


def apply_shadow(scene: Image.Image, mask: Image.Image, params: ShadowParams) -> Image.Image:
    """``scene`` (``RGB``) darkened by the product's shadows; pixels where ``mask`` is 255 are left as they are."""
    params.check()
    check_same_size(scene, mask)
    product = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    extent = mask.convert("L").getbbox()
    pixels = np.asarray(scene.convert("RGB"))
    if extent is None:
        return Image.fromarray(pixels)
    product_height = extent[3] - extent[1]
    drop = _drop_shadow(product, params, product_height) * params.opacity
    contact = _contact_shadow(product, extent, params, product_height) * params.contact_opacity
    # Two shadows over each other darken as two layers would, never past black.
    darkness = 1.0 - (1.0 - drop) * (1.0 - contact)
    # Under the product: only as much shadow as the backdrop shows through the mask.
    darkness *= 1.0 - product
    shade = darkness[..., np.newaxis]
    colour = np.asarray(params.color, dtype=np.float32)
    shaded = np.round(pixels * (1.0 - shade) + colour * shade).astype(np.uint8)
    # Bit for bit where the product is: the float round trip above must not be trusted with that.
    solid = np.asarray(mask.convert("L")) == 255
    return Image.fromarray(np.where(solid[..., np.newaxis], pixels, shaded))


def _drop_shadow(product: np.ndarray, params: ShadowParams, product_height: int) -> np.ndarray:
    if params.opacity == 0:
        return np.zeros_like(product)
    angle = math.radians(90.0 if params.direction is None else params.direction)
    distance = params.length(params.distance, product_height)
    shift = np.array([[1, 0, distance * math.cos(angle)], [0, 1, distance * math.sin(angle)]], np.float32)
    height, width = product.shape
    moved = cv2.warpAffine(product, shift, (width, height), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return _blurred(moved, params.length(params.softness, product_height))


def _contact_shadow(
    product: np.ndarray, extent: tuple[int, int, int, int], params: ShadowParams, product_height: int
) -> np.ndarray:
    if params.contact_opacity == 0:
        return np.zeros_like(product)
    left, top, right, bottom = extent
    # The base: how wide the silhouette is in its lowest rows.
    band_top = max(top, bottom - max(1, round(product_height * BASE_BAND)))
    columns = np.nonzero(product[band_top:bottom, left:right].max(axis=0) > 0.5)[0]
    if columns.size == 0:
        columns = np.arange(right - left)
    base_left, base_right = left + int(columns[0]), left + int(columns[-1]) + 1
    centre = ((base_left + base_right) / 2.0, float(bottom))
    half_width = max(1.0, (base_right - base_left) / 2.0 * CONTACT_WIDTH)
    half_height = max(1.0, params.length(params.contact_height, product_height))
    ellipse = np.zeros(product.shape, np.uint8)  # anti-aliased drawing needs 8-bit pixels
    # Drawn at 16x sub-pixel precision (cv2's shift), so a small ellipse is round, not a few stair steps.
    precision = 4
    cv2.ellipse(
        ellipse,
        (round(centre[0] * 2**precision), round(centre[1] * 2**precision)),
        (round(half_width * 2**precision), round(half_height * 2**precision)),
        0.0,
        0.0,
        360.0,
        255,
        thickness=-1,
        lineType=cv2.LINE_AA,
        shift=precision,
    )
    return _blurred(
        ellipse.astype(np.float32) / 255.0, params.length(params.contact_softness, product_height)
    )


def _blurred(layer: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return layer
    return cv2.GaussianBlur(layer, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_CONSTANT)


def _number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AtelierError(f"shadow {name} must be a number, got {value!r}", field=name)
    if not low <= value <= high:
        raise AtelierError(f"shadow {name} must be between {low:g} and {high:g}, got {value}", field=name)
