"""Tiny models with random weights, shaped like the real architectures, for tests and the demo.

They keep everything that makes latent-size and conditioning bugs visible: a 4-block VAE (8x downscale), the
real UNet block layout per architecture, SDXL's two text encoders and its size/crop conditioning, the inpainting
UNet's 9 input channels. Only widths and depths are shrunk. A marker file labels them "demo: random weights".

Tiny ControlNets are derived from the tiny UNets (diffusers' ``ControlNetModel.from_unet``). A real ControlNet
starts with zero output convolutions and does nothing until trained; the tiny ones get seeded random weights
there, so that tests can see their effect.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from atelier.engine.architectures import (
    ARCHITECTURES,
    CONTROLNET_ARCHITECTURES,
    DEMO_LABEL,
    DEMO_MARKER,
    config_dir,
)
from atelier.engine.tokenizer import clip_tokenizer
from atelier.errors import AtelierError

TINY_SEED = 0


def _tiny_text_encoder_config(
    vocab_size: int, *, hidden_act: str = "quick_gelu", width: int = 32, layers: int = 3
) -> dict:
    return {
        "hidden_size": width,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": layers,
        "max_position_embeddings": 77,
        "projection_dim": width,
        "vocab_size": vocab_size,
        "hidden_act": hidden_act,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
    }


def _tiny_text_encoder(cls, config: dict):
    """A text encoder whose output is not zero-mean, like a trained one.

    Freshly initialised, the final layer norm has weight 1 and bias 0, so every token's output averages to
    exactly 0; A1111's emphasis divides by that average and a tiny model would give NaN images for some
    prompts. A trained CLIP's layer norm has a bias, and so do the tiny models' (seeded by the caller).
    """
    import torch
    from transformers import CLIPTextConfig

    model = cls(CLIPTextConfig(**config))
    with torch.no_grad():
        # transformers 5 keeps the layers on the model itself, 4.x under .text_model.
        bias = getattr(model, "text_model", model).final_layer_norm.bias
        bias.copy_(0.2 + 0.1 * torch.randn(bias.shape))
    return model


def _tiny_vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _tiny_sd15_unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=16,
    )


# The second (OpenCLIP-shaped) encoder differs in width from the first and has 10 layers, because diffusers tells
# SDXL single files apart by the existence of layer 9 and by encoder widths.
TINY_TE2_WIDTH = 48
TINY_TE2_LAYERS = 10


def _tiny_sdxl_unet(*, cross_attention_dim: int, time_inputs: int):
    from diffusers import UNet2DConditionModel

    addition_time_embed_dim = 8
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=time_inputs * addition_time_embed_dim + TINY_TE2_WIDTH,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=16,
    )


def _scheduler(arch: str):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    config = json.loads((config_dir(arch) / "scheduler" / "scheduler_config.json").read_text())
    cls = PNDMScheduler if config["_class_name"] == "PNDMScheduler" else EulerDiscreteScheduler
    return cls.from_config(config)


def build_tiny_pipeline(arch: str):
    """Return a diffusers pipeline of the given architecture with tiny random weights (seeded, reproducible).

    The tokenizers are the real ones (CLIP's 49,408-token vocabulary), so tests see real token counts, chunking
    and padding; only the widths and depths of the networks are tiny.
    """
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if arch not in ARCHITECTURES:
        raise AtelierError(
            f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}", field="arch"
        )
    tokenizer = clip_tokenizer("clip-l")
    vocab_size = len(tokenizer)
    torch.manual_seed(TINY_SEED)
    if arch in ("sd15", "sd15-inpaint"):
        from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

        cls = StableDiffusionInpaintPipeline if arch == "sd15-inpaint" else StableDiffusionPipeline
        return cls(
            vae=_tiny_vae(0.18215),
            text_encoder=_tiny_text_encoder(CLIPTextModel, _tiny_text_encoder_config(vocab_size)),
            tokenizer=tokenizer,
            unet=_tiny_sd15_unet(9 if arch == "sd15-inpaint" else 4),
            scheduler=_scheduler(arch),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    tokenizer_2 = clip_tokenizer("clip-g")
    text_encoder_2 = _tiny_text_encoder(
        CLIPTextModelWithProjection,
        _tiny_text_encoder_config(
            vocab_size, hidden_act="gelu", width=TINY_TE2_WIDTH, layers=TINY_TE2_LAYERS
        ),
    )
    if arch == "sdxl":
        return StableDiffusionXLPipeline(
            vae=_tiny_vae(0.13025),
            text_encoder=_tiny_text_encoder(CLIPTextModel, _tiny_text_encoder_config(vocab_size)),
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=_tiny_sdxl_unet(cross_attention_dim=32 + TINY_TE2_WIDTH, time_inputs=6),
            scheduler=_scheduler(arch),
        )
    return StableDiffusionXLImg2ImgPipeline(
        vae=_tiny_vae(0.13025),
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=tokenizer_2,
        unet=_tiny_sdxl_unet(cross_attention_dim=TINY_TE2_WIDTH, time_inputs=5),
        scheduler=_scheduler(arch),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


# Large enough to change a tiny model's picture visibly, small enough to keep its latents in range.
TINY_CONTROLNET_OUTPUT_STD = 0.1


def build_tiny_controlnet(arch: str):
    """A ControlNet shaped like the tiny SD 1.5 or SDXL UNet, with non-zero (seeded) output convolutions."""
    import torch
    from diffusers import ControlNetModel

    if arch not in CONTROLNET_ARCHITECTURES:
        raise AtelierError(
            f"unknown ControlNet architecture {arch!r}; choose one of {', '.join(CONTROLNET_ARCHITECTURES)}",
            field="arch",
        )
    torch.manual_seed(TINY_SEED)
    if arch == "controlnet-sd15":
        unet = _tiny_sd15_unet(4)
    else:
        unet = _tiny_sdxl_unet(cross_attention_dim=32 + TINY_TE2_WIDTH, time_inputs=6)
    # Three stride-2 convolutions bring the control image to latent size (8x down), as in real ControlNets.
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    embedding = controlnet.controlnet_cond_embedding
    zero_initialised = [
        embedding.conv_out,
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
    ]
    generator = torch.Generator().manual_seed(TINY_SEED)
    with torch.no_grad():
        # With PyTorch's default init the control image fades to a constant over the embedding's SiLU layers;
        # a He-like gain keeps its content, so the tiny ControlNet follows the picture it is given.
        for conv in [embedding.conv_in, *embedding.blocks]:
            fan_in = conv.weight[0].numel()
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 2.0 / math.sqrt(fan_in))
            conv.bias.zero_()
        for conv in zero_initialised:
            for parameter in conv.parameters():
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator) * TINY_CONTROLNET_OUTPUT_STD
                )
    return controlnet


def create_tiny_model(arch: str, out_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a tiny random-weight model (or ControlNet) of ``arch`` as a diffusers folder (safetensors)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AtelierError(f"{out} already exists and is not empty", field="dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-tiny-", dir=out.parent))
    try:
        target = staging / "model"
        if arch in CONTROLNET_ARCHITECTURES:
            build_tiny_controlnet(arch).save_pretrained(str(target), safe_serialization=True)
        else:
            build_tiny_pipeline(arch).save_pretrained(str(target), safe_serialization=True)
        marker = {"label": DEMO_LABEL, "architecture": arch, "note": "tiny model with random weights"}
        (target / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
