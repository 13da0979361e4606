"""kohya/A1111 LoRA names, the sshs hash, ss_* metadata, and the diffusers file."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from atelier.training.config import TrainConfig
from atelier.training.lora_files import (
    RunInfo,
    kohya_metadata,
    kohya_text_encoder_name,
    kohya_unet_name,
    save_kohya_lora,
    to_kohya_state_dict,
)


@pytest.mark.parametrize(
    ("module", "family", "layers", "expected"),
    [
        # SD 1.5: kohya keeps diffusers module paths.
        (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "sd15",
            2,
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        ),
        ("mid_block.attentions.0.proj_in", "sd15", 2, "lora_unet_mid_block_attentions_0_proj_in"),
        # SDXL (2 resnets per level): kohya uses the original UNet's flat block numbers.
        (
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
            "sdxl",
            2,
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        ),
        ("down_blocks.2.attentions.1.proj_out", "sdxl", 2, "lora_unet_input_blocks_8_1_proj_out"),
        (
            "mid_block.attentions.0.transformer_blocks.9.ff.net.2",
            "sdxl",
            2,
            "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
        ),
        (
            "up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0",
            "sdxl",
            2,
            "lora_unet_output_blocks_2_1_transformer_blocks_0_attn2_to_out_0",
        ),
    ],
)
def test_unet_names_match_kohya(module: str, family: str, layers: int, expected: str) -> None:
    assert kohya_unet_name(module, family, layers) == expected


def test_text_encoder_names_carry_text_model_whatever_transformers_calls_it() -> None:
    # transformers 5 CLIPTextModel paths have no text_model; CLIPTextModelWithProjection's still do.
    assert (
        kohya_text_encoder_name("encoder.layers.0.self_attn.q_proj", "lora_te_")
        == "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    )
    assert (
        kohya_text_encoder_name("text_model.encoder.layers.3.mlp.fc2", "lora_te2_")
        == "lora_te2_text_model_encoder_layers_3_mlp_fc2"
    )


def _peft(module: str, rank: int = 4, width: int = 8) -> dict[str, torch.Tensor]:
    return {
        f"{module}.lora_A.weight": torch.randn(rank, width),
        f"{module}.lora_B.weight": torch.randn(width, rank),
    }


def test_kohya_state_dict_has_down_up_alpha_per_layer() -> None:
    tensors = to_kohya_state_dict(
        family="sdxl",
        unet=_peft("down_blocks.1.attentions.0.proj_in"),
        text_encoders=[_peft("encoder.layers.0.mlp.fc1"), None],
        alpha=2.0,
        layers_per_block=2,
        dtype=torch.float16,
    )
    assert sorted(tensors) == [
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight",
        "lora_unet_input_blocks_4_1_proj_in.alpha",
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight",
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight",
    ]
    assert tensors["lora_unet_input_blocks_4_1_proj_in.alpha"].item() == 2.0
    assert all(tensor.dtype == torch.float16 for tensor in tensors.values())


def _run_info() -> RunInfo:
    return RunInfo(
        family="sd15",
        base_model_name="v1-5-pruned.safetensors",
        base_model_hash="ab" * 32,
        resolution=(512, 512),
        num_train_images=60,
        num_reg_images=0,
        num_batches_per_epoch=30,
        num_epochs=10,
        max_train_steps=300,
        total_batch_size=2,
        seed=42,
        optimizer="torch.optim.AdamW",
        mixed_precision="fp16",
        session_id=42,
        training_started_at=1_700_000_000.0,
        tag_frequency={"10_wta woman": {"wta woman": 6, "smiling": 6}},
        dataset_dirs={"10_wta woman": {"n_repeats": 10, "img_count": 6}},
    )


def test_saved_file_has_ss_metadata_and_a1111s_hash(tmp_path: Path) -> None:
    config = TrainConfig(
        network_dim=64, network_alpha=32.0, output_name="lora_wta", noise_offset=0.1, clip_skip=2
    )
    tensors = to_kohya_state_dict(
        family="sd15",
        unet=_peft("down_blocks.0.attentions.0.proj_in"),
        text_encoders=[None],
        alpha=32.0,
        layers_per_block=2,
    )
    metadata = kohya_metadata(config, _run_info(), epoch=10, steps=300, finished_at=1_700_000_600.0)
    path = save_kohya_lora(tmp_path / "lora_wta.safetensors", tensors, metadata)

    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()
    assert stored["ss_network_dim"] == "64" and stored["ss_network_alpha"] == "32.0"
    assert (
        stored["ss_base_model_version"] == "sd_v1" and stored["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    )
    assert stored["ss_resolution"] == "(512, 512)" and stored["ss_num_train_images"] == "60"
    assert stored["ss_num_epochs"] == "10" and stored["ss_max_train_steps"] == "300"
    assert json.loads(stored["ss_tag_frequency"]) == {"10_wta woman": {"wta woman": 6, "smiling": 6}}
    assert float(stored["ss_training_finished_at"]) > float(stored["ss_training_started_at"])
    assert stored["ss_clip_skip"] == "2" and stored["ss_noise_offset"] == "0.1"
    assert stored["ss_output_name"] == "lora_wta" and stored["ss_network_module"] == "networks.lora"
    # A1111 hashes LoRAs by the bytes after the safetensors header and trusts sshs_model_hash when present.
    raw = path.read_bytes()
    (header_length,) = struct.unpack("<Q", raw[:8])
    assert stored["sshs_model_hash"] == hashlib.sha256(raw[8 + header_length :]).hexdigest()
    assert [p.name for p in tmp_path.iterdir()] == ["lora_wta.safetensors"]
