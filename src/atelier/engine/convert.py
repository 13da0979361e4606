"""Export a diffusers pipeline folder as one original-layout checkpoint (A1111 / ComfyUI ``.safetensors``).

diffusers ships only the other direction (``from_single_file``); this module renames every weight of the UNet,
VAE and text encoder(s) into the key layout of the original Stability/CompVis code, the layout A1111 and
ComfyUI load and ``diffusers.loaders.single_file_utils`` reads back. Tensors are copied as they are, except
where the original modules have a different shape: the VAE mid-block attention (1x1 convs there, linears in
diffusers) and OpenCLIP's fused q/k/v projection and transposed ``text_projection``.

Weights are read with safetensors only: a folder that only has pickled ``.bin`` weights is refused, because
unpickling a user's file can run code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from atelier.engine.architectures import ARCHITECTURES, SDXL_ARCHITECTURES
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.files import write_atomic

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
REFINER_OPENCLIP_PREFIX = "conditioner.embedders.0.model."
TEXT_ENCODERS = {
    "sd15": ("text_encoder",),
    "sd15-inpaint": ("text_encoder",),
    "sdxl": ("text_encoder", "text_encoder_2"),
    "sdxl-refiner": ("text_encoder_2",),
}

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # SDXL's size/crop conditioning; the original code calls it a label embedding.
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}
_UNET_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}
# Folders saved by old diffusers versions still use the query/key/value/proj_attn names.
_VAE_ATTENTION_PARTS = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}
_OPENCLIP_LAYER_PARTS = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}

_DOWN_BLOCK = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_DOWNSAMPLER = re.compile(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)")
_MID_BLOCK = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_UP_BLOCK = re.compile(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)")
_UPSAMPLER = re.compile(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)")
_PARAM = re.compile(r"(.+)\.(weight|bias)")
_VAE_RESNET = re.compile(r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.resnets\.(\d+)\.(.+)")
_VAE_SAMPLER = re.compile(
    r"(encoder\.down_blocks|decoder\.up_blocks)\.(\d+)\.(?:down|up)samplers\.0\.conv\.(.+)"
)
_VAE_MID_RESNET = re.compile(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)")
_VAE_MID_ATTENTION = re.compile(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)")
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")
_CLIP_QKV = re.compile(r"self_attn\.([qkv])_proj")


def diffusers_to_single_file_state_dict(pipeline_dir: str | Path, arch: str) -> dict[str, torch.Tensor]:
    """Read a diffusers folder of ``arch`` and return its weights under the original single-file key names."""
    _check_arch_name(arch)
    folder = Path(pipeline_dir)
    if not folder.is_dir():
        raise NotFoundError(f"model folder {folder} does not exist", field="pipeline_dir")
    unet = _load_component(folder, "unet", "diffusion_pytorch_model")
    # Checked before the other components load, so a wrong arch is named as such rather than as a missing file.
    _check_unet_matches_arch(unet, arch, str(folder))
    vae = _load_component(folder, "vae", "diffusion_pytorch_model")
    encoders = {name: _load_component(folder, name, "model") for name in TEXT_ENCODERS[arch]}
    return _to_single_file(arch, unet, vae, encoders, str(folder))


def components_to_single_file_state_dict(
    arch: str,
    *,
    unet: dict[str, torch.Tensor],
    vae: dict[str, torch.Tensor],
    text_encoder: dict[str, torch.Tensor] | None = None,
    text_encoder_2: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Same conversion for component state dicts already in memory (diffusers / transformers key names)."""
    _check_arch_name(arch)
    given = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for name, state_dict in given.items():
        if (state_dict is not None) != (name in TEXT_ENCODERS[arch]):
            problem = f"needs a {name}" if state_dict is None else f"has no {name}; leave it out"
            raise AtelierError(f"{arch} {problem}", field="arch")
    # Checked above: exactly the arch's text encoders are given.
    encoders = {name: state_dict for name in TEXT_ENCODERS[arch] if (state_dict := given[name]) is not None}
    _check_unet_matches_arch(unet, arch, "the given weights")
    return _to_single_file(arch, unet, vae, encoders, "the given weights")


def save_single_file(
    pipeline_dir: str | Path, out_path: str | Path, arch: str, *, dtype: torch.dtype | None = None
) -> Path:
    """Convert the diffusers folder and write it atomically to ``out_path`` (a ``.safetensors`` file)."""
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise AtelierError(f"output file {out.name!r} must end in .safetensors", field="out_path")
    if dtype is not None and not dtype.is_floating_point:
        raise AtelierError(f"dtype {dtype} is not a floating-point type", field="dtype")
    state_dict = diffusers_to_single_file_state_dict(pipeline_dir, arch)
    # safetensors refuses non-contiguous tensors (the transposed text projection is one).
    state_dict = {
        key: (tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor).contiguous()
        for key, tensor in state_dict.items()
    }
    metadata = {
        "format": "pt",
        "atelier_architecture": arch,
        CONFIG_METADATA_KEY: _folder_configs(Path(pipeline_dir)),
    }
    return write_atomic(out, lambda temp: save_file(state_dict, str(temp), metadata=metadata))


# Atelier-written files carry their diffusers configs, so a file whose sizes differ from the standard architecture
# (a tiny test model, a pruned model) still loads; files from elsewhere fall back to the shipped configs.
CONFIG_METADATA_KEY = "atelier_diffusers_configs"
_CONFIG_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
)


def _folder_configs(folder: Path) -> str:
    configs = {
        name: json.loads((folder / name).read_text()) for name in _CONFIG_FILES if (folder / name).is_file()
    }
    return json.dumps(configs)


def write_embedded_configs(metadata: dict[str, str], out_dir: Path) -> bool:
    """Write the configs stored by :func:`save_single_file` as a diffusers config folder; False if none."""
    raw = metadata.get(CONFIG_METADATA_KEY)
    if not raw:
        return False
    try:
        configs = json.loads(raw)
    except json.JSONDecodeError:
        return False
    for name, config in configs.items():
        if name not in _CONFIG_FILES:
            continue
        target = out_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(config))
    return True


def convert_unet(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers ``UNet2DConditionModel`` weights to the original ``openaimodel.UNetModel`` names."""
    layers_per_block = len({key.split(".")[3] for key in unet if key.startswith("down_blocks.0.resnets.")})
    if layers_per_block == 0:
        raise AtelierError(
            "the UNet weights have no down blocks; is this a Stable Diffusion UNet?", field="unet"
        )
    # The original UNet numbers its blocks flat: each down level has one slot per resnet plus one for the
    # downsampler, each up level one slot per resnet (one more resnet than going down).
    down_stride = layers_per_block + 1
    up_blocks_with_attention = {
        int(key.split(".")[1]) for key in unet if _UP_BLOCK.fullmatch(key) and ".attentions." in key
    }

    converted = {}
    for key, tensor in unet.items():
        converted[unet_key(key, down_stride, up_blocks_with_attention)] = tensor
    return converted


def unet_key(key: str, down_stride: int, up_blocks_with_attention: set[int]) -> str:
    if match := _DOWN_BLOCK.fullmatch(key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = down_stride * level + index + 1
        if kind == "resnets":
            return f"input_blocks.{slot}.0.{_unet_resnet_part(rest, key)}"
        return f"input_blocks.{slot}.1.{rest}"
    if match := _DOWNSAMPLER.fullmatch(key):
        return f"input_blocks.{down_stride * (int(match[1]) + 1)}.0.op.{match[2]}"
    if match := _MID_BLOCK.fullmatch(key):
        kind, index, rest = match[1], int(match[2]), match[3]
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_unet_resnet_part(rest, key)}"
        return f"middle_block.{2 * index + 1}.{rest}"
    if match := _UP_BLOCK.fullmatch(key):
        level, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        slot = down_stride * level + index
        if kind == "resnets":
            return f"output_blocks.{slot}.0.{_unet_resnet_part(rest, key)}"
        return f"output_blocks.{slot}.1.{rest}"
    if match := _UPSAMPLER.fullmatch(key):
        level = int(match[1])
        # The upsampler sits after the level's last resnet, and after its attention when there is one.
        position = 2 if level in up_blocks_with_attention else 1
        return f"output_blocks.{down_stride * level + down_stride - 1}.{position}.conv.{match[2]}"
    if (match := _PARAM.fullmatch(key)) and match[1] in _UNET_TOP_LEVEL:
        return f"{_UNET_TOP_LEVEL[match[1]]}.{match[2]}"
    raise AtelierError(f"UNet weight {key!r} has no place in the original checkpoint layout", field="unet")


def _unet_resnet_part(rest: str, key: str) -> str:
    module, _, param = rest.partition(".")
    if module not in _UNET_RESNET_PARTS:
        raise AtelierError(
            f"UNet weight {key!r} has no place in the original checkpoint layout", field="unet"
        )
    return f"{_UNET_RESNET_PARTS[module]}.{param}"


def convert_vae(vae: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename diffusers ``AutoencoderKL`` weights to the original ``AutoencoderKL`` names and shapes."""
    up_levels = {int(key.split(".")[2]) for key in vae if key.startswith("decoder.up_blocks.")}
    up_level_count = max(up_levels) + 1 if up_levels else 0
    converted = {}
    for key, tensor in vae.items():
        new_key, tensor = _vae_entry(key, tensor, up_level_count)
        converted[new_key] = tensor
    return converted


def _vae_entry(key: str, tensor: torch.Tensor, up_level_count: int) -> tuple[str, torch.Tensor]:
    if match := _VAE_RESNET.fullmatch(key):
        part, level, index, rest = match[1], int(match[2]), match[3], match[4]
        rest = rest.replace("conv_shortcut", "nin_shortcut")
        if part == "encoder.down_blocks":
            return f"encoder.down.{level}.block.{index}.{rest}", tensor
        # The original decoder numbers its levels from the lowest resolution up; diffusers the other way.
        return f"decoder.up.{up_level_count - 1 - level}.block.{index}.{rest}", tensor
    if match := _VAE_SAMPLER.fullmatch(key):
        part, level, param = match[1], int(match[2]), match[3]
        if part == "encoder.down_blocks":
            return f"encoder.down.{level}.downsample.conv.{param}", tensor
        return f"decoder.up.{up_level_count - 1 - level}.upsample.conv.{param}", tensor
    if match := _VAE_MID_RESNET.fullmatch(key):
        side, index, rest = match[1], int(match[2]), match[3]
        return f"{side}.mid.block_{index + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}", tensor
    if (match := _VAE_MID_ATTENTION.fullmatch(key)) and match[2] in _VAE_ATTENTION_PARTS:
        side, part, param = match[1], _VAE_ATTENTION_PARTS[match[2]], match[3]
        if param == "weight" and part != "norm":
            # The original attention projections are 1x1 convolutions.
            tensor = tensor.reshape(*tensor.shape[:2], 1, 1)
        return f"{side}.mid.attn_1.{part}.{param}", tensor
    if (match := _PARAM.fullmatch(key)) and match[1] in _VAE_TOP_LEVEL:
        return f"{_VAE_TOP_LEVEL[match[1]]}.{match[2]}", tensor
    raise AtelierError(f"VAE weight {key!r} has no place in the original checkpoint layout", field="vae")


def convert_clip(text_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIP ViT-L keys as the original checkpoints hold them: the transformers names under ``text_model.``."""
    return {key: tensor for key, tensor in text_encoder.items() if not key.endswith("position_ids")}


def convert_open_clip(text_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers ``CLIPTextModelWithProjection`` weights to OpenCLIP's text tower (SDXL's bigG)."""
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in text_encoder.items():
        if key.endswith("position_ids"):
            continue
        if key == "text_model.embeddings.position_embedding.weight":
            converted["positional_embedding"] = tensor
        elif key == "text_model.embeddings.token_embedding.weight":
            converted["token_embedding.weight"] = tensor
        elif key in ("text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"):
            converted[f"ln_final.{key.rsplit('.', 1)[1]}"] = tensor
        elif key == "text_projection.weight":
            # OpenCLIP multiplies ``x @ text_projection``; a torch Linear stores the transpose.
            converted["text_projection"] = tensor.T
        elif match := _CLIP_LAYER.fullmatch(key):
            layer, module, param = match[1], match[2], match[3]
            if qkv_match := _CLIP_QKV.fullmatch(module):
                qkv.setdefault((layer, param), {})[qkv_match[1]] = tensor
            elif module in _OPENCLIP_LAYER_PARTS:
                converted[f"transformer.resblocks.{layer}.{_OPENCLIP_LAYER_PARTS[module]}.{param}"] = tensor
            else:
                raise AtelierError(f"text encoder weight {key!r} has no place in the OpenCLIP layout")
        else:
            raise AtelierError(f"text encoder weight {key!r} has no place in the OpenCLIP layout")
    # OpenCLIP's nn.MultiheadAttention keeps q, k and v as one stacked in_proj.
    for (layer, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise AtelierError(f"text encoder layer {layer} is missing some of its q/k/v projection {param}s")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]])
        converted[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    return converted


def _to_single_file(
    arch: str,
    unet: dict[str, torch.Tensor],
    vae: dict[str, torch.Tensor],
    encoders: dict[str, dict[str, torch.Tensor]],
    source: str,
) -> dict[str, torch.Tensor]:
    encoders = {name: _clip_with_text_model_prefix(state_dict) for name, state_dict in encoders.items()}
    _check_text_width_matches(unet, encoders, arch, source)
    converted: dict[str, torch.Tensor] = {}
    converted.update(_with_prefix(UNET_PREFIX, convert_unet(unet)))
    converted.update(_with_prefix(VAE_PREFIX, convert_vae(vae)))
    if arch == "sdxl":
        converted.update(_with_prefix(SDXL_CLIP_PREFIX, convert_clip(encoders["text_encoder"])))
        converted.update(_with_prefix(SDXL_OPENCLIP_PREFIX, convert_open_clip(encoders["text_encoder_2"])))
    elif arch == "sdxl-refiner":
        converted.update(_with_prefix(REFINER_OPENCLIP_PREFIX, convert_open_clip(encoders["text_encoder_2"])))
    else:
        converted.update(_with_prefix(SD15_CLIP_PREFIX, convert_clip(encoders["text_encoder"])))
    return converted


def _clip_with_text_model_prefix(text_encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # transformers 5 saves CLIPTextModel without its ``text_model.`` wrapper, CLIPTextModelWithProjection with it;
    # older versions saved both with it. Bring all to the wrapped names.
    return {
        key if key.startswith(("text_model.", "text_projection.")) else f"text_model.{key}": tensor
        for key, tensor in text_encoder.items()
    }


def _check_arch_name(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise AtelierError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}", field="arch"
        )


def _check_unet_matches_arch(unet: dict[str, torch.Tensor], arch: str, source: str) -> None:
    conv_in = unet.get("conv_in.weight")
    if conv_in is None:
        raise AtelierError(
            f"the UNet in {source} has no input convolution; is it a Stable Diffusion model?", field="arch"
        )
    expected_channels = 9 if arch == "sd15-inpaint" else 4
    if conv_in.shape[1] != expected_channels:
        raise AtelierError(
            f"the UNet in {source} has {conv_in.shape[1]} input channels, but {arch} needs {expected_channels}",
            field="arch",
        )
    is_sdxl_unet = "add_embedding.linear_1.weight" in unet
    if is_sdxl_unet != (arch in SDXL_ARCHITECTURES):
        kind = "an SDXL" if is_sdxl_unet else "an SD 1.5"
        raise AtelierError(f"{source} holds {kind} UNet, not {arch}", field="arch")


def _check_text_width_matches(
    unet: dict[str, torch.Tensor], encoders: dict[str, dict[str, torch.Tensor]], arch: str, source: str
) -> None:
    encoder_width = 0
    for name, state_dict in encoders.items():
        token_embedding = state_dict.get("text_model.embeddings.token_embedding.weight")
        if token_embedding is None:
            raise AtelierError(f"the {name} in {source} has no token embedding; is it a CLIP text model?")
        encoder_width += token_embedding.shape[1]
    # The UNet's cross-attention reads the concatenated hidden states of all text encoders; a mismatch means
    # another architecture (e.g. an SDXL base passed as refiner, which would silently lose its CLIP-L).
    context_width = next((t.shape[1] for k, t in unet.items() if k.endswith("attn2.to_k.weight")), None)
    if context_width is not None and context_width != encoder_width:
        raise AtelierError(
            f"the UNet in {source} expects text features of width {context_width}, but the text encoders of "
            f"{arch} ({', '.join(encoders)}) give {encoder_width}",
            field="arch",
        )


def _with_prefix(prefix: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state_dict.items()}


def _load_component(folder: Path, subfolder: str, stem: str) -> dict[str, torch.Tensor]:
    component_dir = folder / subfolder
    single = component_dir / f"{stem}.safetensors"
    index = component_dir / f"{stem}.safetensors.index.json"
    if single.is_file():
        return _read_safetensors(single)
    if index.is_file():
        return _read_sharded(index)
    if any(component_dir.glob(f"{stem}*.bin")):
        raise UnsafeFileError(
            f"{component_dir} only has pickled .bin weights, which Atelier does not load; "
            "re-save the model with safetensors",
            field="pipeline_dir",
        )
    raise NotFoundError(f"{component_dir} has no {stem}.safetensors", field="pipeline_dir")


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AtelierError(f"cannot read shard index {index}: {exc}", field="pipeline_dir") from exc
    if not isinstance(weight_map, dict):
        raise AtelierError(f"shard index {index} has no weight_map object", field="pipeline_dir")
    state_dict: dict[str, torch.Tensor] = {}
    for shard_name in dict.fromkeys(weight_map.values()):
        if (
            not isinstance(shard_name, str)
            or Path(shard_name).name != shard_name
            or shard_name in ("", ".", "..")
        ):
            raise UnsafeFileError(f"shard index {index} names a file outside its folder: {shard_name!r}")
        state_dict.update(_read_safetensors(index.parent / shard_name))
    return state_dict


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AtelierError(f"cannot read {path}: {exc}", field="pipeline_dir") from exc
