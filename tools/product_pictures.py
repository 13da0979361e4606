"""Make the README's product-shot pictures: each step of the flow, on the tiny random-weight SD 1.5 model.

    .venv/bin/python tools/product_pictures.py docs/images/product-steps.png

The tiny model's scenes are coloured noise (its weights are random); the pictures show what each step does to the
frame, the product and its shadow, which is the same with real weights. Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from atelier.campaign.batch import EngineBackend
from atelier.campaign.product import (
    InpaintSettings,
    ShadowParams,
    ShotSettings,
    channel,
    product_shots,
    scene_preset,
)
from atelier.engine import Engine, create_tiny_model

TILE = 200
LABEL = 28


def bottle(size: tuple[int, int] = (160, 200)) -> Image.Image:
    """A product cut-out: a green glass bottle with a label, on transparency (what catalogs already have)."""
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.rounded_rectangle((width * 0.25, height * 0.35, width * 0.75, height * 0.97), radius=18, fill=255)
    draw.rectangle((width * 0.41, height * 0.05, width * 0.59, height * 0.4), fill=255)
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    shade = 0.55 + 0.45 * np.sin(np.pi * x)
    pixels = np.stack([40 * shade + 0 * y, 120 * shade + 30 * y, 60 * shade + 0 * y], -1)
    colours = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    ImageDraw.Draw(colours).rectangle(
        (width * 0.3, height * 0.55, width * 0.7, height * 0.75), fill=(238, 226, 200)
    )
    colours = colours.convert("RGBA")
    colours.putalpha(mask)
    return colours


def checkerboard(size: tuple[int, int], cell: int = 10) -> Image.Image:
    board = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(board)
    for top in range(0, size[1], cell):
        for left in range(0, size[0], cell):
            if (top // cell + left // cell) % 2:
                draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill=(222, 222, 222))
    return board


def tile(picture: Image.Image, label: str) -> Image.Image:
    from PIL import ImageFont

    from atelier.campaign.text import FONTS_DIR

    framed = Image.new("RGB", (TILE, TILE + LABEL), (255, 255, 255))
    shown = picture.copy()
    shown.thumbnail((TILE, TILE))
    if shown.mode == "RGBA":
        backing = checkerboard(shown.size)
        backing.paste(shown, (0, 0), shown)
        shown = backing
    framed.paste(shown, ((TILE - shown.width) // 2, (TILE - shown.height) // 2))
    font = ImageFont.truetype(str(FONTS_DIR / "Roboto-Regular.ttf"), 15)
    ImageDraw.Draw(framed).text(
        (TILE // 2, TILE + LABEL // 2), label, fill=(30, 30, 30), font=font, anchor="mm"
    )
    return framed


def main(out: Path) -> None:
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        model = create_tiny_model("sd15", Path(folder) / "tiny")
        backend = EngineBackend(Engine(device="cpu"), model)
        photo = bottle()
        settings = ShotSettings(
            size=(256, 256),
            shadow=ShadowParams(direction=60, opacity=0.5),
            inpaint=InpaintSettings(steps=4, seed=7),
        )
        shots = product_shots(
            photo,
            backend,
            scene_preset("marble"),
            product="a green glass bottle",
            settings=settings,
            channels=(channel("story"),),
            upscale_by=2,
        )
    steps = [
        tile(photo, "1. your photo (cut-out)"),
        tile(shots.mask.convert("RGB"), "2. the product's mask"),
        tile(shots.shots[0].image, "3. scene + shadow"),
        tile(shots.channels["story"][0].image, "4. expanded to story"),
        tile(shots.upscaled[0].image, "5. upscaled 2x"),
    ]
    sheet = Image.new("RGB", (TILE * len(steps), TILE + LABEL), (255, 255, 255))
    for index, step in enumerate(steps):
        sheet.paste(step, (index * TILE, 0))
    sheet.save(out, optimize=True)
    print(out)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images/product-steps.png"))
