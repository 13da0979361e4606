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
    """Raised inside the denoising loop when the caller asked to stop."""


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
        """What the pipeline hands the callback: the latents only when a preview is wanted."""
        return ["latents"] if self.previews is not None else []

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
                raise GenerationCanceled()
            conditioning.step_done(step)
            return {}

        return on_step_end
