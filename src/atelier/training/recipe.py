"""The LoRA / DreamBooth-LoRA training recipe for SD 1.5 and SDXL.

One readable loop, in the style of torchtune's recipes: :meth:`LoraRecipe.setup` assembles tested components
(dataset scanning and bucketing, peft LoRA adapters, kohya-style caption encoding, latent caching, the optimizer
and LR schedule, saved state), :meth:`LoraRecipe.train` runs the epochs, and the outputs are written by
:mod:`atelier.training.lora_files`, :mod:`atelier.training.samples` and :mod:`atelier.training.report`.
What the run says about itself (kohya metadata, ``summary.json``, the resume fingerprint) is in
:mod:`atelier.training.run_report`; what depends on the machine (accelerate, precision) in
:mod:`atelier.training.hardware`.

Runs go through accelerate, so fp16/bf16 mixed precision, gradient scaling and multi-GPU data parallelism under
``accelerate launch`` need no code here; only the main process writes files. On a machine without a GPU the
run trains in fp32.

Everything a run writes lies inside its run folder (``out_dir``)::

    dataset/                 the uploaded .zip, extracted
    class_images/            prior-preservation images generated from class_prompt
    latent_cache/            latents when cache_latents_to_disk
    samples/                 <output_name>_e000002_00_<seed>.png
    logs/loss.csv            loss per optimizer step (logging_dir)
    state.safetensors        resumable state
    <output_name>.safetensors, <output_name>-000002.safetensors, pytorch_lora_weights.safetensors
    loss.png, summary.json
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from atelier.errors import AtelierError
from atelier.files import read_toml
from atelier.training import hardware, lora_files, network, report, run_report
from atelier.training.archive import extract_zip
from atelier.training.auto_captions import missing_captions, write_captions
from atelier.training.config import TrainConfig
from atelier.training.data import EpochBatches, Example, LatentCache, TrainingData, encode_latents
from atelier.training.dataset import ImageItem, scan_dataset
from atelier.training.dataset_config import DatasetConfig, SubsetConfig, from_folder, parse_dataset_config
from atelier.training.noise import min_snr_weights, sample_noise, sample_timesteps, training_target
from atelier.training.rights import RightsRecord
from atelier.training.samples import SamplePrompt, generate_class_images, load_sample_prompts, render_samples
from atelier.training.state import (
    STATE_FILE,
    SavedState,
    TrainState,
    load_training_state,
    save_training_state,
)
from atelier.training.text import encode_sd15, encode_sdxl, tokenize

logger = logging.getLogger(__name__)

DATASET_FOLDER = "dataset"
CLASS_IMAGES_FOLDER = "class_images"
LATENT_CACHE_FOLDER = "latent_cache"
SAMPLES_FOLDER = "samples"


@dataclass
class TrainProgress:
    """Reported after every optimizer step (and after sample images are rendered)."""

    step: int
    total_steps: int
    epoch: int  # 1-based epoch in progress
    total_epochs: int
    loss: float
    lr: float
    it_per_s: float
    samples: list[Path] = field(default_factory=list)  # images rendered at this step
    # What the run warned about so far (images upscaled, no fp16, no 8-bit AdamW, ...), for the run's panel.
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a run produced. A stopped run has saved its state but written no final LoRA files."""

    output_file: Path | None
    diffusers_file: Path | None
    epoch_files: list[Path]
    samples: list[Path]
    loss_curve: list[tuple[int, float]]
    summary: dict[str, Any]
    run_dir: Path
    stopped: bool = False
    captioned: list[Path] = field(default_factory=list)  # caption files written by caption_model


def train_lora(
    config: TrainConfig,
    *,
    data: Path | None,
    base_model: Path,
    out_dir: Path,
    dataset_config: Path | None = None,
    resume: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    caption_model: Path | None = None,
    rights: RightsRecord | None = None,
) -> TrainResult:
    """Train a LoRA on ``data`` (a .zip or a folder of captioned images) and write it into ``out_dir``.

    ``dataset_config`` is a kohya dataset.toml; with ``data`` its relative ``image_dir`` values are folders of
    ``data`` (and may not leave it), without ``data`` they are relative to the TOML file. ``should_stop`` is
    checked after every step: the run then saves its state and returns, and ``resume=True`` continues it.
    ``caption_model`` (a folder in ``models/captioning/``) first captions the images that have no caption, in
    the run's copy of the data (:mod:`atelier.training.auto_captions`); without it nothing is captioned.
    ``rights`` (:mod:`atelier.training.rights`) is written into every saved LoRA file's metadata.
    Raises AtelierError for anything the user can fix; a run folder created by a call that fails before
    training starts is removed again.
    """
    run_dir = Path(out_dir).resolve()
    created = not run_dir.exists()
    recipe = LoraRecipe(config, run_dir=run_dir, log=log, rights=rights)
    try:
        recipe.setup(
            data=data,
            base_model=Path(base_model),
            dataset_config=dataset_config,
            resume=resume,
            caption_model=caption_model,
        )
    except BaseException:
        if created and recipe.is_main_process:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return recipe.train(on_progress=on_progress, should_stop=should_stop)


class LoraRecipe:
    """Holds everything a run needs between :meth:`setup` and :meth:`train`."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        run_dir: Path,
        log: Callable[[str], None] | None = None,
        rights: RightsRecord | None = None,
    ) -> None:
        self.config = config
        self.rights = rights
        self.run_dir = run_dir
        self._log = log or logger.info
        self.warnings: list[str] = []
        self.accelerator: Any = None

    # -- messages ---------------------------------------------------------------------------------------------

    @property
    def is_main_process(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def log(self, message: str) -> None:
        if self.is_main_process:
            self._log(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"warning: {message}")

    # -- setup ------------------------------------------------------------------------------------------------

    def setup(
        self,
        *,
        data: Path | None,
        base_model: Path,
        dataset_config: Path | None,
        resume: bool,
        caption_model: Path | None = None,
    ) -> None:
        config = self.config.validate()
        self.family = self._check_base_model(base_model)
        self.mixed_precision = hardware.choose_mixed_precision(config.mixed_precision, self.warn)
        self.accelerator = hardware.make_accelerator(self.mixed_precision)
        self.device = self.accelerator.device
        self.weight_dtype = hardware.weight_dtype(self.mixed_precision)
        self._check_run_dir(resume)
        self.saved: SavedState | None = load_training_state(self.run_dir / STATE_FILE) if resume else None
        self.seed = self._choose_seed()
        self.logging_dir = (
            self._inside_run_dir(config.logging_dir, "logging_dir") if config.logging_dir else None
        )
        self.sample_prompts: list[SamplePrompt] = load_sample_prompts(config.sample_prompts, warn=self.warn)

        data_dir = self._prepare_data(data, resume, copy_folder=caption_model is not None)
        self.uses_dataset_config = dataset_config is not None
        self.datasets = self._dataset_configs(data_dir, dataset_config)
        self.captioned = self._caption_missing(caption_model, data_dir)
        self.items = self._scan()

        self.log(f"loading {base_model}")
        from atelier.engine import load_model

        self.model = load_model(base_model, dtype=self.weight_dtype)
        self._place_models()
        if self._generate_class_images():
            self.items = self._scan()

        self.data = TrainingData(self.datasets, self.items, self.seed)
        self._plan_steps()
        self._add_lora()
        self._cache_latents()
        self._cache_text_encoder_outputs()
        self._make_optimizer()
        self.noise_generator = torch.Generator(self.device).manual_seed(
            self.seed + self.accelerator.process_index
        )
        self.state = self._initial_state()

    def _check_base_model(self, base_model: Path) -> str:
        from atelier.engine import detect_architecture

        if not base_model.exists():
            raise AtelierError(f"base model not found: {base_model}", field="base_model")
        architecture = detect_architecture(base_model)
        if architecture == "sd15-inpaint":
            raise AtelierError(
                f"{base_model.name} is an inpainting model; train LoRAs on the SD 1.5 base model",
                field="base_model",
            )
        if architecture == "sdxl-refiner":
            raise AtelierError(
                f"{base_model.name} is an SDXL refiner; train LoRAs on the SDXL base model",
                field="base_model",
            )
        family = "sdxl" if architecture == "sdxl" else "sd15"
        if self.config.sdxl is not None and self.config.sdxl != (family == "sdxl"):
            wanted = "SDXL (sdxl = true)" if self.config.sdxl else "SD 1.5 (sdxl = false)"
            found = "an SDXL" if family == "sdxl" else "an SD 1.5"
            raise AtelierError(
                f"{base_model.name} is {found} model, but the training settings (or preset) are for {wanted}",
                field="base_model",
            )
        return family

    def _check_run_dir(self, resume: bool) -> None:
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise AtelierError(f"{self.run_dir} is a file, not a run folder", field="out_dir")
        if not resume and self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            raise AtelierError(
                f"{self.run_dir} is not empty; resume the run there or choose a new folder", field="out_dir"
            )
        self.accelerator.wait_for_everyone()
        if self.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def _inside_run_dir(self, relative: str, key: str) -> Path:
        path = (self.run_dir / relative).resolve()
        if not path.is_relative_to(self.run_dir):
            raise AtelierError(f"{key} {relative!r} must be a folder inside the run folder", field=key)
        return path

    def _choose_seed(self) -> int:
        if self.saved is not None:
            return self.saved.state.seed
        if self.config.seed is not None:
            return self.config.seed
        # Every process must agree on a random seed, so it is drawn once and broadcast.
        from accelerate.utils import broadcast_object_list

        chosen = [random.randrange(2**31)]
        broadcast_object_list(chosen)
        return chosen[0]

    def _prepare_data(self, data: Path | None, resume: bool, *, copy_folder: bool = False) -> Path | None:
        """The folder of training images: the given folder itself, or the run's copy (extracted zip, copy).

        ``copy_folder``: a folder is copied into the run too, so that captions written for it stay out of the
        user's folder. A resumed run reuses its copy.
        """
        if data is None:
            return None
        data = Path(data)
        target = self.run_dir / DATASET_FOLDER
        if data.is_dir() and not copy_folder:
            return data.resolve()
        if data.is_dir():
            if self.is_main_process and not (resume and target.is_dir()):
                self.log(f"copying {data} into the run folder, where the new captions are written")
                # A run folder inside the data folder is not part of the data (and would copy into itself).
                shutil.copytree(
                    data,
                    target,
                    ignore=lambda folder, names: [
                        n for n in names if Path(folder, n).resolve() == self.run_dir
                    ],
                )
            self.accelerator.wait_for_everyone()
            return target
        if not data.exists():
            raise AtelierError(f"training data not found: {data}", field="data")
        if data.suffix.lower() != ".zip":
            raise AtelierError(
                f"training data must be a folder or a .zip file, got {data.name}", field="data"
            )
        if self.is_main_process and not (resume and target.is_dir()):
            self.log(f"extracting {data.name}")
            extract_zip(data, target)
        self.accelerator.wait_for_everyone()
        return target

    def _dataset_configs(self, data_dir: Path | None, dataset_config: Path | None) -> list[DatasetConfig]:
        config = self.config
        if dataset_config is not None:
            path = Path(dataset_config)
            parsed = read_toml(path, what="dataset config", field="dataset_config")
            return parse_dataset_config(
                parsed,
                data_dir if data_dir is not None else path.parent,
                defaults=config.dataset_defaults(),
                confine_to=data_dir,
            )
        if data_dir is None:
            raise AtelierError(
                "no training data: give a folder or .zip of images, or a dataset config", field="data"
            )
        reg_dir = self._reg_dir(data_dir) if config.reg_data_dir else None
        options = {
            key: value
            for key, value in config.dataset_defaults().items()
            if key not in ("resolution", "batch_size")
        }
        width, height = config.resolution_size()
        return from_folder(
            data_dir,
            (width, height),
            config.train_batch_size,
            reg_root=reg_dir,
            warn=self.warn,
            num_repeats=config.num_repeats,
            **options,
        )

    def _reg_dir(self, data_dir: Path) -> Path:
        assert self.config.reg_data_dir is not None  # only called when the config names one
        path = (data_dir / self.config.reg_data_dir).resolve()
        if not path.is_relative_to(data_dir):
            raise AtelierError(
                f"reg_data_dir {self.config.reg_data_dir!r} must be a folder inside the training data",
                field="reg_data_dir",
            )
        if not path.is_dir():
            raise AtelierError(
                f"reg_data_dir {self.config.reg_data_dir!r} not found in the training data",
                field="reg_data_dir",
            )
        return path

    def _caption_missing(self, caption_model: Path | None, data_dir: Path | None) -> list[Path]:
        """Caption the training images that have none, in the run's copy of the data; return the files."""
        if caption_model is None:
            return []
        if data_dir is None:
            raise AtelierError(
                "captioning missing captions needs the training data as a folder or .zip: the captions are "
                "written into the run's copy of it",
                field="caption_missing",
            )
        missing = missing_captions(
            [subset for dataset in self.datasets for subset in dataset.subsets],
            inside=data_dir,
            instance_prompt=self.config.instance_prompt,
        )
        written: list[Path] = []
        if self.is_main_process:
            written = write_captions(missing, caption_model, device=str(self.device), log=self.log)
            folder = data_dir.relative_to(self.run_dir).as_posix()
            self.log(f"{len(written)} caption(s) written into {folder}/ of the run folder")
        self.accelerator.wait_for_everyone()
        return written

    def _scan(self) -> list[list[ImageItem]]:
        return [
            scan_dataset(dataset, instance_prompt=self.config.instance_prompt, warn=self.warn)
            for dataset in self.datasets
        ]

    # -- models -----------------------------------------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        return self.model.pipeline

    @property
    def text_encoders(self) -> list[Any]:
        if self.family == "sdxl":
            return [self.pipeline.text_encoder, self.pipeline.text_encoder_2]
        return [self.pipeline.text_encoder]

    def _place_models(self) -> None:
        pipeline = self.pipeline
        for module in (pipeline.unet, pipeline.vae, *self.text_encoders):
            module.requires_grad_(False)
            module.eval()
        # SDXL's VAE overflows in fp16 (kohya's --no_half_vae, diffusers' upcast): keep it in fp32 there.
        vae_dtype = torch.float32 if (self.family == "sdxl" or self.config.no_half_vae) else self.weight_dtype
        hardware.place(pipeline.vae, self.device, vae_dtype)
        hardware.place(pipeline.unet, self.device, self.weight_dtype)
        for encoder in self.text_encoders:
            hardware.place(encoder, self.device, self.weight_dtype)
        self.noise_scheduler = _training_scheduler(self.model.scheduler_config)

    def _generate_class_images(self) -> bool:
        config = self.config
        if not config.class_prompt or config.num_class_images == 0:
            return False
        if any(item.is_reg for items in self.items for item in items):
            self.log("regularization images found in the dataset; class_prompt is not used to generate more")
            return False
        folder = self.run_dir / CLASS_IMAGES_FOLDER
        width, height = config.resolution_size()
        if self.is_main_process:
            self.log(f"generating up to {config.num_class_images} class images of {config.class_prompt!r}")
            generated = generate_class_images(
                self.model,
                config.class_prompt,
                folder,
                config.num_class_images,
                width=width,
                height=height,
                steps=config.class_image_steps,
                sampler=config.sample_sampler,
                seed=self.seed,
                device=str(self.device),
            )
            self.log(f"generated {generated} class images")
        self.accelerator.wait_for_everyone()
        for dataset in self.datasets:
            dataset.subsets.append(
                SubsetConfig(
                    image_dir=folder, is_reg=True, class_tokens=config.class_prompt, caption_extension=".txt"
                )
            )
        return True

    def _plan_steps(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.batches_per_epoch = math.ceil(self.data.num_batches / accelerator.num_processes)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.gradient_accumulation_steps)
        if config.max_train_epochs is not None:
            self.num_epochs = config.max_train_epochs
            self.total_steps = self.num_epochs * self.steps_per_epoch
        else:
            self.total_steps = config.max_train_steps
            self.num_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        images = [item for items in self.items for item in items]
        self.num_train_images = sum(item.repeats for item in images if not item.is_reg)
        self.num_reg_images = sum(item.repeats for item in images if item.is_reg)
        self.log(
            f"{self.num_train_images} training images (with repeats), {self.num_reg_images} regularization images, "
            f"{self.batches_per_epoch} batches per epoch, {self.num_epochs} epochs, {self.total_steps} steps"
        )

    def _add_lora(self) -> None:
        from diffusers.training_utils import cast_training_params

        config, pipeline = self.config, self.pipeline
        if not (config.trains_unet or config.trains_text_encoder):
            raise AtelierError("nothing to train: both unet_lr and text_encoder_lr are 0", field="unet_lr")
        self.trained: dict[str, Any] = {}
        # LoRA's random initial weights come from the run's seed, without touching the caller's global RNG.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            if config.trains_unet:
                network.add_lora(
                    pipeline.unet, config.network_dim, config.network_alpha, network.UNET_TARGET_MODULES
                )
                self.trained["unet"] = pipeline.unet
            if config.trains_text_encoder:
                for name, encoder in zip(
                    ("text_encoder", "text_encoder_2"), self.text_encoders, strict=False
                ):
                    network.add_lora(
                        encoder, config.network_dim, config.network_alpha, network.TEXT_ENCODER_TARGET_MODULES
                    )
                    self.trained[name] = encoder
        # The frozen weights stay in the training precision; the LoRA weights are updated in fp32.
        cast_training_params(list(self.trained.values()), dtype=torch.float32)
        if config.gradient_checkpointing:
            pipeline.unet.enable_gradient_checkpointing()
            if config.trains_text_encoder:
                for encoder in self.text_encoders:
                    # transformers 5 renamed the method; pyproject allows transformers 4.45+ too.
                    enable = getattr(encoder, "activation_checkpointing_enable", None)
                    if enable is not None:
                        enable(activation_checkpointing_kwargs={"use_reentrant": False})
                    else:
                        encoder.gradient_checkpointing_enable(
                            gradient_checkpointing_kwargs={"use_reentrant": False}
                        )
        self.attention = self._choose_attention()

    def _choose_attention(self) -> str:
        if not self.config.xformers:
            return "sdpa"
        if self.device.type == "cuda":
            try:
                self.pipeline.unet.enable_xformers_memory_efficient_attention()
                return "xformers"
            except (ImportError, ModuleNotFoundError, ValueError) as exc:
                reason = str(exc).splitlines()[0]
        else:
            reason = "it needs a CUDA GPU"
        self.log(
            f"xformers is not used ({reason}); PyTorch's memory-efficient SDPA attention does the same job"
        )
        return "sdpa"

    # -- caches -----------------------------------------------------------------------------------------------

    def _cache_latents(self) -> None:
        config = self.config
        self.latent_cache: LatentCache | None = None
        if not (config.cache_latents or config.cache_latents_to_disk):
            return
        folder = self.run_dir / LATENT_CACHE_FOLDER if config.cache_latents_to_disk else None
        cache = LatentCache(folder)
        examples = self.data.examples
        self.log(f"caching latents of {len(examples)} images" + (" on disk" if folder else ""))
        # With a folder only the main process encodes; the others index its files once they exist.
        cache.build(examples, self.pipeline.vae, seed=self.seed, write=self.is_main_process)
        self.accelerator.wait_for_everyone()
        if folder is not None and not self.is_main_process:
            cache.build(examples, self.pipeline.vae, seed=self.seed, write=False)
        cache.move_to(self.device)
        self.latent_cache = cache
        # The VAE is only needed again for sample images; it waits on the CPU, as in kohya.
        self.pipeline.vae.to("cpu")

    def _captions_vary(self) -> bool:
        return any(
            subset.shuffle_caption or subset.caption_dropout_rate > 0
            for dataset in self.datasets
            for subset in dataset.subsets
        )

    def _cache_text_encoder_outputs(self) -> None:
        self.text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] | None = None
        if not self.config.cache_text_encoder_outputs:
            return
        if self.config.trains_text_encoder:
            self.log("cache_text_encoder_outputs is ignored: the text encoders are being trained")
            return
        if self._captions_vary():
            self.warn(
                "cache_text_encoder_outputs is off: shuffle_caption or caption dropout change captions per step"
            )
            return
        captions = sorted({item.caption for items in self.items for item in items})
        self.log(f"caching text-encoder outputs of {len(captions)} captions")
        cache = {}
        with torch.no_grad(), self.accelerator.autocast():
            for caption in captions:
                states, pooled = self._encode_text([caption])
                cache[caption] = (states[0], None if pooled is None else pooled[0])
        self.text_cache = cache
        for encoder in self.text_encoders:
            encoder.to("cpu")

    # -- optimizer, schedule, state ---------------------------------------------------------------------------

    def _make_optimizer(self) -> None:
        from diffusers.optimization import get_scheduler

        config, accelerator = self.config, self.accelerator
        groups: list[dict[str, Any]] = []
        if "unet" in self.trained:
            groups.append(
                {"params": network.trainable_parameters(self.trained["unet"]), "lr": config.effective_unet_lr}
            )
        encoder_params = [
            parameter
            for name, module in self.trained.items()
            if name != "unet"
            for parameter in network.trainable_parameters(module)
        ]
        if encoder_params:
            groups.append({"params": encoder_params, "lr": config.effective_text_encoder_lr})
        self.parameters = [parameter for group in groups for parameter in group["params"]]

        optimizer_class = torch.optim.AdamW
        self.optimizer_name = "torch.optim.AdamW"
        if config.wants_8bit_adam:
            problem = hardware.eight_bit_adam_problem(self.device)
            if problem is None:
                import bitsandbytes

                optimizer_class = bitsandbytes.optim.AdamW8bit
                self.optimizer_name = "bitsandbytes.optim.AdamW8bit"
            else:
                self.warn(
                    f"8-bit AdamW is not available ({problem}); using torch AdamW, which needs more memory"
                )
        # foreach: one batched kernel per group instead of a Python loop over hundreds of small LoRA tensors
        # (torch only picks it by itself on GPUs; on CPUs it makes the optimizer step several times faster).
        extra: dict[str, Any] = {"foreach": True} if optimizer_class is torch.optim.AdamW else {}
        optimizer = optimizer_class(groups, lr=config.learning_rate, **extra)
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=config.warmup_steps(self.total_steps),
            num_training_steps=self.total_steps,
            num_cycles=config.lr_scheduler_num_cycles,
        )
        names = list(self.trained)
        prepared = accelerator.prepare(*self.trained.values(), optimizer)
        self.trained = dict(zip(names, prepared[:-1], strict=True))
        self.optimizer = prepared[-1]

    def _initial_state(self) -> TrainState:
        fingerprint = run_report.fingerprint(self)
        if self.saved is None:
            return TrainState(
                step=0,
                epoch=0,
                batches_done=0,
                seed=self.seed,
                fingerprint=fingerprint,
                started_at=time.time(),
            )
        saved = self.saved
        run_report.check_fingerprint(saved.state.fingerprint, fingerprint)
        trained = {
            f"{component}.{name}": parameter
            for component, module in self.trained.items()
            for name, parameter in network.named_trainable_parameters(module).items()
        }
        if set(trained) != set(saved.lora):
            raise AtelierError("cannot resume: the saved LoRA layers differ from this run's", field="resume")
        with torch.no_grad():
            for name, parameter in trained.items():
                parameter.copy_(saved.lora[name].to(parameter.device, parameter.dtype))
        self.optimizer.load_state_dict(saved.optimizer)
        self.lr_scheduler.load_state_dict(saved.lr_scheduler)
        self.noise_generator.set_state(saved.noise_generator)
        if saved.grad_scaler is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(saved.grad_scaler)
        self.log(f"resuming at step {saved.state.step} (epoch {saved.state.epoch + 1})")
        return saved.state

    def _save_state(self) -> None:
        self._update_elapsed()
        if not self.config.save_state:
            return
        self.accelerator.wait_for_everyone()
        if not self.is_main_process:
            return
        lora = {
            f"{component}.{name}": parameter
            for component, module in self.trained.items()
            for name, parameter in network.named_trainable_parameters(module).items()
        }
        scaler = self.accelerator.scaler
        save_training_state(
            self.run_dir / STATE_FILE,
            state=self.state,
            lora=lora,
            optimizer=self.optimizer.state_dict(),
            lr_scheduler=self.lr_scheduler.state_dict(),
            noise_generator=self.noise_generator.get_state(),
            grad_scaler=scaler.state_dict() if scaler is not None else None,
        )
        if self.logging_dir is not None:
            report.write_loss_csv(self.logging_dir / "loss.csv", self.state.loss_curve)

    # -- one training step ------------------------------------------------------------------------------------

    def _encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        config, pipeline = self.config, self.pipeline
        encoders = [
            self.trained.get(name, encoder)
            for name, encoder in zip(("text_encoder", "text_encoder_2"), self.text_encoders, strict=False)
        ]
        ids = tokenize(pipeline.tokenizer, captions, config.max_token_length).to(self.device)
        if self.family == "sdxl":
            ids_2 = tokenize(pipeline.tokenizer_2, captions, config.max_token_length).to(self.device)
            return encode_sdxl(encoders[0], encoders[1], ids, ids_2, config.clip_skip)
        return encode_sd15(encoders[0], ids, config.clip_skip), None

    def _conditioning(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.text_cache is not None:
            cached = [self.text_cache[caption] for caption in captions]
            states = torch.stack([states for states, _ in cached])
            # Every caption has a pooled embedding (SDXL) or none has.
            pooled = [embedding for _, embedding in cached if embedding is not None]
            return states, torch.stack(pooled) if pooled else None
        if self.config.trains_text_encoder:
            return self._encode_text(captions)
        with torch.no_grad():
            return self._encode_text(captions)

    def _latents(
        self, batch: list[Example], loaded: dict[str, Any]
    ) -> tuple[torch.Tensor, list[Any], list[Any]]:
        if self.latent_cache is not None:
            entries = [
                self.latent_cache.get(example, flip)
                for example, flip in zip(batch, loaded["flips"], strict=True)
            ]
            latents = torch.stack([latents.to(self.device) for latents, _, _ in entries])
            return latents, [size for _, size, _ in entries], [crop for _, _, crop in entries]
        with torch.no_grad():
            latents = encode_latents(
                self.pipeline.vae, loaded["pixels"].to(self.device), self.noise_generator
            )
        return latents, loaded["original_sizes"], loaded["crops"]

    def _loss(self, batch: list[Example], loaded: dict[str, Any]) -> torch.Tensor:
        config, accelerator = self.config, self.accelerator
        latents, original_sizes, crops = self._latents(batch, loaded)
        latents = latents.to(self.weight_dtype)
        noise = sample_noise(latents, self.noise_generator, config.noise_offset)
        timesteps = sample_timesteps(
            latents.shape[0],
            self.noise_scheduler.config.num_train_timesteps,
            self.noise_generator,
            self.device,
        )
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with accelerator.autocast():
            states, pooled = self._conditioning(loaded["captions"])
            unet_kwargs: dict[str, Any] = {"encoder_hidden_states": states.to(self.weight_dtype)}
            if self.family == "sdxl":
                assert pooled is not None  # SDXL's second text encoder always gives a pooled embedding
                width, height = batch[0].bucket
                time_ids = [
                    [*size, *crop, height, width] for size, crop in zip(original_sizes, crops, strict=True)
                ]
                unet_kwargs["added_cond_kwargs"] = {
                    "text_embeds": pooled.to(self.weight_dtype),
                    "time_ids": torch.tensor(time_ids, device=self.device, dtype=self.weight_dtype),
                }
            unet = self.trained.get("unet", self.pipeline.unet)
            prediction = unet(noisy_latents, timesteps, **unet_kwargs).sample
        target = training_target(self.noise_scheduler, latents, noise, timesteps)
        loss = torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="none").mean(
            dim=(1, 2, 3)
        )
        weights = torch.tensor(
            [config.prior_loss_weight if is_reg else 1.0 for is_reg in loaded["is_reg"]], device=self.device
        )
        if config.min_snr_gamma:
            weights = weights * min_snr_weights(self.noise_scheduler, timesteps, config.min_snr_gamma)
        return (loss * weights).mean()

    # -- the loop ---------------------------------------------------------------------------------------------

    def _epoch_loader(self, epoch: int, start: int) -> tuple[list[list[Example]], Any]:
        accelerator = self.accelerator
        batches = self.data.epoch_batches(epoch, accelerator.process_index, accelerator.num_processes)
        dataset = EpochBatches(
            batches, seed=self.seed, epoch=epoch, start=start, load_pixels=self.latent_cache is None
        )
        workers = self.config.max_data_loader_n_workers if self.latent_cache is None else 0
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
        return batches, loader

    def _agreed(self, flag: bool) -> bool:
        """The same answer on every process (any process asking to stop stops all of them together)."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def train(
        self,
        *,
        on_progress: Callable[[TrainProgress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> TrainResult:
        with hardware.flush_denormals(self.device):
            return self._train(on_progress=on_progress, should_stop=should_stop)

    def _train(
        self,
        *,
        on_progress: Callable[[TrainProgress], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> TrainResult:
        config, accelerator, state = self.config, self.accelerator, self.state
        session_start, session_start_step = time.time(), state.step
        self._session_start, self._elapsed_before = session_start, state.elapsed_seconds
        new_samples: list[Path] = []
        if state.step == 0 and state.batches_done == 0 and config.sample_at_first:
            new_samples += self._render_samples(label="e000000")
        for module in self.trained.values():
            module.train()

        def report_progress(loss: float) -> None:
            if on_progress is None or not self.is_main_process:
                return
            elapsed = max(time.time() - session_start, 1e-9)
            on_progress(
                TrainProgress(
                    step=state.step,
                    total_steps=self.total_steps,
                    epoch=min(state.epoch + 1, self.num_epochs),
                    total_epochs=self.num_epochs,
                    loss=loss,
                    lr=float(self.lr_scheduler.get_last_lr()[0]),
                    it_per_s=(state.step - session_start_step) / elapsed,
                    samples=list(new_samples),
                    warnings=list(self.warnings),
                )
            )
            new_samples.clear()

        stopped = False
        while state.step < self.total_steps and state.epoch < self.num_epochs and not stopped:
            epoch = state.epoch
            batches, loader = self._epoch_loader(epoch, state.batches_done)
            accumulated, micro_steps = torch.zeros((), device=self.device), 0
            for loaded in loader:
                index = loaded["index"]
                in_this_step = min(
                    config.gradient_accumulation_steps,
                    len(batches) - (index - index % config.gradient_accumulation_steps),
                )
                loss = self._loss(batches[index], loaded)
                accelerator.backward(loss / in_this_step)
                accumulated += loss.detach()
                micro_steps += 1
                if micro_steps < in_this_step:
                    continue

                if config.max_grad_norm:
                    accelerator.clip_grad_norm_(self.parameters, config.max_grad_norm)
                self.optimizer.step()
                if not accelerator.optimizer_step_was_skipped:
                    self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                # One host-device sync per optimizer step, for the progress report and the loss curve.
                step_loss = (accumulated / micro_steps).item()
                accumulated, micro_steps = torch.zeros((), device=self.device), 0
                state.step += 1
                state.batches_done = index + 1
                state.loss_curve.append([state.step, step_loss])

                if config.save_every_n_steps and state.step % config.save_every_n_steps == 0:
                    self._save_lora_file(f"{config.output_name}-step{state.step:08d}", state.epoch + 1)
                    self._save_state()
                if config.sample_every_n_steps and state.step % config.sample_every_n_steps == 0:
                    new_samples += self._render_samples(label=f"{state.step:06d}")
                report_progress(step_loss)
                if self._agreed(should_stop is not None and should_stop()):
                    stopped = True
                    break
                if state.step >= self.total_steps:
                    break

            if stopped:
                break
            if state.batches_done >= len(batches):
                self._end_epoch(new_samples)

        if stopped:
            self._save_state()
            self.log(f"stopped at step {state.step}; resume to continue")
            return self._finish(stopped=True)
        for module in self.trained.values():
            module.eval()
        return self._finish(stopped=False)

    def _end_epoch(self, new_samples: list[Path]) -> None:
        config, state = self.config, self.state
        finished = state.epoch + 1
        state.epoch, state.batches_done = finished, 0
        is_last = finished >= self.num_epochs or state.step >= self.total_steps
        if config.save_every_n_epochs and finished % config.save_every_n_epochs == 0 and not is_last:
            path = self._save_lora_file(f"{config.output_name}-{finished:06d}", finished)
            if path is not None:
                state.epoch_files.append(path.name)
        if config.sample_every_n_epochs and finished % config.sample_every_n_epochs == 0 and not is_last:
            new_samples += self._render_samples(label=f"e{finished:06d}")
        self._save_state()

    def _update_elapsed(self) -> None:
        self.state.elapsed_seconds = self._elapsed_before + (time.time() - self._session_start)

    # -- outputs ----------------------------------------------------------------------------------------------

    def _lora_weights(self) -> tuple[dict[str, torch.Tensor] | None, list[dict[str, torch.Tensor] | None]]:
        unet = network.lora_state_dict(self.trained["unet"]) if "unet" in self.trained else None
        encoders = [
            network.lora_state_dict(self.trained[name]) if name in self.trained else None
            for name in ("text_encoder", "text_encoder_2")[: len(self.text_encoders)]
        ]
        return unet, encoders

    def _save_lora_file(self, stem: str, epoch: int, *, finished_at: float | None = None) -> Path | None:
        self.accelerator.wait_for_everyone()
        if not self.is_main_process:
            return None
        config = self.config
        unet, encoders = self._lora_weights()
        tensors = lora_files.to_kohya_state_dict(
            family=self.family,
            unet=unet,
            text_encoders=encoders,
            alpha=config.network_alpha,
            layers_per_block=self.pipeline.unet.config.layers_per_block,
            dtype=lora_files.SAVE_DTYPES[config.save_precision],
        )
        metadata = lora_files.kohya_metadata(
            config, run_report.run_info(self), epoch=epoch, steps=self.state.step, finished_at=finished_at
        )
        path = lora_files.save_kohya_lora(self.run_dir / f"{stem}.safetensors", tensors, metadata)
        self.log(f"saved {path.name}")
        return path

    def _save_diffusers_file(self) -> Path | None:
        if not self.is_main_process:
            return None
        unet, encoders = self._lora_weights()
        encoder_entries = [
            None if weights is None else (weights, network.adapter_metadata(self.trained[name]))
            for name, weights in zip(("text_encoder", "text_encoder_2"), encoders, strict=False)
        ]
        return lora_files.save_diffusers_lora(
            self.run_dir / lora_files.DIFFUSERS_WEIGHT_NAME,
            type(self.pipeline),
            unet=unet,
            unet_config=network.adapter_metadata(self.trained["unet"]) if unet else None,
            text_encoders=encoder_entries,
            dtype=lora_files.SAVE_DTYPES[self.config.save_precision],
        )

    @contextlib.contextmanager
    def _sampling_mode(self) -> Iterator[None]:
        """Models in eval mode, and cached-away VAE / text encoders back on the device, for sampling."""
        parked = [
            module
            for module in (self.pipeline.vae, *self.text_encoders)
            if module.device.type != self.device.type
        ]
        for module in parked:
            module.to(self.device)
        modes = {name: module.training for name, module in self.trained.items()}
        for module in self.trained.values():
            module.eval()
        try:
            yield
        finally:
            for name, module in self.trained.items():
                module.train(modes[name])
            for module in parked:
                module.to("cpu")

    def _render_samples(self, *, label: str) -> list[Path]:
        if not self.sample_prompts:
            return []
        self.accelerator.wait_for_everyone()
        if not self.is_main_process:
            return []
        self.log(f"rendering {len(self.sample_prompts)} sample images ({label})")
        with self._sampling_mode(), self.accelerator.autocast():
            paths = render_samples(
                self.model,
                self.sample_prompts,
                self.run_dir / SAMPLES_FOLDER,
                output_name=self.config.output_name,
                label=label,
                default_sampler=self.config.sample_sampler,
                clip_skip=self.config.clip_skip,
                device=str(self.device),
            )
        self.state.samples += [path.relative_to(self.run_dir).as_posix() for path in paths]
        return paths

    def _finish(self, *, stopped: bool) -> TrainResult:
        config, state = self.config, self.state
        output_file = diffusers_file = None
        if not stopped:
            # A run that reached max_train_steps inside an epoch has still trained (part of) that epoch.
            epochs_trained = state.epoch + (1 if state.batches_done else 0)
            self._render_samples(label=f"e{epochs_trained:06d}")
            self._update_elapsed()
            output_file = self._save_lora_file(config.output_name, epochs_trained, finished_at=time.time())
            diffusers_file = self._save_diffusers_file()
            self._save_state()
        self._update_elapsed()
        summary = run_report.summary(
            self, stopped=stopped, output_file=output_file, diffusers_file=diffusers_file
        )
        if self.is_main_process:
            report.write_loss_curve(
                self.run_dir / run_report.LOSS_CURVE_FILE,
                state.loss_curve,
                title=f"{config.output_name}: training loss",
            )
            if self.logging_dir is not None:
                report.write_loss_csv(self.logging_dir / "loss.csv", state.loss_curve)
            report.write_summary(self.run_dir / run_report.SUMMARY_FILE, summary)
            self.log(f"finished: {output_file.name}" if output_file else "state saved")
        return TrainResult(
            output_file=output_file,
            diffusers_file=diffusers_file,
            epoch_files=[self.run_dir / name for name in state.epoch_files],
            samples=[self.run_dir / name for name in state.samples],
            loss_curve=[(int(step), float(loss)) for step, loss in state.loss_curve],
            summary=summary,
            run_dir=self.run_dir,
            stopped=stopped,
            captioned=self.captioned,
        )


def _training_scheduler(scheduler_config: dict[str, Any]) -> Any:
    """The DDPM noise schedule the model was trained with (betas, timesteps, prediction type from its config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dict(scheduler_config))
