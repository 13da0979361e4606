"""Seamless tiling, as A1111's "Tiling" option does it: circular padding in every convolution of the UNet and VAE.

With each convolution wrapping around the picture's edges instead of padding them with zeros, the left edge
continues the right one and the top the bottom: the image repeats without a seam, which is what fabric patterns,
wallpapers and product backgrounds need.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def seamless(pipelines: Iterable[Any]) -> Iterator[None]:
    """Circular padding in the UNet and VAE convolutions of ``pipelines`` while the block runs, then back."""
    import torch

    changed: list[tuple[torch.nn.Conv2d, Any]] = []
    seen: set[int] = set()
    try:
        for pipeline in pipelines:
            for component in (getattr(pipeline, "unet", None), getattr(pipeline, "vae", None)):
                if component is None or id(component) in seen:
                    continue
                seen.add(id(component))
                for layer in component.modules():
                    if isinstance(layer, torch.nn.Conv2d):
                        changed.append((layer, layer.padding_mode))
                        layer.padding_mode = "circular"
        yield
    finally:
        for layer, mode in changed:
            layer.padding_mode = mode
