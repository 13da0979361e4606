"""Engine test fixtures: LoRA files made for the tiny models."""

from __future__ import annotations

import pytest


def _peft_lora_state(pipeline, *, rank: int, seed: int, text_encoder: bool) -> dict:
    """Random (non-zero) LoRA weights for the pipeline's UNet (and text encoders), in diffusers' saved format."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet_config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    pipeline.unet.add_adapter(unet_config, adapter_name="made")
    layers = {"unet_lora_layers": get_peft_model_state_dict(pipeline.unet, adapter_name="made")}
    if text_encoder:
        te_config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights=False,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
        )
        pipeline.text_encoder.add_adapter(te_config, adapter_name="made")
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(
            pipeline.text_encoder, adapter_name="made"
        )
    # Random init at peft's default scale barely moves a tiny model; make the effect visible.
    return {name: {k: v * 4 for k, v in state.items()} for name, state in layers.items()}


def _kohya_name(key: str) -> str:
    """diffusers/peft key -> kohya key for SD 1.5 (kohya names SD 1.5 UNet modules the diffusers way)."""
    prefix, rest = key.split(".", 1)
    module, kind = rest.rsplit(".lora_", 1)
    module = module.replace("text_model.", "")
    base = {"unet": "lora_unet_", "text_encoder": "lora_te_text_model_"}[prefix]
    suffix = {"A.weight": "lora_down.weight", "B.weight": "lora_up.weight"}[kind]
    return base + module.replace(".", "_") + "." + suffix


@pytest.fixture(scope="session")
def make_lora(tiny_models, tmp_path_factory):
    """make_lora(name, folder, arch="sd15", fmt="diffusers"|"kohya", seed=0) -> path of a random LoRA file."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors.torch import save_file

    def make(name: str, folder, *, arch: str = "sd15", fmt: str = "diffusers", seed: int = 0, rank: int = 4):
        import torch

        cls = StableDiffusionXLPipeline if arch == "sdxl" else StableDiffusionPipeline
        pipeline = cls.from_pretrained(str(tiny_models(arch)))
        layers = _peft_lora_state(pipeline, rank=rank, seed=seed, text_encoder=arch == "sd15")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.safetensors"
        if fmt == "diffusers":
            flat = {f"unet.{k}": v for k, v in layers["unet_lora_layers"].items()}
            flat.update(
                {f"text_encoder.{k}": v for k, v in layers.get("text_encoder_lora_layers", {}).items()}
            )
            save_file({k: v.contiguous() for k, v in flat.items()}, path)
        else:
            state = {}
            for component, prefix in (
                ("unet_lora_layers", "unet"),
                ("text_encoder_lora_layers", "text_encoder"),
            ):
                for key, tensor in layers.get(component, {}).items():
                    kohya = _kohya_name(f"{prefix}.{key}")
                    state[kohya] = tensor.contiguous()
                    state[kohya.rsplit(".", 2)[0] + ".alpha"] = torch.tensor(float(rank))
            save_file(state, path, metadata={"ss_network_dim": str(rank), "ss_network_alpha": str(rank)})
        return path

    return make
