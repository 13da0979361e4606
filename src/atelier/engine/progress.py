"""Counting denoising steps across batches and passes, live previews, and stopping when asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from atelier.engine.conditioning import Conditioning
from atelier.engine.previews import PreviewDecoder

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
# (picture, steps done, steps in all): a live preview of the first image of the batch.
PreviewCallback = Callable[[Image.Image, int, int], None]


class GenerationCanceled(Exception):
    """Raised inside the denoising loop when the caller asked to stop.

    ``partial`` holds the batch's pictures decoded at the stopping step, and ``result`` (set by the engine) a
    :class:`~atelier.engine.generate.GenerationResult` with the finished batches and those pictures: what A1111's
    interrupt returns. A caller that cancels simply ignores them.
    """

    def __init__(self, partial: list[Image.Image] | None = None) -> None:
        super().__init__("the generation was stopped")
        self.partial = partial or []
        self.result: Any = None


def decode_partial(pipeline: Any, latents: Any) -> list[Image.Image]:
    """The pictures the latents show now, decoded by the pipeline's own VAE (at a stop, so rarely)."""
    import torch

    vae = pipeline.vae
    try:
        with torch.no_grad():
            scaled = latents.to(vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(scaled, return_dict=False)[0]
        return list(pipeline.image_processor.postprocess(pixels, output_type="pil"))
    except Exception:  # a stop must never fail because its picture could not be made
        return []


class StepProgress:
    """Counts denoising steps across batches and stages; raises GenerationCanceled when asked to stop."""

    def __init__(
        self, on_step: StepCallback | None, should_cancel: CancelCheck | None, *, total: int
    ) -> None:
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.total = total
        self.done = 0
        self.previews: tuple[PreviewDecoder, PreviewCallback, int] | None = None

    @property
    def tensor_inputs(self) -> list[str]:
        """What the pipeline hands the callback: the latents, for previews and for the picture at a stop."""
        return ["latents"]

    def callback(self, conditioning: Conditioning) -> Callable[..., dict[str, Any]]:
        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.done = min(self.total, self.done + 1)
            if self.on_step is not None:
                self.on_step(self.done, self.total)
            if self.previews is not None and "latents" in tensors:
                decode, on_preview, every = self.previews
                # No preview of the last step: the finished image follows at once.
                if self.done % every == 0 and self.done < self.total:
                    on_preview(decode(tensors["latents"]), self.done, self.total)
            if self.should_cancel is not None and self.should_cancel():
                latents = tensors.get("latents")
                raise GenerationCanceled(decode_partial(pipeline, latents) if latents is not None else None)
            conditioning.step_done(step)
            return {}

        return on_step_end
