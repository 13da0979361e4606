"""Atelier's generation engine: model files, prompt conditioning, samplers, LoRAs, ControlNet, generation.

A pure library (no web, no database). The layers above (training, campaign, service, cli) use it through the
names below and nothing else; ``make lint`` checks that. Names load on first use (PEP 562), so
``from atelier.engine import check_name`` costs nothing while ``Engine`` brings torch and diffusers in: the
command line stays quick for commands that need no model.

The modules, for reading: ``paths`` (names, pickle refusal, headers), ``architectures``, ``models`` (detect,
validate, load, hash), ``cache`` (warm models), ``library`` (models in folders by name), ``tokenizer``,
``tiny``, ``convert``, ``samplers``, ``conditioning``, ``loras``, ``controlnet``, ``preprocessors``,
``masks``, ``request``, ``generate``, ``infotext``, ``output``, ``provenance`` (AI disclosure, the one
image encoder), ``credentials`` (C2PA), ``sources`` (what made a picture), ``versions``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atelier.lazy import lazy_exports

# name -> the module that defines it
_EXPORTS = {
    # what a model path may be
    "PICKLE_SUFFIXES": "paths",
    "check_name": "paths",
    "read_safetensors_header": "paths",
    "refuse_pickle": "paths",
    # architectures and model files
    "ARCHITECTURES": "architectures",
    "CONTROLNET_ARCHITECTURES": "architectures",
    "DEMO_LABEL": "architectures",
    "SDXL_ARCHITECTURES": "architectures",
    "base_family": "architectures",
    "LoadedModel": "models",
    "ModelCache": "models",
    "detect_architecture": "models",
    "display_name": "models",
    "load_model": "models",
    "model_sha256": "models",
    "safetensors_kind": "models",
    "validate_safetensors": "models",
    "DEMO_MODEL_NAME": "library",
    "ModelLibrary": "library",
    "create_tiny_model": "tiny",
    "save_single_file": "convert",
    "unet_key": "convert",
    "CLIP_L_REPO": "tokenizer",
    "cached_tokenizer_folder": "tokenizer",
    "clip_backend": "tokenizer",
    "clip_tokenizer": "tokenizer",
    "check_libraries": "versions",
    # generation
    "Engine": "generate",
    "PRECISIONS": "precision",
    "check_precision": "precision",
    "resolve_precision": "precision",
    "precision_name": "precision",
    "COMPILE_MODES": "speed",
    "SpeedSettings": "speed",
    "default_device": "runtime",
    "vram_stats": "memory",
    "CAPTIONING_FOLDER": "captioning",
    "Captioner": "captioning",
    "captioning_model_hint": "captioning",
    "find_captioning_model": "captioning",
    "list_captioning_models": "captioning",
    "LinearPreview": "previews",
    "check_same_size": "masks",
    "composite_over_original": "masks",
    "fill_masked": "masks",
    "BUILTIN_UPSCALERS": "upscalers",
    "check_upscaler_name": "upscalers",
    "upscale": "upscalers",
    "tile_boxes": "upscalers",
    "merge_tiles": "upscalers",
    "LATENT_UPSCALE_MODES": "hires",
    "PreviewDecoders": "previews",
    "TaesdPreview": "previews",
    "GeneratedImage": "generate",
    "GenerationCanceled": "progress",
    "GenerationRequest": "request",
    "INPAINTING_FILL_MODES": "request",
    "SAMPLER_NAMES": "samplers",
    "SCHEDULE_TYPES": "samplers",
    "resolve_sampler": "samplers",
    "supported_schedule_types": "samplers",
    "DIFFUSERS_LORA_FILE": "loras",
    "Embedding": "embeddings",
    "EmbeddingLibrary": "embeddings",
    "embedding_family": "embeddings",
    "VaeLibrary": "vae",
    "is_vae_keys": "vae",
    "vae_sha256": "vae",
    "LoraLibrary": "loras",
    "inspect_lora": "loras",
    "lora_sha256": "loras",
    # ControlNet
    "CONTROL_MODES": "controlnet",
    "ControlNetLibrary": "controlnet",
    "ControlUnit": "controlnet",
    "detect_controlnet_architecture": "controlnet",
    "MODULES": "preprocessors",
    "MODULE_ALIASES": "preprocessors",
    "PROCESSOR_RES_RANGE": "preprocessors",
    "RESIZE_MODES": "preprocessors",
    "canonical_module": "preprocessors",
    "model_folder": "preprocessors",
    "needs_model": "preprocessors",
    "preprocess": "preprocessors",
    # outputs
    "format_infotext": "infotext",
    "parse_infotext": "infotext",
    "read_infotext": "infotext",
    "write_png": "infotext",
    "output_filename": "output",
    "save_image": "output",
    # AI disclosure and Content Credentials
    "COMPOSITE": "provenance",
    "DEFAULT_QUALITY": "provenance",
    "GENERATED": "provenance",
    "MIXED": "provenance",
    "OUTPUT_FORMATS": "provenance",
    "Ingredient": "provenance",
    "Provenance": "provenance",
    "check_output_format": "provenance",
    "combined_source_type": "provenance",
    "convert_image": "provenance",
    "declared_source_type": "provenance",
    "encode_image": "provenance",
    "finish_file": "provenance",
    "sniff_mime": "provenance",
    "source_type_of": "provenance",
    "write_image": "provenance",
    "ContentSigner": "credentials",
    "Credentials": "credentials",
    "read_credentials": "credentials",
    "signer_from_settings": "credentials",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # the same names, for type checkers and editors
    from atelier.engine.architectures import (
        ARCHITECTURES,
        CONTROLNET_ARCHITECTURES,
        DEMO_LABEL,
        SDXL_ARCHITECTURES,
        base_family,
    )
    from atelier.engine.captioning import (
        CAPTIONING_FOLDER,
        Captioner,
        captioning_model_hint,
        find_captioning_model,
        list_captioning_models,
    )
    from atelier.engine.controlnet import (
        CONTROL_MODES,
        ControlNetLibrary,
        ControlUnit,
        detect_controlnet_architecture,
    )
    from atelier.engine.convert import save_single_file, unet_key
    from atelier.engine.credentials import ContentSigner, Credentials, read_credentials, signer_from_settings
    from atelier.engine.embeddings import Embedding, EmbeddingLibrary, embedding_family
    from atelier.engine.generate import Engine, GeneratedImage
    from atelier.engine.hires import LATENT_UPSCALE_MODES
    from atelier.engine.infotext import format_infotext, parse_infotext, read_infotext, write_png
    from atelier.engine.library import DEMO_MODEL_NAME, ModelLibrary
    from atelier.engine.loras import DIFFUSERS_LORA_FILE, LoraLibrary, inspect_lora, lora_sha256
    from atelier.engine.masks import check_same_size, composite_over_original, fill_masked
    from atelier.engine.memory import vram_stats
    from atelier.engine.models import (
        LoadedModel,
        ModelCache,
        detect_architecture,
        display_name,
        load_model,
        model_sha256,
        safetensors_kind,
        validate_safetensors,
    )
    from atelier.engine.output import output_filename, save_image
    from atelier.engine.paths import PICKLE_SUFFIXES, check_name, read_safetensors_header, refuse_pickle
    from atelier.engine.precision import PRECISIONS, check_precision, precision_name, resolve_precision
    from atelier.engine.preprocessors import (
        MODULE_ALIASES,
        MODULES,
        PROCESSOR_RES_RANGE,
        RESIZE_MODES,
        canonical_module,
        model_folder,
        needs_model,
        preprocess,
    )
    from atelier.engine.previews import LinearPreview, PreviewDecoders, TaesdPreview
    from atelier.engine.progress import GenerationCanceled
    from atelier.engine.provenance import (
        COMPOSITE,
        DEFAULT_QUALITY,
        GENERATED,
        MIXED,
        OUTPUT_FORMATS,
        Ingredient,
        Provenance,
        check_output_format,
        combined_source_type,
        convert_image,
        declared_source_type,
        encode_image,
        finish_file,
        sniff_mime,
        source_type_of,
        write_image,
    )
    from atelier.engine.request import INPAINTING_FILL_MODES, GenerationRequest
    from atelier.engine.runtime import default_device
    from atelier.engine.samplers import (
        SAMPLER_NAMES,
        SCHEDULE_TYPES,
        resolve_sampler,
        supported_schedule_types,
    )
    from atelier.engine.speed import COMPILE_MODES, SpeedSettings
    from atelier.engine.tiny import create_tiny_model
    from atelier.engine.tokenizer import CLIP_L_REPO, cached_tokenizer_folder, clip_backend, clip_tokenizer
    from atelier.engine.upscalers import (
        BUILTIN_UPSCALERS,
        check_upscaler_name,
        merge_tiles,
        tile_boxes,
        upscale,
    )
    from atelier.engine.vae import VaeLibrary, is_vae_keys, vae_sha256
    from atelier.engine.versions import check_libraries
