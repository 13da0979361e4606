"""Shared material for the campaign tests: an ad spec folder with generated pictures and a logo."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

AD_SPEC = """
materials = ["forest.png", "model.png", "rain.png"]
headline = "Rain-ready. Trail-ready."
body = "The Aurora windbreaker sheds a downpour and packs into its own pocket."
cta = "Shop the collection"
logo = "logo.png"
channels = ["square", "portrait", "story", "banner", "640x480"]
template = "hero"

[brand]
primary = "#F2C230"
secondary = "#2F4F3A"
text = "#FFFFFF"
background = "#12201A"

[animation]
seconds_per_material = 1.0
gif_max_side = 240
"""


def make_material(path: Path, color: tuple[int, int, int], stripes: int) -> None:
    """A picture with a gradient and stripes, so crops, fades and quantising have something to show."""
    ramp = np.linspace(0.55, 1.0, 240)[:, None, None]
    pixels = np.clip(np.array(color)[None, None, :] * ramp * np.ones((240, 320, 1)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for index in range(stripes):
        draw.rectangle((index * 320 // stripes, 0, index * 320 // stripes + 8, 240), fill=(20, 30, 25))
    image.save(path)


def write_spec_folder(folder: Path, spec_text: str = AD_SPEC) -> Path:
    """A folder with three materials, a logo and an ad spec (``ad.toml``, returned)."""
    folder.mkdir(parents=True, exist_ok=True)
    make_material(folder / "forest.png", (60, 120, 80), 9)
    make_material(folder / "model.png", (240, 196, 32), 2)
    make_material(folder / "rain.png", (200, 170, 40), 15)
    logo = Image.new("RGBA", (300, 80), (0, 0, 0, 0))
    ImageDraw.Draw(logo).polygon([(5, 75), (40, 5), (75, 75)], fill=(242, 194, 48, 255))
    logo.save(folder / "logo.png")
    spec_path = folder / "ad.toml"
    spec_path.write_text(spec_text)
    return spec_path


@pytest.fixture(scope="session")
def ad_spec_text() -> str:
    """The spec: three materials, all five test channels, the hero template and a brand palette."""
    return AD_SPEC


@pytest.fixture(scope="session")
def spec_folder() -> Callable[..., Path]:
    """``spec_folder(folder, spec_text=AD_SPEC)`` writes a spec folder and returns the spec's path."""
    return write_spec_folder
