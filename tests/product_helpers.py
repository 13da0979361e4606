"""Material for the product-shot tests: product photos with known masks, and tiny SAM models of the real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TINY_SAM_IMAGE_SIZE = 64


def product_pixels(size: tuple[int, int], seed: int = 3) -> np.ndarray:
    """A busy texture (gradients and noise), so an exact copy and a near one can be told apart."""
    width, height = size
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    pixels = np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x * 7 + y * 3) % 256], -1
    )
    return np.clip(pixels * 0.8 + noise, 0, 255).astype(np.uint8)


def product_mask_of(size: tuple[int, int], *, supersample: int = 1) -> Image.Image:
    """A bottle-like shape in the middle of ``size``: a rounded body and a neck (255 = product).

    With ``supersample`` the shape is drawn that many times larger and reduced: an anti-aliased outline.
    """
    if supersample > 1:
        large = product_mask_of((size[0] * supersample, size[1] * supersample))
        return large.resize(size, Image.Resampling.BOX)
    width, height = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    draw.rounded_rectangle(
        (width * 0.3, height * 0.35, width * 0.7, height * 0.9), radius=max(2, width // 12), fill=255
    )
    draw.rectangle((width * 0.43, height * 0.12, width * 0.57, height * 0.4), fill=255)
    return mask


def opaque_photo(size: tuple[int, int] = (96, 80)) -> tuple[Image.Image, Image.Image]:
    """A product on a flat light backdrop, opaque (needs a segmenter), and its true mask."""
    mask = product_mask_of(size)
    backdrop = Image.new("RGB", size, (236, 234, 230))
    backdrop.paste(Image.fromarray(product_pixels(size)), (0, 0), mask)
    return backdrop, mask


def cutout_photo(
    size: tuple[int, int] = (96, 80), *, soft_edge: bool = True
) -> tuple[Image.Image, Image.Image]:
    """A transparent PNG cut-out (RGBA) and its alpha; with ``soft_edge`` the outline is anti-aliased."""
    # Anti-aliased, as retouchers' cut-outs are: a one-pixel soft rim around the solid body.
    mask = product_mask_of(size, supersample=4 if soft_edge else 1)
    photo = Image.fromarray(product_pixels(size)).convert("RGBA")
    photo.putalpha(mask)
    return photo, mask


def write_tiny_sam(
    folder: Path, *, kind: str = "sam", seed: int = 0, license_note: str | None = None
) -> Path:
    """A SAM (or SAM-HQ) model with the real architecture shrunk, saved as transformers saves the real ones."""
    import torch
    import transformers

    vision = {
        "hidden_size": 32,
        "output_channels": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_SAM_IMAGE_SIZE,
        "patch_size": 8,
        "window_size": 4,
        "global_attn_indexes": [1],
        "num_pos_feats": 8,
        "mlp_dim": 64,
    }
    prompt = {"hidden_size": 16, "image_size": TINY_SAM_IMAGE_SIZE, "patch_size": 8, "mask_input_channels": 4}
    decoder = {
        "hidden_size": 16,
        "mlp_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 16,
    }
    if kind == "sam_hq":
        decoder["vit_dim"] = vision["hidden_size"]
        config = transformers.SamHQConfig(
            vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
        )
        model_class = transformers.SamHQModel
    else:
        config = transformers.SamConfig(
            vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
        )
        model_class = transformers.SamModel
    torch.manual_seed(seed)
    model = model_class(config).eval()
    processor = transformers.SamImageProcessorPil(
        size={"longest_edge": TINY_SAM_IMAGE_SIZE},
        pad_size={"height": TINY_SAM_IMAGE_SIZE, "width": TINY_SAM_IMAGE_SIZE},
    )
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    processor.save_pretrained(str(folder))
    if license_note is not None:
        (folder / "atelier.toml").write_text(license_note, encoding="utf-8")
    return folder
