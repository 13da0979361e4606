"""Which layers get LoRA, and adding the adapters with peft.

Atelier trains the layers kohya's ``networks.lora`` trains by default, so its files load in A1111 and ComfyUI with
the same coverage users expect from kohya LoRAs:

* UNet: every Linear and 1x1 Conv2d inside a ``Transformer2DModel`` — ``proj_in``/``proj_out`` (1x1 convs in
  SD 1.5, linears in SDXL), the self- and cross-attention projections ``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``, and the feed-forward ``ff.net.0.proj`` and ``ff.net.2``. ResNet convs are not trained (that is
  kohya's optional ``conv_dim``, LoCon).
* Text encoders: every Linear of ``CLIPAttention`` and ``CLIPMLP`` — ``q_proj``, ``k_proj``, ``v_proj``,
  ``out_proj``, ``fc1``, ``fc2`` — and not SDXL's ``text_projection``.

peft's default initialisation is kohya's (down: Kaiming-uniform, up: zeros), so a fresh LoRA changes nothing,
and its scale is ``alpha / rank``, kohya's ``network_alpha / network_dim``.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

UNET_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
ADAPTER_NAME = "default"


def lora_config(rank: int, alpha: float, target_modules: tuple[str, ...]) -> LoraConfig:
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates it int, but a float alpha works (alpha / r)
        init_lora_weights=True,
        target_modules=list(target_modules),
    )


def add_lora(model: Any, rank: int, alpha: float, target_modules: tuple[str, ...]) -> None:
    """Freeze ``model`` and add LoRA adapters (trainable) to its ``target_modules``.

    ``model`` is a diffusers or transformers model: a ``torch.nn.Module`` with peft's ``add_adapter``.
    """
    model.requires_grad_(False)
    model.add_adapter(lora_config(rank, alpha, target_modules))


def unwrap(model: Any) -> Any:
    """The model inside DistributedDataParallel or torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def lora_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights as ``<module>.lora_A.weight`` / ``<module>.lora_B.weight`` (peft names)."""
    return get_peft_model_state_dict(unwrap(model), adapter_name=ADAPTER_NAME)


def adapter_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """The peft LoraConfig as a dict, for diffusers' ``*_lora_adapter_metadata`` (keeps alpha in the file)."""
    return unwrap(model).peft_config[ADAPTER_NAME].to_dict()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def named_trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {
        name: parameter for name, parameter in unwrap(model).named_parameters() if parameter.requires_grad
    }
