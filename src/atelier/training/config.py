"""Training settings under kohya-ss sd-scripts' argument names, presets, and TOML loading.

A kohya user's command line (``--network_dim=64 --network_alpha=32 --cache_latents ...``) maps one to one onto
:class:`TrainConfig`: the same names work as TOML keys and as ``atelier train`` flags. A few names come from
diffusers' DreamBooth scripts where kohya has none (``instance_prompt``, ``class_prompt``, ``num_class_images``),
and a few are Atelier's own (``sdxl``, ``num_repeats``, ``class_image_steps``, ``save_state``).

Values are checked strictly, by key: a typo such as ``netwrok_dim`` would otherwise train silently with the
default, and ``network_dim = "64"`` would fail hours later. Settings are layered: defaults < preset < config file
< overrides (the CLI flags).

Some kohya options are accepted for compatibility and mean what the closest Atelier behaviour is:

* ``xformers`` / ``sdpa``: memory-efficient attention. xformers is used when it is installed on a CUDA machine;
  otherwise PyTorch's scaled-dot-product attention, which diffusers uses by default, does the same job.
* ``use_8bit_adam`` / ``optimizer_type = "AdamW8bit"``: bitsandbytes' 8-bit AdamW when bitsandbytes imports and
  a CUDA GPU is present; otherwise training falls back to torch's AdamW with a warning (more optimizer memory,
  same results within noise), and ``ss_optimizer`` records what was really used.
* ``mixed_precision = "fp16"`` / ``"bf16"`` on a machine without a GPU trains in fp32, with a note in the log.
* ``save_model_as`` must be ``safetensors``: ``ckpt``/``pt`` files are pickles, which Atelier never writes.
* ``network_module`` must be ``networks.lora`` (kohya's LoRA; LyCORIS modules are not implemented).
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from atelier.config_models import closest
from atelier.errors import AtelierError
from atelier.files import read_toml
from atelier.training.dataset_config import toml_type_name

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_PRECISIONS = ("float", "fp16", "bf16")
OPTIMIZERS = ("AdamW", "AdamW8bit")
MAX_TOKEN_LENGTHS = (75, 150, 225)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Every training setting, under kohya-ss sd-scripts' names where one exists."""

    # -- model, data and output -------------------------------------------------------------------------------
    pretrained_model_name_or_path: str | None = field(
        default=None, metadata=_help("base model (diffusers folder or .safetensors); the CLI's --base")
    )
    train_data_dir: str | None = field(
        default=None, metadata=_help("training images (folder or .zip); the CLI's DATA argument")
    )
    reg_data_dir: str | None = field(
        default=None,
        metadata=_help(
            "regularization (class) images, relative to the data folder; N_name subfolders as kohya"
        ),
    )
    dataset_config: str | None = field(default=None, metadata=_help("kohya dataset.toml"))
    output_dir: str | None = field(default=None, metadata=_help("run folder; the CLI's --out"))
    output_name: str = field(
        default="lora", metadata=_help("name of the LoRA file (<output_name>.safetensors)")
    )
    save_model_as: str = field(default="safetensors", metadata=_help("only 'safetensors' (no pickles)"))
    logging_dir: str | None = field(
        default="logs", metadata=_help("folder inside the run folder for the per-step loss log (loss.csv)")
    )
    training_comment: str | None = field(default=None, metadata=_help("stored as ss_training_comment"))
    sdxl: bool | None = field(
        default=None, metadata=_help("true: the base model must be SDXL; false: SD 1.5; unset: either")
    )
    # -- network ----------------------------------------------------------------------------------------------
    network_module: str = field(default="networks.lora", metadata=_help("only 'networks.lora'"))
    network_dim: int = field(default=4, metadata=_help("LoRA rank"))
    network_alpha: float = field(
        default=1.0, metadata=_help("LoRA alpha; the LoRA output is scaled alpha/dim")
    )
    network_train_unet_only: bool = field(default=False, metadata=_help("train no text-encoder LoRA"))
    network_train_text_encoder_only: bool = field(default=False, metadata=_help("train no UNet LoRA"))
    # -- optimizer and schedule -------------------------------------------------------------------------------
    learning_rate: float = field(default=1e-4, metadata=_help("default learning rate"))
    unet_lr: float | None = field(
        default=None, metadata=_help("UNet LoRA learning rate (default learning_rate)")
    )
    text_encoder_lr: float | None = field(
        default=None,
        metadata=_help("text-encoder LoRA learning rate (default learning_rate; 0 freezes them)"),
    )
    optimizer_type: str = field(default="AdamW", metadata=_help("AdamW or AdamW8bit"))
    use_8bit_adam: bool = field(default=False, metadata=_help("same as optimizer_type = 'AdamW8bit'"))
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping norm; 0 turns clipping off"))
    lr_scheduler: str = field(default="constant", metadata=_help(", ".join(LR_SCHEDULERS)))
    lr_warmup_steps: int | float = field(
        default=0, metadata=_help("warmup steps, or a fraction (< 1) of the total steps")
    )
    lr_scheduler_num_cycles: int = field(default=1, metadata=_help("restarts of cosine_with_restarts"))
    max_train_steps: int = field(
        default=1600, metadata=_help("optimizer steps (ignored if max_train_epochs)")
    )
    max_train_epochs: int | None = field(default=None, metadata=_help("epochs; wins over max_train_steps"))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("batches per optimizer step"))
    seed: int | None = field(
        default=None, metadata=_help("random seed (unset: chosen at random and recorded)")
    )
    # -- dataset (defaults for the dataset.toml's [general]) --------------------------------------------------
    resolution: int | list[int] | str = field(
        default=512, metadata=_help("training resolution: 512, or 'width,height'")
    )
    train_batch_size: int = field(default=1, metadata=_help("images per batch"))
    enable_bucket: bool = field(default=True, metadata=_help("aspect-ratio bucketing"))
    min_bucket_reso: int = field(default=256, metadata=_help("smallest bucket side"))
    max_bucket_reso: int = field(default=1024, metadata=_help("largest bucket side"))
    bucket_reso_steps: int = field(default=64, metadata=_help("bucket side step"))
    bucket_no_upscale: bool = field(default=False, metadata=_help("never upscale images into buckets"))
    caption_extension: str = field(default=".txt", metadata=_help("caption file extension"))
    shuffle_caption: bool = field(default=False, metadata=_help("shuffle comma-separated caption tags"))
    keep_tokens: int = field(default=0, metadata=_help("leading tags kept in place when shuffling"))
    caption_dropout_rate: float = field(
        default=0.0, metadata=_help("probability of training on an empty caption")
    )
    flip_aug: bool = field(default=False, metadata=_help("random horizontal flips"))
    num_repeats: int = field(default=1, metadata=_help("repeats of images directly in the data folder"))
    instance_prompt: str | None = field(
        default=None, metadata=_help("caption for images without one, e.g. 'photo of oue car'")
    )
    class_prompt: str | None = field(
        default=None,
        metadata=_help(
            "prior preservation: generate class images from this prompt when no is_reg images exist"
        ),
    )
    num_class_images: int = field(default=100, metadata=_help("class images to generate from class_prompt"))
    class_image_steps: int = field(default=25, metadata=_help("sampling steps for generated class images"))
    prior_loss_weight: float = field(default=1.0, metadata=_help("loss weight of regularization images"))
    max_data_loader_n_workers: int = field(default=2, metadata=_help("image-loading worker processes"))
    # -- text -------------------------------------------------------------------------------------------------
    clip_skip: int = field(default=1, metadata=_help("A1111 clip skip: 2 uses the penultimate CLIP layer"))
    max_token_length: int = field(
        default=75, metadata=_help("caption tokens: 75, 150 or 225 (kohya chunking)")
    )
    # -- speed and memory -------------------------------------------------------------------------------------
    cache_latents: bool = field(
        default=False, metadata=_help("encode every image once, keep latents in memory")
    )
    cache_latents_to_disk: bool = field(
        default=False, metadata=_help("cache latents on disk in the run folder")
    )
    cache_text_encoder_outputs: bool = field(
        default=False, metadata=_help("encode captions once when no text encoder is trained")
    )
    mixed_precision: str = field(
        default="no", metadata=_help("no, fp16 or bf16 (GPU only; CPU trains in fp32)")
    )
    gradient_checkpointing: bool = field(default=False, metadata=_help("trade compute for memory"))
    xformers: bool = field(
        default=False, metadata=_help("xformers attention when installed, else PyTorch SDPA")
    )
    sdpa: bool = field(default=False, metadata=_help("PyTorch scaled-dot-product attention (the default)"))
    no_half_vae: bool = field(default=False, metadata=_help("keep the VAE in fp32 (always done for SDXL)"))
    # -- loss -------------------------------------------------------------------------------------------------
    noise_offset: float = field(default=0.0, metadata=_help("offset noise strength (e.g. 0.1)"))
    min_snr_gamma: float | None = field(default=None, metadata=_help("min-SNR loss weighting gamma (e.g. 5)"))
    # -- saving -----------------------------------------------------------------------------------------------
    save_every_n_epochs: int | None = field(
        default=None, metadata=_help("write <output_name>-<epoch>.safetensors")
    )
    save_every_n_steps: int | None = field(default=None, metadata=_help("also save state every N steps"))
    save_precision: str = field(default="float", metadata=_help("float, fp16 or bf16 for the LoRA files"))
    save_state: bool = field(
        default=True, metadata=_help("save resumable state at each epoch, save step and stop")
    )
    # -- sample images ----------------------------------------------------------------------------------------
    sample_prompts: str | list[str] | None = field(
        default=None, metadata=_help("kohya sample prompt lines: a .txt file, or a list in TOML")
    )
    sample_every_n_epochs: int | None = field(default=None, metadata=_help("render samples every N epochs"))
    sample_every_n_steps: int | None = field(default=None, metadata=_help("render samples every N steps"))
    sample_sampler: str = field(
        default="Euler a", metadata=_help("sampler for samples (A1111 or kohya names)")
    )
    sample_at_first: bool = field(default=False, metadata=_help("render samples before training"))

    def validate(self) -> TrainConfig:
        """Check values that are valid for their type but not for training; raise AtelierError naming the key."""
        _choice("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _choice("save_precision", self.save_precision, SAVE_PRECISIONS)
        _choice("optimizer_type", self.optimizer_type, OPTIMIZERS)
        _choice("max_token_length", self.max_token_length, MAX_TOKEN_LENGTHS)
        if self.network_module != "networks.lora":
            raise AtelierError(
                f"network_module {self.network_module!r} is not supported; Atelier trains kohya's 'networks.lora'",
                field="network_module",
            )
        if self.save_model_as != "safetensors":
            raise AtelierError(
                f"save_model_as {self.save_model_as!r} is not supported: only 'safetensors' (ckpt and pt files are "
                "pickles, which can carry code)",
                field="save_model_as",
            )
        for key in (
            "network_dim",
            "max_train_steps",
            "gradient_accumulation_steps",
            "train_batch_size",
            "lr_scheduler_num_cycles",
            "clip_skip",
            "num_repeats",
            "class_image_steps",
            "bucket_reso_steps",
        ):
            _at_least(key, getattr(self, key), 1)
        for key in ("max_train_epochs", "save_every_n_epochs", "save_every_n_steps", "sample_every_n_epochs"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 1)
        if self.sample_every_n_steps is not None:
            _at_least("sample_every_n_steps", self.sample_every_n_steps, 1)
        for key in ("keep_tokens", "num_class_images", "max_data_loader_n_workers", "seed"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 0)
        for key in ("noise_offset", "prior_loss_weight", "learning_rate", "max_grad_norm", "lr_warmup_steps"):
            _at_least(key, getattr(self, key), 0)
        for key in ("unet_lr", "text_encoder_lr"):
            if getattr(self, key) is not None:
                _at_least(key, getattr(self, key), 0)
        if self.network_alpha <= 0:
            raise AtelierError(
                f"network_alpha must be positive, got {self.network_alpha}", field="network_alpha"
            )
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise AtelierError(
                f"min_snr_gamma must be positive, got {self.min_snr_gamma}", field="min_snr_gamma"
            )
        if not 0.0 <= self.caption_dropout_rate <= 1.0:
            raise AtelierError(
                f"caption_dropout_rate must be between 0 and 1, got {self.caption_dropout_rate}",
                field="caption_dropout_rate",
            )
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise AtelierError(
                "network_train_unet_only and network_train_text_encoder_only exclude each other",
                field="network_train_unet_only",
            )
        name = self.output_name
        if (
            not name
            or name in (".", "..")
            or any(sep in name for sep in ("/", "\\", "\x00"))
            or name.startswith(".")
        ):
            raise AtelierError(f"output_name {name!r} must be a plain file name", field="output_name")
        self.resolution_size()
        return self

    def resolution_size(self) -> tuple[int, int]:
        """``resolution`` as ``(width, height)``, accepting kohya's ``"512,768"`` spelling."""
        value = self.resolution
        if isinstance(value, str):
            try:
                parts = [int(part) for part in value.split(",")]
            except ValueError:
                parts = []
        elif isinstance(value, list):
            parts = value
        else:
            parts = [value, value]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or any(
            isinstance(p, bool) or not isinstance(p, int) or p < 64 or p % 8 for p in parts
        ):
            raise AtelierError(
                f"resolution must be a multiple of 8 of at least 64, or 'width,height', got {value!r}",
                field="resolution",
            )
        return parts[0], parts[1]

    def warmup_steps(self, total_steps: int) -> int:
        """kohya reads a warmup below 1 as a fraction of the run."""
        if isinstance(self.lr_warmup_steps, float) and self.lr_warmup_steps < 1:
            return math.ceil(self.lr_warmup_steps * total_steps)
        return int(self.lr_warmup_steps)

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.learning_rate if self.text_encoder_lr is None else self.text_encoder_lr

    @property
    def trains_unet(self) -> bool:
        return not self.network_train_text_encoder_only and self.effective_unet_lr > 0

    @property
    def trains_text_encoder(self) -> bool:
        return not self.network_train_unet_only and self.effective_text_encoder_lr > 0

    @property
    def wants_8bit_adam(self) -> bool:
        return self.use_8bit_adam or self.optimizer_type == "AdamW8bit"

    def dataset_defaults(self) -> dict[str, Any]:
        """The dataset settings in the shape of a kohya dataset.toml ``[general]`` table."""
        width, height = self.resolution_size()
        return {
            "resolution": [width, height],
            "batch_size": self.train_batch_size,
            "enable_bucket": self.enable_bucket,
            "min_bucket_reso": self.min_bucket_reso,
            "max_bucket_reso": self.max_bucket_reso,
            "bucket_reso_steps": self.bucket_reso_steps,
            "bucket_no_upscale": self.bucket_no_upscale,
            "caption_extension": self.caption_extension,
            "shuffle_caption": self.shuffle_caption,
            "keep_tokens": self.keep_tokens,
            "caption_dropout_rate": self.caption_dropout_rate,
            "flip_aug": self.flip_aug,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise AtelierError(
            f"{key} must be one of {', '.join(str(choice) for choice in choices)}, got {value!r}", field=key
        )


def _at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise AtelierError(f"{key} must be at least {minimum}, got {value}", field=key)


# ---------------------------------------------------------------------------------------------------------------
# Presets

PRESETS: dict[str, dict[str, Any]] = {
    # The seed article's kohya command line and dataset.toml (SD 1.5, 6 photos of 512x704, 10 repeats).
    "sd15-lora": {
        "sdxl": False,
        "network_module": "networks.lora",
        "max_train_epochs": 10,
        "learning_rate": 1e-4,
        "unet_lr": 1e-4,
        "text_encoder_lr": 1e-5,
        "lr_scheduler": "cosine_with_restarts",
        "lr_scheduler_num_cycles": 1,
        "network_dim": 64,
        "network_alpha": 32.0,
        "save_every_n_epochs": 2,
        "mixed_precision": "fp16",
        "cache_latents": True,
        "gradient_checkpointing": True,
        "clip_skip": 2,
        "prior_loss_weight": 1.0,
        "max_token_length": 225,
        "save_model_as": "safetensors",
        "noise_offset": 0.1,
        "xformers": True,
        "use_8bit_adam": True,
        "resolution": 512,
        "train_batch_size": 2,
        "enable_bucket": True,
        "shuffle_caption": True,
        "caption_extension": ".txt",
        "keep_tokens": 0,
        "num_repeats": 10,
    },
    # diffusers' train_dreambooth_lora_sdxl.py as AutoTrain runs it for the second seed (trigger `oue`, ~20
    # images at 1024 px): UNet-only rank-4 LoRA, 500 steps of batch 1 with 4-step accumulation, constant 1e-4.
    "sdxl-dreambooth-lora": {
        "sdxl": True,
        "network_dim": 4,
        "network_alpha": 4.0,
        "network_train_unet_only": True,
        "learning_rate": 1e-4,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "max_train_steps": 500,
        "train_batch_size": 1,
        "gradient_accumulation_steps": 4,
        "resolution": 1024,
        "enable_bucket": True,
        "min_bucket_reso": 512,
        "max_bucket_reso": 2048,
        "mixed_precision": "fp16",
        "gradient_checkpointing": True,
        "cache_latents": True,
        "cache_text_encoder_outputs": True,
        "prior_loss_weight": 1.0,
    },
}


# ---------------------------------------------------------------------------------------------------------------
# Checking values by their declared types

FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(TrainConfig))


def _alternatives(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _matches(value: Any, expected: Any) -> bool:
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if typing.get_origin(expected) is list:
        (item_type,) = typing.get_args(expected)
        return isinstance(value, list) and all(_matches(item, item_type) for item in value)
    return False


def _describe(annotation: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    parts = []
    for alternative in _alternatives(annotation):
        if alternative is type(None):
            continue
        if typing.get_origin(alternative) is list:
            (item_type,) = typing.get_args(alternative)
            parts.append(f"an array of {names[item_type].removeprefix('an ').removeprefix('a ')}s")
        else:
            parts.append(names[alternative])
    return " or ".join(parts)


def check_value(key: str, value: Any, where: str = "the config") -> Any:
    """Return ``value`` for ``key`` if its type fits TrainConfig's declaration, else raise naming the key."""
    if key not in FIELD_TYPES:
        raise unknown_key(key, where)
    annotation = FIELD_TYPES[key]
    for alternative in _alternatives(annotation):
        if _matches(value, alternative):
            # Keep floats floats: `learning_rate = 1` in TOML is meant as 1.0.
            if alternative is float and isinstance(value, int):
                return float(value)
            return value
    raise AtelierError(
        f"`{key}` in {where} must be {_describe(annotation)}, got {value!r} ({toml_type_name(value)})",
        field=key,
    )


def unknown_key(key: str, where: str) -> AtelierError:
    guess = closest(key, FIELD_NAMES)
    hint = f" (did you mean `{guess}`?)" if guess else ""
    return AtelierError(f"unknown key `{key}` in {where}{hint}", field=key)


def _flatten(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """kohya's config files group keys in sections ([model_arguments], ...) that carry no meaning: flatten them."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in FIELD_TYPES:
            for inner_key, inner_value in value.items():
                flat[inner_key] = inner_value
        else:
            flat[key] = value
    return flat


def _read_toml(path: Path) -> dict[str, Any]:
    return read_toml(path, what="training config", field="config")


def load_train_config(
    path_or_dict: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    *,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Build a checked TrainConfig: defaults, then ``preset``, then the TOML file or dict, then ``overrides``."""
    config = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise AtelierError(
                f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}", field="preset"
            )
        config = replace(config, **PRESETS[preset])
    if path_or_dict is not None:
        if isinstance(path_or_dict, Mapping):
            data, where = dict(path_or_dict), "the config"
        else:
            path = Path(path_or_dict)
            data, where = _read_toml(path), path.name
        config = replace(
            config, **{key: check_value(key, value, where) for key, value in _flatten(data, where).items()}
        )
    if overrides:
        config = replace(
            config, **{key: check_value(key, value, "the overrides") for key, value in overrides.items()}
        )
    return config.validate()
