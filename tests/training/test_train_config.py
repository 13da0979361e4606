"""Training settings: kohya names as TOML keys and CLI flags, presets, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.cli import build_parser
from atelier.cli.train import _overrides
from atelier.errors import AtelierError
from atelier.training.config import PRESETS, TrainConfig, load_train_config

# The seed article's `accelerate launch train_network.py ...` arguments, verbatim.
SEED_COMMAND_LINE = [
    "--pretrained_model_name_or_path=runwayml/stable-diffusion-v1-5",
    "--dataset_config=./dataset.toml",
    "--output_dir=./output",
    "--logging_dir=./logs",
    "--network_module=networks.lora",
    "--max_train_epochs=10",
    "--learning_rate=1e-4",
    "--unet_lr=1e-4",
    "--text_encoder_lr=1e-5",
    "--lr_scheduler=cosine_with_restarts",
    "--lr_scheduler_num_cycles=1",
    "--network_dim=64",
    "--network_alpha=32",
    "--output_name=lora_wta",
    "--save_every_n_epochs=2",
    "--mixed_precision=fp16",
    "--cache_latents",
    "--gradient_checkpointing",
    "--clip_skip=2",
    "--prior_loss_weight=1",
    "--max_token_length=225",
    "--save_model_as=safetensors",
    "--noise_offset=0.1",
    "--xformers",
    "--use_8bit_adam",
]


def _parse(*argv: str):
    return build_parser().parse_args(["train", *argv])


def test_every_option_of_the_seed_command_line_is_accepted_by_atelier_train() -> None:
    args = _parse(*SEED_COMMAND_LINE)
    config = load_train_config(overrides=_overrides(args))

    assert args.base == Path("runwayml/stable-diffusion-v1-5")
    assert args.out == Path("./output")
    assert config.dataset_config == "./dataset.toml"
    assert config.logging_dir == "./logs"
    assert (config.max_train_epochs, config.learning_rate, config.unet_lr, config.text_encoder_lr) == (
        10,
        1e-4,
        1e-4,
        1e-5,
    )
    assert (config.lr_scheduler, config.lr_scheduler_num_cycles) == ("cosine_with_restarts", 1)
    assert (config.network_dim, config.network_alpha, config.output_name) == (64, 32.0, "lora_wta")
    assert config.save_every_n_epochs == 2 and config.mixed_precision == "fp16"
    assert config.cache_latents and config.gradient_checkpointing and config.xformers and config.use_8bit_adam
    assert (config.clip_skip, config.max_token_length, config.noise_offset) == (2, 225, 0.1)
    assert config.prior_loss_weight == 1.0 and config.save_model_as == "safetensors"


def test_the_sd15_preset_holds_the_seed_values() -> None:
    config = load_train_config(preset="sd15-lora")
    args = _parse(*SEED_COMMAND_LINE)
    from_seed = load_train_config(overrides=_overrides(args))
    for key in (
        "max_train_epochs",
        "unet_lr",
        "text_encoder_lr",
        "lr_scheduler",
        "network_dim",
        "network_alpha",
    ):
        assert getattr(config, key) == getattr(from_seed, key), key
    for key in ("save_every_n_epochs", "mixed_precision", "clip_skip", "max_token_length", "noise_offset"):
        assert getattr(config, key) == getattr(from_seed, key), key
    # ... and the seed's dataset.toml: 512 px, batch 2, buckets, shuffled captions, 10 repeats.
    assert config.resolution_size() == (512, 512) and config.train_batch_size == 2
    assert config.enable_bucket and config.shuffle_caption and config.num_repeats == 10
    assert config.sdxl is False


def test_the_sdxl_preset_is_a_unet_only_dreambooth_lora_at_1024() -> None:
    config = load_train_config(preset="sdxl-dreambooth-lora")
    assert config.sdxl is True and config.resolution_size() == (1024, 1024)
    assert config.network_train_unet_only and not config.trains_text_encoder
    assert config.gradient_accumulation_steps == 4 and config.max_train_steps == 500


def test_flags_accept_dashes_and_underscores_and_beat_the_config_file(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text("network_dim = 16\nnetwork_alpha = 8\nlearning_rate = 0.0002\n", encoding="utf-8")
    args = _parse("--network-dim", "64", "--network_alpha", "32", "--flip-aug", "--shuffle_caption=false")
    config = load_train_config(toml, preset="sd15-lora", overrides=_overrides(args))
    assert (config.network_dim, config.network_alpha, config.learning_rate) == (64, 32.0, 2e-4)
    assert config.flip_aug is True and config.shuffle_caption is False


def test_kohya_config_sections_are_flattened(tmp_path: Path) -> None:
    toml = tmp_path / "kohya.toml"
    toml.write_text(
        "[model_arguments]\nsdxl = true\n[training_arguments]\nmax_train_steps = 7\nresolution = '768,512'\n",
        encoding="utf-8",
    )
    config = load_train_config(toml)
    assert config.sdxl is True and config.max_train_steps == 7 and config.resolution_size() == (768, 512)


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    toml = tmp_path / "train.toml"
    toml.write_text("netwrok_dim = 64\n", encoding="utf-8")
    with pytest.raises(
        AtelierError, match=r"unknown key `netwrok_dim` in train.toml \(did you mean `network_dim`\?\)"
    ):
        load_train_config(toml)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"network_dim": "64"}, r"`network_dim` in the config must be an integer, got '64' \(string\)"),
        ({"cache_latents": 1}, r"`cache_latents` in the config must be true or false, got 1 \(integer\)"),
        ({"learning_rate": True}, r"`learning_rate` in the config must be a number"),
        ({"sample_prompts": [1]}, r"`sample_prompts` .* array of strings"),
        ({"max_token_length": 100}, r"max_token_length must be one of 75, 150, 225"),
        ({"save_model_as": "ckpt"}, r"save_model_as 'ckpt' is not supported"),
        ({"network_module": "lycoris.kohya"}, r"network_module 'lycoris.kohya' is not supported"),
        ({"lr_scheduler": "warmup"}, r"lr_scheduler must be one of"),
        ({"resolution": "512x512"}, r"resolution must be a multiple of 8"),
        ({"output_name": "../escape"}, r"output_name '../escape' must be a plain file name"),
    ],
)
def test_wrong_values_give_one_line_errors_naming_the_key(values: dict, message: str) -> None:
    with pytest.raises(AtelierError, match=message) as raised:
        load_train_config(values)
    assert "\n" not in str(raised.value)


def test_invalid_toml_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("network_dim = = 3\n", encoding="utf-8")
    with pytest.raises(AtelierError, match="broken.toml is not valid TOML"):
        load_train_config(broken)
    with pytest.raises(AtelierError, match="training config not found"):
        load_train_config(tmp_path / "missing.toml")
    with pytest.raises(AtelierError, match="unknown preset 'sd21'"):
        load_train_config(preset="sd21")


def test_learning_rates_warmup_and_what_is_trained() -> None:
    config = TrainConfig(learning_rate=1e-4, text_encoder_lr=0.0, lr_warmup_steps=0.1)
    assert config.effective_unet_lr == 1e-4 and config.trains_unet and not config.trains_text_encoder
    assert config.warmup_steps(95) == 10
    assert TrainConfig(lr_warmup_steps=25).warmup_steps(95) == 25
    assert TrainConfig(use_8bit_adam=True).wants_8bit_adam


def test_presets_only_use_known_keys() -> None:
    for name in PRESETS:
        assert load_train_config(preset=name).validate()
