"""The generation engine: txt2img, img2img, inpainting and SDXL base -> refiner, on diffusers' own pipelines.

Atelier does not fork diffusers' denoising loops. It prepares what they take (prompt embeddings, a scheduler built
from the A1111 sampler name, per-image generators, inpainting inputs), calls the stock pipeline, and post-processes
(paste-back over the original photo, infotext). A diffusers user with the same settings gets the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from atelier import __version__
from atelier.engine import masks
from atelier.engine.architectures import SDXL_ARCHITECTURES
from atelier.engine.conditioning import Conditioning, PromptEncoder, build_conditioning
from atelier.engine.infotext import format_infotext
from atelier.engine.loras import AppliedLora, LoraLibrary, apply_loras
from atelier.engine.models import LoadedModel, ModelCache
from atelier.engine.request import GenerationRequest
from atelier.engine.samplers import make_scheduler, resolve_sampler
from atelier.errors import AtelierError
from atelier.prompts.parser import parse_prompt, strip_comments

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class GenerationCanceled(Exception):
    """Raised inside the denoising loop when the caller asked to stop."""


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    params: dict[str, Any]


@dataclass
class GenerationResult:
    images: list[GeneratedImage] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [item.seed for item in self.images]

    @property
    def infotexts(self) -> list[str]:
        return [item.infotext for item in self.images]


_PIPELINES = {
    # (family, mode) -> diffusers pipeline class name
    ("sd15", "txt2img"): "StableDiffusionPipeline",
    ("sd15", "img2img"): "StableDiffusionImg2ImgPipeline",
    ("sd15", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLInpaintPipeline",
}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> torch.dtype:
    # Half precision only where it is fast and well supported; CPU stays in fp32.
    return torch.float16 if device.startswith("cuda") else torch.float32


class Engine:
    """Generates images. Holds a warm model cache; no other state is shared between requests."""

    def __init__(
        self,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        models: ModelCache | None = None,
        loras: LoraLibrary | None = None,
    ) -> None:
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.models = models or ModelCache()
        self.loras = loras

    def load(self, model_path: str | os.PathLike[str]) -> LoadedModel:
        return self.models.get(model_path, device=self.device, dtype=self.dtype)

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """Run a request: ``batch_count`` batches of ``batch_size`` images; image i uses seed s+i."""
        request.validate()
        if not request.model:
            raise AtelierError("no model given", field="model")
        sampler, schedule_type = resolve_sampler(request.sampler, request.schedule_type)
        prompt = _PromptTexts.parse(request, self.loras)
        model = self.load(request.model)
        refiner = self._load_refiner(request, model)
        apply_loras(model.pipeline, model.loaded_loras, prompt.loras)
        first_seed = request.resolved_seed()
        total_images = request.batch_size * request.batch_count
        progress = _Progress(
            on_step, should_cancel, total=self._steps_per_batch(request) * request.batch_count
        )
        run = _Run(request, prompt, model, refiner, sampler, schedule_type, progress)
        result = GenerationResult()
        for batch_index in range(request.batch_count):
            seeds = [first_seed + batch_index * request.batch_size + i for i in range(request.batch_size)]
            images = self._run_batch(run, seeds)
            for image, seed in zip(images, seeds, strict=True):
                params = self._infotext_params(run, seed, image)
                infotext = format_infotext(request.prompt, request.negative_prompt, params)
                result.images.append(GeneratedImage(image=image, seed=seed, infotext=infotext, params=params))
        assert len(result.images) == total_images
        return result

    # -- one batch -------------------------------------------------------------------------------------------

    def _run_batch(self, run: _Run, seeds: list[int]) -> list[Image.Image]:
        request, model = run.request, run.model
        family = "sdxl" if model.architecture in SDXL_ARCHITECTURES else "sd15"
        if model.architecture == "sdxl-refiner" and request.mode == "txt2img":
            raise AtelierError(
                "an SDXL refiner cannot generate from text alone; use it as --refiner", field="model"
            )
        if model.architecture == "sd15-inpaint" and request.mode != "inpaint":
            # A 9-channel UNet needs mask inputs; A1111 feeds it an all-white mask for txt2img/img2img.
            return self._run_inpaint(run, seeds, full_mask=True)
        if request.mode == "inpaint":
            return self._run_inpaint(run, seeds)
        pipeline = model.variant(_PIPELINES[(family, request.mode)])
        kwargs: dict[str, Any] = {"width": request.width, "height": request.height}
        if request.mode == "img2img":
            init = request.init_image.convert("RGB").resize((request.width, request.height), Image.LANCZOS)
            kwargs = {"image": init, "strength": request.denoising_strength}
        return self._call(pipeline, run, seeds, kwargs)

    def _run_inpaint(self, run: _Run, seeds: list[int], *, full_mask: bool = False) -> list[Image.Image]:
        request, model = run.request, run.model
        family = "sdxl" if model.architecture in SDXL_ARCHITECTURES else "sd15"
        pipeline = model.variant(_PIPELINES[(family, "inpaint")])
        if full_mask:
            size = (request.width, request.height)
            original = (
                request.init_image.convert("RGB").resize(size, Image.LANCZOS)
                if request.init_image is not None
                else Image.new("RGB", size, (127, 127, 127))
            )
            mask = Image.new("L", size, 255)
            strength = request.denoising_strength if request.init_image is not None else 1.0
            kwargs = {"image": original, "mask_image": mask, "strength": strength, **_size(request)}
            return self._call(pipeline, run, seeds, kwargs)

        original = request.init_image.convert("RGB")
        mask = masks.prepare_mask(request.mask, original.size, request.mask_blur, invert=request.mask_invert)
        if request.inpaint_only_masked:
            region = masks.get_crop_region(mask, request.inpaint_padding)
            region = masks.expand_crop_region(region, request.width, request.height, *original.size)
            work_image = original.crop(region).resize((request.width, request.height), Image.LANCZOS)
            work_mask = mask.crop(region).resize((request.width, request.height), Image.LANCZOS)
        else:
            region = None
            work_image = original.resize((request.width, request.height), Image.LANCZOS)
            work_mask = mask.resize((request.width, request.height), Image.LANCZOS)
        if request.inpainting_fill == "fill":
            work_image = masks.fill_masked(work_image, work_mask)
        kwargs: dict[str, Any] = {
            "image": work_image,
            "mask_image": work_mask,
            "strength": request.denoising_strength,
            **_size(request),
        }
        if request.inpainting_fill in ("latent noise", "latent nothing"):
            kwargs.update(self._latent_fill_inputs(pipeline, work_image, work_mask, request, seeds))
        generated = self._call(pipeline, run, seeds, kwargs)
        results = []
        for image in generated:
            if region is not None:
                x0, y0, x1, y1 = region
                pasted = original.copy()
                pasted.paste(image.resize((x1 - x0, y1 - y0), Image.LANCZOS), (x0, y0))
                image = pasted
            else:
                image = image.resize(original.size, Image.LANCZOS)
            # Outside the blurred mask the customer's photo comes back untouched, pixel for pixel.
            results.append(masks.composite_over_original(original, image, mask))
        return results

    def _latent_fill_inputs(
        self,
        pipeline: Any,
        image: Image.Image,
        mask: Image.Image,
        request: GenerationRequest,
        seeds: list[int],
    ) -> dict[str, Any]:
        """A1111's "latent noise" / "latent nothing": replace the masked latents before sampling starts."""
        device, dtype = pipeline.unet.device, pipeline.unet.dtype
        pixels = pipeline.image_processor.preprocess(image, height=request.height, width=request.width)
        pixels = pixels.to(device=device, dtype=pipeline.vae.dtype)
        latents = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
        latent_size = (latents.shape[-1], latents.shape[-2])
        masked = np.asarray(mask.resize(latent_size, Image.BILINEAR)) >= 128
        latent_mask = torch.from_numpy(masked).to(device=device, dtype=latents.dtype)[None, None]
        per_image = []
        for seed in seeds:
            if request.inpainting_fill == "latent noise":
                # Its own stream (a fixed offset from the seed) so the sampler's noise for this seed stays diffusers'.
                generator = torch.Generator("cpu").manual_seed(seed + 0x5EED)
                fill = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(
                    device, latents.dtype
                )
            else:
                fill = torch.zeros_like(latents)
            per_image.append(latents * (1 - latent_mask) + fill * latent_mask)
        inputs: dict[str, Any] = {"image": torch.cat(per_image).to(dtype)}
        # With latents as `image` the pipeline cannot mask pixels itself; 9-channel UNets see this as their
        # masked-image conditioning, as in A1111 (the unmasked photo, masked area grey).
        binary = mask.point(lambda value: 255 if value >= 128 else 0)
        keep = Image.composite(Image.new("RGB", image.size, (127, 127, 127)), image, binary)
        keep_pixels = pipeline.image_processor.preprocess(keep, height=request.height, width=request.width)
        keep_latents = pipeline.vae.encode(
            keep_pixels.to(device=device, dtype=pipeline.vae.dtype)
        ).latent_dist.mean
        inputs["masked_image_latents"] = (keep_latents * pipeline.vae.config.scaling_factor).to(dtype)
        return inputs

    # -- the pipeline call -------------------------------------------------------------------------------------

    def _call(self, pipeline: Any, run: _Run, seeds: list[int], kwargs: dict[str, Any]) -> list[Image.Image]:
        request, prompt, refiner, progress = run.request, run.prompt, run.refiner, run.progress
        sampler, schedule_type = run.sampler, run.schedule_type
        pipeline.scheduler = make_scheduler(sampler, run.model.scheduler_config, schedule_type)
        steps = self._steps_per_batch(request)
        conditioning = self._encode(pipeline, prompt.positive, prompt.negative, request, steps)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        call_kwargs: dict[str, Any] = {
            **conditioning.kwargs,
            **kwargs,
            "num_inference_steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "num_images_per_prompt": request.batch_size,
            "generator": generators,
            "callback_on_step_end": progress.callback(conditioning),
            "callback_on_step_end_tensor_inputs": [],
        }
        if refiner is None:
            with torch.inference_mode(), conditioning.attached(pipeline.unet):
                return pipeline(**call_kwargs, output_type="pil").images
        # Ensemble of expert denoisers: the base stops at the switch point and hands its latents to the refiner.
        call_kwargs["denoising_end"] = request.refiner_switch_at
        with torch.inference_mode(), conditioning.attached(pipeline.unet):
            latents = pipeline(**call_kwargs, output_type="latent").images
        refine_pipeline = refiner.pipeline
        refine_pipeline.scheduler = make_scheduler(sampler, refiner.scheduler_config, schedule_type)
        refine_conditioning = self._encode(
            refine_pipeline, prompt.refiner_positive, prompt.refiner_negative, request, request.steps
        )
        with torch.inference_mode(), refine_conditioning.attached(refine_pipeline.unet):
            return refine_pipeline(
                **refine_conditioning.kwargs,
                image=latents,
                num_inference_steps=request.steps,
                denoising_start=request.refiner_switch_at,
                guidance_scale=request.cfg_scale,
                generator=generators,
                callback_on_step_end=progress.callback(refine_conditioning),
                callback_on_step_end_tensor_inputs=[],
                output_type="pil",
            ).images

    def _encode(
        self, pipeline: Any, positive: str, negative: str, request: GenerationRequest, steps: int
    ) -> Conditioning:
        encoder = PromptEncoder(pipeline, clip_skip=request.clip_skip)
        zero_empty_negative = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", False))
        with torch.inference_mode():
            return build_conditioning(
                encoder,
                positive,
                negative,
                steps=steps,
                zero_empty_negative=zero_empty_negative,
                cfg=request.cfg_scale > 1.0,
            )

    def _load_refiner(self, request: GenerationRequest, model: LoadedModel) -> LoadedModel | None:
        if not request.refiner:
            return None
        if model.architecture != "sdxl":
            raise AtelierError("a refiner can only follow an SDXL base model", field="refiner")
        if request.mode != "txt2img":
            raise AtelierError("the refiner stage is available for txt2img only", field="refiner")
        refiner = self.load(request.refiner)
        if refiner.architecture != "sdxl-refiner":
            raise AtelierError(
                f"{refiner.name} is not an SDXL refiner ({refiner.architecture})", field="refiner"
            )
        return refiner

    def _steps_per_batch(self, request: GenerationRequest) -> int:
        if request.mode == "txt2img":
            return request.steps
        return max(1, int(request.steps * request.denoising_strength))

    def _infotext_params(self, run: _Run, seed: int, image: Image.Image) -> dict[str, Any]:
        """Parameters in A1111's infotext order (``processing.create_infotext``)."""
        request, prompt, model, refiner = run.request, run.prompt, run.model, run.refiner
        sampler, schedule_type = run.sampler, run.schedule_type
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": sampler,
            "Schedule type": schedule_type,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{image.width}x{image.height}",
            "Model hash": model.short_hash,
            "Model": model.name,
            "Denoising strength": request.denoising_strength if request.mode != "txt2img" else None,
            "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
        }
        if request.mode == "inpaint":
            params["Mask blur"] = request.mask_blur
            if request.inpaint_only_masked:
                params["Inpaint area"] = "Only masked"
                params["Masked area padding"] = request.inpaint_padding
            if request.mask_invert:
                params["Mask mode"] = "Inpaint not masked"
            params["Masked content"] = request.inpainting_fill
        if prompt.loras:
            params["Lora hashes"] = ", ".join(
                f"{lora.entry.name}: {lora.entry.short_hash}" for lora in prompt.loras
            )
        if refiner is not None:
            params["Refiner"] = f"{refiner.name} [{refiner.short_hash}]"
            params["Refiner switch at"] = request.refiner_switch_at
            if request.refiner_prompt is not None:
                params["Refiner prompt"] = request.refiner_prompt
            if request.refiner_negative_prompt is not None:
                params["Refiner negative prompt"] = request.refiner_negative_prompt
        params["Version"] = f"atelier {__version__}"
        return params


@dataclass
class _Run:
    """Everything one ``generate`` call resolved once and every batch uses."""

    request: GenerationRequest
    prompt: _PromptTexts
    model: LoadedModel
    refiner: LoadedModel | None
    sampler: str
    schedule_type: str
    progress: _Progress


@dataclass
class _PromptTexts:
    """The request's prompts with comments stripped and LoRA tags taken out (and resolved to files)."""

    positive: str
    negative: str
    refiner_positive: str
    refiner_negative: str
    loras: list[AppliedLora]

    @classmethod
    def parse(cls, request: GenerationRequest, library: LoraLibrary | None) -> _PromptTexts:
        parsed = parse_prompt(request.prompt)
        loras = []
        for tag in parsed.loras:
            if library is None:
                raise AtelierError(
                    f"the prompt uses <lora:{tag.name}>, but no LoRA folder is set up", field="lora"
                )
            loras.append(AppliedLora(library.entry(tag.name), tag.te_weight, tag.unet_weight))
        refiner_positive = request.refiner_prompt if request.refiner_prompt is not None else request.prompt
        refiner_negative = (
            request.refiner_negative_prompt
            if request.refiner_negative_prompt is not None
            else request.negative_prompt
        )
        return cls(
            positive=parsed.text,
            negative=strip_comments(request.negative_prompt),
            refiner_positive=parse_prompt(refiner_positive).text,
            refiner_negative=strip_comments(refiner_negative),
            loras=loras,
        )


def _size(request: GenerationRequest) -> dict[str, int]:
    return {"width": request.width, "height": request.height}


class _Progress:
    """Counts denoising steps across batches and stages; raises GenerationCanceled when asked to stop."""

    def __init__(
        self, on_step: StepCallback | None, should_cancel: CancelCheck | None, *, total: int
    ) -> None:
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.total = total
        self.done = 0

    def callback(self, conditioning: Conditioning) -> Callable[..., dict[str, Any]]:
        def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            self.done = min(self.total, self.done + 1)
            if self.on_step is not None:
                self.on_step(self.done, self.total)
            if self.should_cancel is not None and self.should_cancel():
                raise GenerationCanceled()
            conditioning.step_done(step)
            return {}

        return on_step_end
