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
from collections.abc import Callable
from pathlib import Path
from typing import Any

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

    def build(target: Path) -> None:
        if arch in CONTROLNET_ARCHITECTURES:
            build_tiny_controlnet(arch).save_pretrained(str(target), safe_serialization=True)
        else:
            build_tiny_pipeline(arch).save_pretrained(str(target), safe_serialization=True)

    return _write_folder(out_dir, build, architecture=arch, overwrite=overwrite)


# BERT's special tokens first and BLIP's "[DEC]" (its decoder's start token), then enough words that a random
# model's captions are words. The real BLIP vocabulary has 30,524 entries; a test needs none of them.
_TINY_CAPTION_WORDS = (
    "a an the of on in with and photo product red blue white black bag shoe bottle jacket table"
)
TINY_CAPTION_VOCABULARY = (
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "[DEC]",
    *_TINY_CAPTION_WORDS.split(" "),
)
TINY_CAPTION_IMAGE_SIZE = 32


def build_tiny_blip(vocab_file: str | os.PathLike[str]) -> tuple[Any, Any]:
    """A BLIP captioning model (``BlipForConditionalGeneration``) with tiny random weights, and its processor.

    The real architecture (ViT image encoder, BERT text decoder with cross-attention, BlipProcessor) with
    widths, depths, vocabulary and image size shrunk; ``vocab_file`` is where the tokenizer's vocab.txt is.
    """
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessorPil,
        BlipProcessor,
    )

    Path(vocab_file).write_text("\n".join(TINY_CAPTION_VOCABULARY) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), bos_token="[DEC]", model_max_length=128)
    width = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    # With transformers' initial weights (1e-10 in the image encoder, 0.02 in the decoder) a model this small
    # writes the same caption for every picture; larger ones make the caption depend on the picture.
    follow_the_picture = {"initializer_range": 0.1}
    config = BlipConfig(
        text_config={
            **width,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 128,
            "projection_dim": 32,
            # BLIP starts captions with [DEC] and ends them at [SEP], as the real model does.
            "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            **follow_the_picture,
        },
        vision_config={
            **width,
            "image_size": TINY_CAPTION_IMAGE_SIZE,
            "patch_size": 8,
            "projection_dim": 32,
            **follow_the_picture,
        },
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(TINY_SEED)
    model = BlipForConditionalGeneration(config).eval()
    # The PIL image processor: transformers' default one needs torchvision, which Atelier does not install.
    size = {"height": TINY_CAPTION_IMAGE_SIZE, "width": TINY_CAPTION_IMAGE_SIZE}
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size=size), tokenizer=tokenizer)
    return model, processor


def build_tiny_florence2() -> tuple[Any, Any]:
    """A Florence-2 model (transformers' ``Florence2ForConditionalGeneration``) with tiny random weights.

    The real layout (DaViT image encoder, BART encoder-decoder, the processor's ``<image>`` tokens and task
    prompts), shrunk; the tokenizer is byte-level BPE over the 256 byte symbols alone, without merges.
    """
    import torch
    from transformers import (
        BartConfig,
        CLIPImageProcessorPil,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        Florence2VisionConfig,
        RobertaTokenizer,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = ["<s>", "<pad>", "</s>", "<unk>", *bytes_to_unicode().values(), "<mask>", "<image>"]
    tokenizer = RobertaTokenizer(
        vocab={symbol: index for index, symbol in enumerate(symbols)},
        merges=[],
        extra_special_tokens={"image_token": "<image>"},
    )
    text = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
    )
    vision = Florence2VisionConfig(
        depths=(1, 1),
        patch_size=(7, 3),
        patch_stride=(4, 2),
        patch_padding=(3, 1),
        patch_prenorm=(False, True),
        embed_dim=(16, 32),
        num_heads=(2, 4),
        num_groups=(2, 4),
        window_size=2,
        projection_dim=32,
        max_position_embeddings=8,
        max_temporal_embeddings=4,
    )
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    torch.manual_seed(TINY_SEED)
    model = Florence2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # A random model this small often ends at once; an end token that scores 0 lets it write something.
        model.get_output_embeddings().weight[tokenizer.eos_token_id].zero_()
    size = {"height": TINY_CAPTION_IMAGE_SIZE, "width": TINY_CAPTION_IMAGE_SIZE}
    image_processor = CLIPImageProcessorPil(
        size=size,
        crop_size=size,
        do_center_crop=False,
        # 32 px, strides 4 and 2: a 4x4 feature map, plus the pooled token Florence-2 adds.
        image_seq_length=(TINY_CAPTION_IMAGE_SIZE // 8) ** 2 + 1,
    )
    return model, Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)


def create_tiny_captioning_model(
    out_dir: str | os.PathLike[str], *, family: str = "blip", overwrite: bool = False
) -> Path:
    """Write a tiny random-weight captioning model (``blip`` or ``florence2``) as a transformers folder."""
    if family not in ("blip", "florence2"):
        raise AtelierError(f"unknown captioning family {family!r}; choose blip or florence2", field="family")

    def build(target: Path) -> None:
        if family == "blip":
            model, processor = build_tiny_blip(target.parent / "vocab.txt")
        else:
            model, processor = build_tiny_florence2()
        model.save_pretrained(str(target), safe_serialization=True)
        processor.save_pretrained(str(target))

    return _write_folder(out_dir, build, architecture=family, overwrite=overwrite)


def _write_folder(
    out_dir: str | os.PathLike[str], build: Callable[[Path], None], *, architecture: str, overwrite: bool
) -> Path:
    """Build a tiny model into a staging folder beside ``out_dir``, label it, and move it into place."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AtelierError(f"{out} already exists and is not empty", field="dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-tiny-", dir=out.parent))
    try:
        target = staging / "model"
        build(target)
        marker = {"label": DEMO_LABEL, "architecture": architecture, "note": "tiny model with random weights"}
        (target / DEMO_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(target, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
