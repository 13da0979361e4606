"""Writing trained LoRAs: the kohya/A1111 ``.safetensors`` layout with ``ss_*`` metadata, and diffusers' layout.

**kohya / A1111 / ComfyUI** (``<output_name>.safetensors``): one entry per trained layer,
``<name>.lora_down.weight``, ``<name>.lora_up.weight`` and a scalar ``<name>.alpha``. Names are the module path
with dots turned into underscores, prefixed ``lora_unet_``, ``lora_te_`` (SD 1.5) or ``lora_te1_`` / ``lora_te2_``
(SDXL's two encoders):

* SD 1.5 UNet names are diffusers module paths (kohya trains SD 1.5 on a diffusers-layout UNet):
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``.
* SDXL UNet names are the original (sgm/LDM) module paths, because kohya trains SDXL on that UNet:
  ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``; the renaming is the engine's
  diffusers-to-single-file mapping (:mod:`atelier.engine.convert`).
* Text-encoder names start with ``text_model_`` (``lora_te_text_model_encoder_layers_0_self_attn_q_proj``), the
  spelling A1111 matches against its CLIP modules. transformers 5 dropped that level from ``CLIPTextModel``, so
  it is put back here.

**diffusers** (``pytorch_lora_weights.safetensors``): written by the pipeline class's own ``save_lora_weights``
from peft's state dicts, with the peft ``LoraConfig`` as adapter metadata so ``load_lora_weights`` restores
``alpha`` (not just the rank). Text-encoder keys keep the ``text_model.`` prefix of transformers 4, which
diffusers strips itself when the installed transformers lacks it, so the file loads with either version.

Both files are written to a temporary file in the same folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save, save_file

from atelier.engine import DIFFUSERS_LORA_FILE, unet_key
from atelier.files import TEMP_PREFIX, write_atomic
from atelier.training.buckets import bucket_info
from atelier.training.config import TrainConfig
from atelier.training.dataset import ImageItem, tag_frequency
from atelier.training.dataset_config import DatasetConfig
from atelier.training.rights import RightsRecord

DIFFUSERS_WEIGHT_NAME = DIFFUSERS_LORA_FILE
SAVE_DTYPES = {"float": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# kohya's ss_base_model_version values.
BASE_MODEL_VERSIONS = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
_MODELSPEC_ARCHITECTURES = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
_TEXT_ENCODER_PREFIXES = {"sd15": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}


def _module_names(peft_state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    return sorted({key.rsplit(".lora_", 1)[0] for key in peft_state_dict})


def kohya_unet_name(module: str, family: str, layers_per_block: int) -> str:
    """kohya's name for a diffusers UNet module path (``down_blocks.1.attentions.0.proj_in``)."""
    if family == "sdxl":
        # The original UNet numbers its input blocks flat: one slot per resnet plus one per downsampler.
        module = unet_key(module, layers_per_block + 1, set())
    return "lora_unet_" + module.replace(".", "_")


def kohya_text_encoder_name(module: str, prefix: str) -> str:
    """kohya's name for a CLIP module path, with the ``text_model`` level A1111 expects."""
    return prefix + "text_model_" + module.removeprefix("text_model.").replace(".", "_")


def _add_entries(
    target: dict[str, torch.Tensor],
    peft_state_dict: Mapping[str, torch.Tensor],
    name_of: Any,
    alpha: float,
    dtype: torch.dtype,
) -> None:
    for module in _module_names(peft_state_dict):
        name = name_of(module)
        target[f"{name}.lora_down.weight"] = (
            peft_state_dict[f"{module}.lora_A.weight"].detach().to("cpu", dtype)
        )
        target[f"{name}.lora_up.weight"] = (
            peft_state_dict[f"{module}.lora_B.weight"].detach().to("cpu", dtype)
        )
        target[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)


def to_kohya_state_dict(
    *,
    family: str,
    unet: Mapping[str, torch.Tensor] | None,
    text_encoders: Sequence[Mapping[str, torch.Tensor] | None],
    alpha: float,
    layers_per_block: int,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """kohya/A1111 tensors from peft state dicts of the UNet and the text encoder(s) (None: not trained)."""
    tensors: dict[str, torch.Tensor] = {}
    if unet:
        _add_entries(
            tensors, unet, lambda module: kohya_unet_name(module, family, layers_per_block), alpha, dtype
        )
    for prefix, encoder in zip(_TEXT_ENCODER_PREFIXES[family], text_encoders, strict=True):
        if encoder:
            _add_entries(
                tensors, encoder, lambda module, p=prefix: kohya_text_encoder_name(module, p), alpha, dtype
            )
    return {key: tensor.contiguous() for key, tensor in tensors.items()}


def addnet_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a safetensors file's data section: what A1111 and kohya record as ``sshs_model_hash``.

    The data section does not depend on the metadata, so the hash can be stored in the file it describes.
    """
    serialized = save(dict(tensors))
    (header_length,) = struct.unpack("<Q", serialized[:8])
    return hashlib.sha256(serialized[8 + header_length :]).hexdigest()


def _atomic_save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str]) -> Path:
    return write_atomic(path, lambda temp: save_file(dict(tensors), str(temp), metadata=dict(metadata)))


def save_kohya_lora(
    path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Path:
    """Write the kohya/A1111 file atomically, adding ``sshs_model_hash`` to the metadata."""
    full_metadata = {**metadata, "sshs_model_hash": addnet_hash(tensors)}
    return _atomic_save(tensors, Path(path), full_metadata)


def _with_text_model_prefix(
    state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    return {
        "text_model." + key.removeprefix("text_model."): value.to(dtype) for key, value in state_dict.items()
    }


def save_diffusers_lora(
    path: str | os.PathLike[str],
    pipeline_class: Any,
    *,
    unet: Mapping[str, torch.Tensor] | None,
    unet_config: Mapping[str, Any] | None,
    text_encoders: Sequence[tuple[Mapping[str, torch.Tensor], Mapping[str, Any]] | None],
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with diffusers' own ``save_lora_weights``, atomically.

    ``text_encoders`` holds ``(peft state dict, LoraConfig dict)`` per encoder in pipeline order, None for an
    encoder that was not trained.
    """
    target = Path(path)
    kwargs: dict[str, Any] = {}
    if unet:
        kwargs["unet_lora_layers"] = {key: value.to(dtype) for key, value in unet.items()}
        kwargs["unet_lora_adapter_metadata"] = dict(unet_config or {})
    for name, encoder in zip(("text_encoder", "text_encoder_2"), text_encoders, strict=False):
        if encoder is None:
            continue
        state_dict, config = encoder
        kwargs[f"{name}_lora_layers"] = _with_text_model_prefix(state_dict, dtype)
        kwargs[f"{name}_lora_adapter_metadata"] = dict(config)

    def write(temp: Path) -> None:
        # diffusers writes into a folder by name; its file then becomes the atomic writer's temporary file.
        staging = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=temp.parent))
        try:
            pipeline_class.save_lora_weights(str(staging), weight_name=DIFFUSERS_WEIGHT_NAME, **kwargs)
            os.replace(staging / DIFFUSERS_WEIGHT_NAME, temp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    return write_atomic(target, write)


@dataclass
class RunInfo:
    """Facts about a training run that go into the ``ss_*`` metadata, beside the TrainConfig."""

    family: str
    base_model_name: str
    base_model_hash: str | None
    resolution: tuple[int, int]
    num_train_images: int
    num_reg_images: int
    num_batches_per_epoch: int
    num_epochs: int
    max_train_steps: int
    total_batch_size: int
    seed: int
    optimizer: str
    mixed_precision: str
    session_id: int
    training_started_at: float
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    bucket_info: dict[str, Any] | None = field(default_factory=dict)
    reg_dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    # With a dataset config: one entry per [[datasets]] in kohya's ``ss_datasets`` shape (see datasets_metadata).
    datasets: list[dict[str, Any]] | None = None
    # What the LoRA learned from, as one hash (run_report.dataset_sha256): the images' bytes and captions.
    dataset_sha256: str | None = None
    # Who owns the images and the consent of the people shown (atelier.training.rights), when recorded.
    rights: RightsRecord | None = None


def _text(value: Any) -> str:
    # kohya writes Python's str() of each value (True, None, 0.0001), and json.dumps (its defaults: ASCII, ", "
    # and ": ") for the nested tables.
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


# kohya writes these only without --dataset_config; with one, each dataset's own values are in ss_datasets.
_SINGLE_DATASET_KEYS = (
    "ss_batch_size_per_device",
    "ss_total_batch_size",
    "ss_resolution",
    "ss_color_aug",
    "ss_flip_aug",
    "ss_random_crop",
    "ss_shuffle_caption",
    "ss_enable_bucket",
    "ss_bucket_no_upscale",
    "ss_min_bucket_reso",
    "ss_max_bucket_reso",
    "ss_keep_tokens",
    "ss_reg_dataset_dirs",
    "ss_bucket_info",
)


def dataset_dirs(subsets: Sequence[tuple[str, int, int]]) -> dict[str, dict[str, int]]:
    """kohya's ``ss_dataset_dirs``: ``(folder name, repeats, image count)`` per subset; a repeated name gets
    " (2)", " (3)"... as kohya names it when several datasets use folders of the same name."""
    dirs: dict[str, dict[str, int]] = {}
    for name, repeats, count in subsets:
        key, number = name, 1
        while key in dirs:
            number += 1
            key = f"{name} ({number})"
        dirs[key] = {"n_repeats": repeats, "img_count": count}
    return dirs


def datasets_metadata(
    datasets: Sequence[DatasetConfig],
    items: Sequence[Sequence[ImageItem]],
    assigned: Sequence[Sequence[tuple[ImageItem, tuple[int, int]]]],
) -> list[dict[str, Any]]:
    """kohya's ``ss_datasets``: what each dataset of a ``dataset.toml`` really trained with.

    Keys, order and values as kohya's ``train_network.py`` writes them for DreamBooth-style datasets (every
    Atelier dataset is one: images with caption files). Options Atelier does not implement are recorded at the
    value they had in effect (``color_aug`` and ``random_crop`` off, no caption prefix or wildcard).
    """
    entries = []
    for dataset, dataset_items, dataset_assigned in zip(datasets, items, assigned, strict=True):
        subsets = []
        for subset in dataset.subsets:
            count = sum(1 for item in dataset_items if item.subset is subset)
            if count == 0:
                continue  # kohya drops a subset without images from the dataset
            subsets.append(
                {
                    "img_count": count,
                    "num_repeats": subset.num_repeats,
                    "color_aug": False,
                    "flip_aug": subset.flip_aug,
                    "random_crop": False,
                    "shuffle_caption": subset.shuffle_caption,
                    "keep_tokens": subset.keep_tokens,
                    "keep_tokens_separator": "",
                    "secondary_separator": None,
                    "enable_wildcard": False,
                    "caption_prefix": None,
                    "caption_suffix": None,
                    "resize_interpolation": None,
                    "image_dir": subset.image_dir.name,
                    "class_tokens": subset.class_tokens,
                    "is_reg": subset.is_reg,
                }
            )
        bucketed = dataset.enable_bucket
        entries.append(
            {
                "is_dreambooth": True,
                "batch_size_per_device": dataset.batch_size,
                "num_train_images": sum(item.repeats for item in dataset_items if not item.is_reg),
                "num_reg_images": sum(item.repeats for item in dataset_items if item.is_reg),
                "resolution": list(dataset.resolution),
                "enable_bucket": bucketed,
                "min_bucket_reso": dataset.min_bucket_reso if bucketed else None,
                "max_bucket_reso": dataset.max_bucket_reso if bucketed else None,
                "tag_frequency": tag_frequency(dataset_items),
                "bucket_info": _json_safe(bucket_info(dataset_assigned)) if bucketed else None,
                "resize_interpolation": None,
                "subsets": subsets,
            }
        )
    return entries


def _json_safe(value: Any) -> Any:
    """Tuples as lists and integer keys as strings, as they come back from JSON."""
    return json.loads(json.dumps(value))


def kohya_metadata(
    config: TrainConfig,
    run: RunInfo,
    *,
    epoch: int,
    steps: int,
    finished_at: float | None = None,
) -> dict[str, str]:
    """kohya's ``ss_*`` training metadata (and sai ``modelspec.*``) for a file saved at ``epoch`` / ``steps``."""
    width, height = run.resolution
    values: dict[str, Any] = {
        "ss_session_id": run.session_id,
        "ss_training_started_at": run.training_started_at,
        "ss_training_finished_at": finished_at,
        "ss_output_name": config.output_name,
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": config.effective_unet_lr if config.trains_unet else 0.0,
        "ss_text_encoder_lr": config.effective_text_encoder_lr if config.trains_text_encoder else 0.0,
        "ss_num_train_images": run.num_train_images,
        "ss_num_reg_images": run.num_reg_images,
        "ss_num_batches_per_epoch": run.num_batches_per_epoch,
        "ss_num_epochs": run.num_epochs,
        "ss_epoch": epoch,
        "ss_steps": steps,
        "ss_batch_size_per_device": config.train_batch_size,
        "ss_total_batch_size": run.total_batch_size,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_max_train_steps": run.max_train_steps,
        "ss_lr_warmup_steps": config.warmup_steps(run.max_train_steps),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_scheduler_num_cycles": config.lr_scheduler_num_cycles,
        "ss_base_model_version": BASE_MODEL_VERSIONS[run.family],
        "ss_network_module": config.network_module,
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": config.network_alpha,
        "ss_network_train_unet_only": not config.trains_text_encoder,
        "ss_mixed_precision": run.mixed_precision,
        "ss_full_fp16": False,
        "ss_v2": False,
        "ss_sd_model_name": run.base_model_name,
        "ss_resolution": (width, height),
        "ss_clip_skip": config.clip_skip,
        "ss_max_token_length": config.max_token_length,
        "ss_cache_latents": config.cache_latents or config.cache_latents_to_disk,
        "ss_seed": run.seed,
        "ss_noise_offset": config.noise_offset,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_optimizer": run.optimizer,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_shuffle_caption": config.shuffle_caption,
        "ss_keep_tokens": config.keep_tokens,
        "ss_color_aug": False,
        "ss_flip_aug": config.flip_aug,
        "ss_random_crop": False,
        "ss_enable_bucket": config.enable_bucket,
        # kohya: no bucket sizes (None) and no upscale rule when bucketing is off.
        "ss_min_bucket_reso": config.min_bucket_reso if config.enable_bucket else None,
        "ss_max_bucket_reso": config.max_bucket_reso if config.enable_bucket else None,
        "ss_bucket_no_upscale": config.bucket_no_upscale and config.enable_bucket,
        "ss_tag_frequency": run.tag_frequency,
        "ss_dataset_dirs": run.dataset_dirs,
        "ss_reg_dataset_dirs": run.reg_dataset_dirs,
        # Already JSON: kohya writes json.dumps(None), "null", without bucketing.
        "ss_bucket_info": json.dumps(run.bucket_info if config.enable_bucket else None),
        "ss_training_comment": config.training_comment,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": _MODELSPEC_ARCHITECTURES[run.family],
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models"
        if run.family == "sdxl"
        else "diffusers",
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": datetime.fromtimestamp(finished_at or run.training_started_at, UTC)
        .date()
        .isoformat(),
    }
    if run.base_model_hash:
        values["ss_new_sd_model_hash"] = run.base_model_hash
    if run.dataset_sha256:
        # kohya has no key for it; named like modelspec's keys, so no future ss_* key can collide with it.
        values["atelier.dataset_sha256"] = run.dataset_sha256
    if run.rights is not None:
        values.update(run.rights.metadata())
    if run.datasets is not None:
        for key in _SINGLE_DATASET_KEYS:
            values.pop(key, None)
        values["ss_datasets"] = run.datasets
    return {key: _text(value) for key, value in values.items()}
