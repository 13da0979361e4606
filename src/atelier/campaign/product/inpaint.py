"""One inpaint (or img2img) call through a batch :class:`~atelier.campaign.batch.Backend`, from product-shot settings.

The same call serves the new scene, each channel's expansion and the tiles of an upscale, in this process
(``EngineBackend``) or through a studio's A1111 API (``StudioBackend``). The request always has the init image's
own size, so a studio (which first brings the image to the request's size) keeps it pixel for pixel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from PIL import Image

from atelier.campaign.batch import Backend
from atelier.engine import GeneratedImage, GenerationRequest, resolve_sampler


@dataclass(frozen=True)
class InpaintSettings:
    """Sampling settings of the product-shot generations, in A1111's terms.

    ``denoising_strength`` 1.0 and ``inpainting_fill`` "fill": the background is all new, started from the
    product's own colours smeared outward (A1111's "fill") rather than from the photo's old backdrop, which
    inpainting checkpoints and plain ones both take well. ``seed`` -1 is random; several shots use ``seed``, ``seed + 1``, ...
    """

    steps: int = 30
    sampler: str = "DPM++ 2M"
    schedule_type: str | None = "Karras"
    cfg_scale: float = 7.0
    denoising_strength: float = 1.0
    mask_blur: int = 4
    inpainting_fill: str = "fill"
    seed: int = -1

    def check(self) -> None:
        """The request's own checks (sampler, steps, strength, fill), before there is an image to send."""
        self.request(
            Image.new("RGB", (64, 64)), prompt="", negative="", seed=self.seed, mask=Image.new("L", (64, 64))
        )

    def request(
        self,
        image: Image.Image,
        *,
        prompt: str,
        negative: str,
        seed: int,
        mask: Image.Image | None = None,
        denoising_strength: float | None = None,
    ) -> GenerationRequest:
        """The validated request: inpaint ``image`` where ``mask`` is 255, or img2img without a mask."""
        resolve_sampler(self.sampler, self.schedule_type)  # an unknown sampler fails here, before any work
        request = GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            sampler=self.sampler,
            schedule_type=self.schedule_type,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            seed=seed,
            width=image.width,
            height=image.height,
            init_image=image.convert("RGB"),
            mask=mask,
            denoising_strength=self.denoising_strength if denoising_strength is None else denoising_strength,
            mask_blur=self.mask_blur,
            inpainting_fill=self.inpainting_fill,
        )
        request.validate()
        return request


def generate(backend: Backend, request: GenerationRequest) -> GeneratedImage:
    """Run ``request`` on ``backend``; the image comes back at the request's size whatever the backend did."""
    generated = backend.generate(request)
    size = (request.width, request.height)
    if generated.image.size != size:
        # An A1111 server may round sizes its own way; the compositing that follows needs the exact frame.
        return dataclasses.replace(generated, image=generated.image.resize(size, Image.Resampling.LANCZOS))
    return generated
