"""The generation engine: txt2img, img2img, inpainting and SDXL base -> refiner, on diffusers' own pipelines.

Atelier does not fork diffusers' denoising loops. It prepares what they take (prompt embeddings, a scheduler built
from the A1111 sampler name, per-image generators, inpainting inputs, ControlNet maps), calls the stock pipeline
(its ControlNet variant when units are given), and post-processes (paste-back over the original photo, infotext).
A diffusers user with the same settings gets the same picture.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from atelier.engine import masks
from atelier.engine.architectures import SDXL_ARCHITECTURES
from atelier.engine.conditioning import Conditioning, PromptEncoder, build_conditioning
from atelier.engine.controlnet import (
    DEFAULT_MAX_UNITS,
    ControlNetCache,
    ControlNetLibrary,
    ResolvedControl,
    check_matches_base,
    control_modes_attached,
    controlnet_pipeline,
    pipeline_inputs,
)
from atelier.engine.embeddings import Embedding, EmbeddingLibrary
from atelier.engine.hires import is_latent_upscaler, second_pass
from atelier.engine.infotext import format_infotext
from atelier.engine.latent_fill import latent_fill_inputs
from atelier.engine.loras import LoraLibrary, apply_loras
from atelier.engine.models import LoadedModel, ModelCache
from atelier.engine.precision import guard_vae
from atelier.engine.preprocessors import model_folder, needs_model
from atelier.engine.previews import PreviewDecoders
from atelier.engine.progress import (
    CancelCheck,
    GenerationCanceled,
    PreviewCallback,
    StepCallback,
    StepProgress,
)
from atelier.engine.provenance import Provenance
from atelier.engine.request import GenerationRequest
from atelier.engine.request_prompts import RequestPrompts
from atelier.engine.runtime import Runtime, default_device, default_dtype
from atelier.engine.samplers import make_scheduler, resolve_sampler
from atelier.engine.sources import generation_provenance, infotext_params
from atelier.engine.speed import SpeedSettings
from atelier.engine.tiling import seamless
from atelier.engine.vae import VaeLibrary, swapped_vae
from atelier.errors import AtelierError, NotFoundError


@dataclass
class GeneratedImage:
    image: Image.Image
    seed: int
    infotext: str
    params: dict[str, Any]
    # What it is and what made it, for its AI disclosure and Content Credentials (engine/provenance.py).
    provenance: Provenance | None = None


@dataclass
class GenerationResult:
    images: list[GeneratedImage] = field(default_factory=list)
    # One per ControlNet unit: the preprocessed map at the size the ControlNet saw it.
    control_maps: list[Image.Image] = field(default_factory=list)

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
_CONTROLNET_PIPELINES = {
    ("sd15", "txt2img"): "StableDiffusionControlNetPipeline",
    ("sd15", "img2img"): "StableDiffusionControlNetImg2ImgPipeline",
    ("sd15", "inpaint"): "StableDiffusionControlNetInpaintPipeline",
    ("sdxl", "txt2img"): "StableDiffusionXLControlNetPipeline",
    ("sdxl", "img2img"): "StableDiffusionXLControlNetImg2ImgPipeline",
    ("sdxl", "inpaint"): "StableDiffusionXLControlNetInpaintPipeline",
}


class ModelSource(Protocol):
    """Where the engine gets its models: a :class:`ModelCache`, or a stand-in such as training's samples."""

    def get(self, path: str | os.PathLike[str], *, device: str = ..., dtype: Any = ...) -> LoadedModel: ...


class Engine:
    """Generates images. Holds a warm model cache; no other state is shared between requests.

    ``speed`` turns on the speed paths of engine/acceleration.py (the CLI and the studio always pass one; None runs
    models as diffusers loads them); ``memory_plans`` lets engine/memory.py tile and offload on a small GPU.
    """

    def __init__(
        self,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        models: ModelSource | None = None,
        loras: LoraLibrary | None = None,
        embeddings: EmbeddingLibrary | None = None,
        vaes: VaeLibrary | None = None,
        controlnets: ControlNetLibrary | None = None,
        controlnet_models: ControlNetCache | None = None,
        preprocessor_models: str | os.PathLike[str] | None = None,
        max_controlnet_units: int = DEFAULT_MAX_UNITS,
        previews: PreviewDecoders | None = None,
        speed: SpeedSettings | None = None,
        memory_plans: bool = True,
    ) -> None:
        self.device = device or default_device()
        self.dtype = dtype or default_dtype(self.device)
        self.runtime = Runtime(self.device, self.dtype, speed, memory_plans)
        self.models: ModelSource = models or ModelCache()
        self.loras = loras
        self.embeddings = embeddings
        self.vaes = vaes
        # Without a library, ControlNet units name their model by path (the CLI resolves names itself).
        self.controlnets = controlnets
        self.controlnet_models = controlnet_models or ControlNetCache(max_models=max(max_controlnet_units, 1))
        self.preprocessor_models = preprocessor_models
        self.max_controlnet_units = max_controlnet_units
        self.previews = previews or PreviewDecoders()

    def load(self, model_path: str | os.PathLike[str]) -> LoadedModel:
        return self.runtime.prepare(self.models.get(model_path, device=self.device, dtype=self.dtype))

    def generate(
        self,
        request: GenerationRequest,
        *,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
        on_preview: PreviewCallback | None = None,
        preview_every: int = 5,
    ) -> GenerationResult:
        """Run a request: ``batch_count`` batches of ``batch_size`` images; image i uses seed s+i.

        With ``on_preview``, every ``preview_every`` steps the latents are decoded cheaply (TAESD, else the
        linear approximation, see :mod:`atelier.engine.previews`) and handed over as a picture.
        """
        request.validate(max_controlnet_units=self.max_controlnet_units)
        if not request.model:
            raise AtelierError("no model given", field="model")
        sampler, schedule_type = resolve_sampler(request.sampler, request.schedule_type)
        prompt = RequestPrompts.parse(request, self.loras, self.embeddings)
        model = self.load(request.model)
        refiner = self._load_refiner(request, model)
        controls = self._load_controls(request, model)
        self.runtime.before_request(model, uses_loras=bool(prompt.loras))
        apply_loras(model.pipeline, model.loaded_loras, prompt.loras)
        vae = self._load_vae(request, model)
        first_seed = request.resolved_seed()
        total_images = request.batch_size * request.batch_count
        progress = StepProgress(
            on_step, should_cancel, total=self._steps_per_batch(request) * request.batch_count
        )
        if on_preview is not None and preview_every > 0:
            progress.previews = (
                self.previews.for_architecture(model.architecture, device=self.device, dtype=self.dtype),
                on_preview,
                preview_every,
            )
        run = _Run(request, prompt, model, refiner, sampler, schedule_type, progress, controls)
        run.vae_hash = vae[1] if vae else None
        result = GenerationResult()
        pipelines = [model.pipeline, *([refiner.pipeline] if refiner else [])]
        for batch_index in range(request.batch_count):
            seeds = [first_seed + batch_index * request.batch_size + i for i in range(request.batch_size)]
            try:
                with (
                    seamless(pipelines) if request.tiling else contextlib.nullcontext(),
                    swapped_vae(model, vae[0] if vae else None),
                ):
                    images = self._run_batch_in_memory(run, seeds)
            except GenerationCanceled as stop:
                # What A1111's interrupt returns: the finished batches and this one as it is now.
                self._add_images(run, result, stop.partial, seeds)
                stop.result = result
                raise
            self._add_images(run, result, images, seeds)
        assert len(result.images) == total_images
        result.control_maps = run.control_maps or []
        self.runtime.after_request(model)
        return result

    def _add_images(
        self, run: _Run, result: GenerationResult, images: list[Image.Image], seeds: list[int]
    ) -> None:
        request = run.request
        provenance = generation_provenance(run)
        for image, seed in zip(images, seeds, strict=False):
            params = infotext_params(run, seed, image)
            infotext = format_infotext(request.prompt, request.negative_prompt, params)
            result.images.append(GeneratedImage(image, seed, infotext, params, provenance))

    # -- one batch -------------------------------------------------------------------------------------------

    def _run_batch_in_memory(self, run: _Run, seeds: list[int]) -> list[Image.Image]:
        request, steps_before = run.request, run.progress.done

        def attempt() -> list[Image.Image]:
            run.progress.done = steps_before  # a retry under a leaner memory plan starts the batch again
            return self._run_batch(run, seeds)

        width, height = request.hires_size() if request.enable_hr else (request.width, request.height)
        return self.runtime.run_batch(
            run.model,
            run.refiner,
            width=width,
            height=height,
            batch=request.batch_size,
            hires=request.enable_hr,
            attempt=attempt,
        )

    def _run_batch(self, run: _Run, seeds: list[int]) -> list[Image.Image]:
        request, model = run.request, run.model
        family = "sdxl" if model.architecture in SDXL_ARCHITECTURES else "sd15"
        if model.architecture == "sdxl-refiner" and request.mode == "txt2img":
            raise AtelierError(
                "an SDXL refiner cannot generate from text alone; use it as --refiner", field="model"
            )
        if request.enable_hr and model.architecture == "sd15-inpaint":
            raise AtelierError(
                f"hires fix needs a regular checkpoint; {model.name} is an inpainting model",
                field="enable_hr",
            )
        if model.architecture == "sd15-inpaint" and request.mode != "inpaint":
            # A 9-channel UNet needs mask inputs; A1111 feeds it an all-white mask for txt2img/img2img.
            return self._run_inpaint(run, seeds, full_mask=True)
        if request.mode == "inpaint":
            return self._run_inpaint(run, seeds)
        if request.enable_hr:
            return self._run_hires(run, family, seeds)
        pipeline = self._pipeline(run, family, request.mode)
        kwargs: dict[str, Any] = {"width": request.width, "height": request.height}
        if request.mode == "img2img":
            assert request.init_image is not None  # that is what makes the mode img2img
            init = request.init_image.convert("RGB").resize(
                (request.width, request.height), Image.Resampling.LANCZOS
            )
            kwargs = {"image": init, "strength": request.denoising_strength}
        kwargs.update(self._control_inputs(run, request.mode))
        return self._call(pipeline, run, seeds, kwargs)

    def _run_hires(self, run: _Run, family: str, seeds: list[int]) -> list[Image.Image]:
        """txt2img at the request's size, then upscaled and denoised again (engine/hires.py)."""
        request, prompt = run.request, run.prompt
        latent = is_latent_upscaler(request.hr_upscaler)
        first = self._call(
            self._pipeline(run, family, "txt2img"),
            run,
            seeds,
            _size(request),
            output_type="latent" if latent else "pil",
        )
        pipeline = run.model.variant(_PIPELINES[(family, "img2img")])
        sampler, schedule_type = run.sampler, run.schedule_type
        if request.hr_sampler:
            sampler, schedule_type = resolve_sampler(request.hr_sampler, request.schedule_type)
        pipeline.scheduler = make_scheduler(sampler, run.model.scheduler_config, schedule_type)
        steps = request.hires_steps()
        conditioning = self._encode(
            pipeline,
            prompt.hires_positive,
            prompt.hires_negative,
            request,
            int(steps * request.denoising_strength),
            prompt.embeddings,
        )
        with torch.inference_mode(), conditioning.attached(pipeline.unet):
            return second_pass(
                pipeline,
                first,
                upscaler=request.hr_upscaler,
                size=request.hires_size(),
                conditioning_kwargs=conditioning.kwargs,
                strength=request.denoising_strength,
                steps=steps,
                cfg_scale=request.cfg_scale,
                seeds=seeds,
                callback=run.progress.callback(conditioning),
                tensor_inputs=run.progress.tensor_inputs,
            )

    def _run_inpaint(self, run: _Run, seeds: list[int], *, full_mask: bool = False) -> list[Image.Image]:
        request, model = run.request, run.model
        family = "sdxl" if model.architecture in SDXL_ARCHITECTURES else "sd15"
        pipeline = self._pipeline(run, family, "inpaint")
        if full_mask:
            size = (request.width, request.height)
            original = (
                request.init_image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
                if request.init_image is not None
                else Image.new("RGB", size, (127, 127, 127))
            )
            mask = Image.new("L", size, 255)
            strength = request.denoising_strength if request.init_image is not None else 1.0
            kwargs: dict[str, Any] = {
                "image": original,
                "mask_image": mask,
                "strength": strength,
                **_size(request),
            }
            kwargs.update(self._control_inputs(run, "inpaint"))
            return self._call(pipeline, run, seeds, kwargs)

        # Inpainting: a mask is given, and validate() made sure an init image came with it.
        assert request.mask is not None and request.init_image is not None
        original = request.init_image.convert("RGB")
        mask = masks.prepare_mask(request.mask, original.size, request.mask_blur, invert=request.mask_invert)
        size = (request.width, request.height)
        if request.inpaint_only_masked:
            region = masks.get_crop_region(mask, request.inpaint_padding)
            region = masks.expand_crop_region(region, request.width, request.height, *original.size)
        else:
            region = (0, 0, *original.size)
        work_image = masks.crop_to_region(original, region, size)
        work_mask = masks.crop_to_region(mask, region, size)
        if request.inpainting_fill == "fill":
            work_image = masks.fill_masked(work_image, work_mask)
        kwargs = {
            "image": work_image,
            "mask_image": work_mask,
            "strength": request.denoising_strength,
            **_size(request),
        }
        if request.inpainting_fill in ("latent noise", "latent nothing"):
            kwargs.update(latent_fill_inputs(pipeline, work_image, work_mask, request, seeds))
        kwargs.update(self._control_inputs(run, "inpaint", crop=(region, original.size)))
        generated = self._call(pipeline, run, seeds, kwargs)
        # Outside the blurred mask the customer's photo comes back untouched, pixel for pixel.
        return [masks.paste_region(original, image, region, mask) for image in generated]

    # -- ControlNet ------------------------------------------------------------------------------------------

    def _load_controls(self, request: GenerationRequest, model: LoadedModel) -> list[ResolvedControl]:
        controls = []
        for index, unit in enumerate(request.controlnet_units):
            field_name = f"controlnet_units[{index}].model"
            if self.controlnets is not None:
                path = self.controlnets.resolve(unit.model, field=field_name)
            else:
                path = Path(unit.model)
                if not path.exists():
                    raise NotFoundError(f"ControlNet model not found: {unit.model}", field=field_name)
            try:
                if needs_model(unit.module):
                    model_folder(unit.module, self.preprocessor_models)
                net = self.controlnet_models.get(path, device=self.device, dtype=self.dtype)
            except AtelierError as exc:
                exc.field = f"controlnet_units[{index}].{exc.field or 'model'}"
                raise
            check_matches_base(net, model.pipeline.unet.config, model.name, field=field_name)
            controls.append(ResolvedControl(index, unit, net))
        return controls

    def _pipeline(self, run: _Run, family: str, mode: str) -> Any:
        if not run.active_controls:
            return run.model.variant(_PIPELINES[(family, mode)])
        return controlnet_pipeline(
            run.model.pipeline, _CONTROLNET_PIPELINES[(family, mode)], run.active_controls
        )

    def _control_inputs(
        self, run: _Run, pipeline_mode: str, *, crop: tuple[masks.Region, tuple[int, int]] | None = None
    ) -> dict[str, Any]:
        """Control maps and per-unit settings for the ControlNet pipeline (``crop``: the inpainting region)."""
        request = run.request
        if run.control_maps is None:
            run.control_maps = []
            for control in run.controls:
                source, unit_crop = control.unit.image, crop
                if source is None:
                    # A1111 controls img2img with the init image itself, laid over the photo exactly as it is.
                    source = request.init_image
                    assert source is not None  # validate() refuses a unit without image in txt2img
                    unit_crop = crop or ((0, 0, *source.size), source.size)
                try:
                    control_map = control.unit.control_image(
                        source,
                        width=request.width,
                        height=request.height,
                        crop=unit_crop,
                        models_dir=self.preprocessor_models,
                        device=self.device,
                    )
                except AtelierError as exc:
                    exc.field = f"controlnet_units[{control.index}].{exc.field or 'image'}"
                    raise
                run.control_maps.append(control_map)
        active = [
            (control, control_map)
            for control, control_map in zip(run.controls, run.control_maps, strict=True)
            if control.unit.active
        ]
        if not active:
            return {}
        return pipeline_inputs(
            [control for control, _ in active],
            [control_map for _, control_map in active],
            image_key="image" if pipeline_mode == "txt2img" else "control_image",
        )

    # -- the pipeline call -------------------------------------------------------------------------------------

    def _call(
        self, pipeline: Any, run: _Run, seeds: list[int], kwargs: dict[str, Any], *, output_type: str = "pil"
    ) -> Any:
        request, prompt, refiner, progress = run.request, run.prompt, run.refiner, run.progress
        sampler, schedule_type = run.sampler, run.schedule_type
        pipeline.scheduler = make_scheduler(sampler, run.model.scheduler_config, schedule_type)
        steps = self._first_pass_steps(request)
        conditioning = self._encode(
            pipeline, prompt.positive, prompt.negative, request, steps, prompt.embeddings
        )
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        call_kwargs: dict[str, Any] = {
            **conditioning.kwargs,
            **kwargs,
            "num_inference_steps": request.steps,
            "guidance_scale": request.cfg_scale,
            "num_images_per_prompt": request.batch_size,
            "generator": generators,
            "callback_on_step_end": progress.callback(conditioning),
            "callback_on_step_end_tensor_inputs": progress.tensor_inputs,
        }
        control_modes = control_modes_attached(run.active_controls, cfg=request.cfg_scale > 1.0)
        fast = self.runtime.fast(pipeline.unet, request.fast)
        if refiner is None:
            with torch.inference_mode(), conditioning.attached(pipeline.unet), control_modes, fast:
                return pipeline(**call_kwargs, output_type=output_type).images
        # Ensemble of expert denoisers: the base stops at the switch point and hands its latents to the refiner.
        call_kwargs["denoising_end"] = request.refiner_switch_at
        with torch.inference_mode(), conditioning.attached(pipeline.unet), control_modes, fast:
            latents = pipeline(**call_kwargs, output_type="latent").images
        refine_pipeline = refiner.pipeline
        refine_pipeline.scheduler = make_scheduler(sampler, refiner.scheduler_config, schedule_type)
        refine_conditioning = self._encode(
            refine_pipeline,
            prompt.refiner_positive,
            prompt.refiner_negative,
            request,
            request.steps,
            prompt.embeddings,
        )
        refine_fast = self.runtime.fast(refine_pipeline.unet, request.fast)
        with torch.inference_mode(), refine_conditioning.attached(refine_pipeline.unet), refine_fast:
            return refine_pipeline(
                **refine_conditioning.kwargs,
                image=latents,
                num_inference_steps=request.steps,
                denoising_start=request.refiner_switch_at,
                guidance_scale=request.cfg_scale,
                generator=generators,
                callback_on_step_end=progress.callback(refine_conditioning),
                callback_on_step_end_tensor_inputs=progress.tensor_inputs,
                output_type="pil",
            ).images

    def _encode(
        self,
        pipeline: Any,
        positive: str,
        negative: str,
        request: GenerationRequest,
        steps: int,
        embeddings: list[Embedding],
    ) -> Conditioning:
        encoder = PromptEncoder(pipeline, clip_skip=request.clip_skip, embeddings=embeddings)
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

    def _load_vae(self, request: GenerationRequest, model: LoadedModel) -> tuple[Any, str] | None:
        if not request.vae:
            return None
        if self.vaes is None:
            raise AtelierError(
                f"the request names VAE {request.vae!r}, but no VAE folder is set up", field="sd_vae"
            )
        vae = self.vaes.load(request.vae, model)
        guard_vae(vae[0])
        return vae

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

    def _first_pass_steps(self, request: GenerationRequest) -> int:
        if request.mode == "txt2img":
            return request.steps
        return max(1, int(request.steps * request.denoising_strength))

    def _steps_per_batch(self, request: GenerationRequest) -> int:
        steps = self._first_pass_steps(request)
        if request.enable_hr:
            steps += int(request.hires_steps() * request.denoising_strength)
        return steps


@dataclass
class _Run:
    """Everything one ``generate`` call resolved once and every batch uses."""

    request: GenerationRequest
    prompt: RequestPrompts
    model: LoadedModel
    refiner: LoadedModel | None
    sampler: str
    schedule_type: str
    progress: StepProgress
    controls: list[ResolvedControl] = field(default_factory=list)
    # Made in the first batch, reused by the others: the same units, sizes and crop every time.
    control_maps: list[Image.Image] | None = None
    vae_hash: str | None = None  # the request's external VAE, for the infotext

    @property
    def active_controls(self) -> list[ResolvedControl]:
        return [control for control in self.controls if control.unit.active]


def _size(request: GenerationRequest) -> dict[str, int]:
    return {"width": request.width, "height": request.height}
