"""End-to-end LoRA training on tiny models: files A1111 and diffusers load, resume, prior preservation, bad input."""

from __future__ import annotations

import json
import re
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from atelier.errors import AtelierError, UnsafeFileError
from atelier.training.config import load_train_config
from atelier.training.recipe import TrainProgress, train_lora

REQUIRED_METADATA = (
    "ss_network_dim",
    "ss_network_alpha",
    "ss_base_model_version",
    "ss_sd_model_name",
    "ss_resolution",
    "ss_num_train_images",
    "ss_num_epochs",
    "ss_max_train_steps",
    "ss_tag_frequency",
    "ss_training_started_at",
    "ss_training_finished_at",
    "ss_network_module",
    "ss_output_name",
    "ss_learning_rate",
    "ss_unet_lr",
    "ss_text_encoder_lr",
    "ss_seed",
    "ss_clip_skip",
    "ss_noise_offset",
    "sshs_model_hash",
)
TINY = {
    "resolution": 64,
    "min_bucket_reso": 32,
    "max_bucket_reso": 128,
    "bucket_reso_steps": 32,
    "train_batch_size": 2,
    "network_dim": 4,
    "network_alpha": 2.0,
    # A large rate so three steps change the picture clearly.
    "learning_rate": 0.05,
    "max_data_loader_n_workers": 0,
    "seed": 1,
    "max_train_steps": 3,
}


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def _config(**overrides: Any):
    return load_train_config({**TINY, **overrides})


def _dataset(folder: Path, *, captions: bool = True, repeats: int = 1) -> Path:
    images = folder / f"{repeats}_oue car"
    images.mkdir(parents=True)
    for index, size in enumerate([(64, 64), (96, 64), (64, 96), (80, 80)]):
        pixels = np.random.default_rng(index).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"car{index}.png")
        if captions:
            (images / f"car{index}.txt").write_text(
                f"oue car, photo {index}, red, studio\n", encoding="utf-8"
            )
    return folder


def _kohya_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118


def _check_kohya_names(keys: list[str], text_encoder_prefixes: tuple[str, ...]) -> None:
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in keys}
    for module in modules:
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"} <= set(keys), (
            module
        )
        assert module.startswith(("lora_unet_", *text_encoder_prefixes)), module
        if not module.startswith("lora_unet_"):
            assert re.match(r"lora_te[12]?_text_model_encoder_layers_\d+_(self_attn|mlp)_", module), module
    assert len(keys) == 3 * len(modules)


def _image(pipeline: Any) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(3)
    with torch.no_grad():
        result = pipeline(
            prompt="oue car, photo",
            num_inference_steps=3,
            height=64,
            width=64,
            guidance_scale=5.0,
            generator=generator,
            output_type="np",
        )
    return result.images[0] * 255


def _same_picture_from_both_files(
    pipeline_class: Any, model: Path, kohya: Path, diffusers_file: Path
) -> None:
    """THE interop check: the kohya file and the diffusers file, loaded by plain diffusers, give one picture."""
    pipeline = pipeline_class.from_pretrained(str(model))
    pipeline.set_progress_bar_config(disable=True)
    without_lora = _image(pipeline)
    pipeline.load_lora_weights(str(kohya))
    with_kohya = _image(pipeline)
    pipeline.unload_lora_weights()
    np.testing.assert_array_equal(_image(pipeline), without_lora)
    pipeline.load_lora_weights(str(diffusers_file))
    with_diffusers = _image(pipeline)
    assert np.abs(with_kohya - with_diffusers).max() <= 2
    assert np.abs(with_kohya - without_lora).max() > 2


def test_sd15_lora_gives_the_same_picture_from_the_kohya_and_the_diffusers_file(
    tiny_models, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionPipeline

    model = tiny_models("sd15")
    data = _dataset(tmp_path / "data")
    config = _config(
        max_train_epochs=2,
        save_every_n_epochs=1,
        sample_every_n_epochs=1,
        sample_prompts=["oue car --n blurry --w 64 --h 64 --d 7 --s 2 --l 6"],
        output_name="oue_car",
        noise_offset=0.1,
        clip_skip=2,
    )
    progress: list[TrainProgress] = []
    result = train_lora(
        config, data=data, base_model=model, out_dir=tmp_path / "run", on_progress=progress.append
    )

    run = tmp_path / "run"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "run"]
    assert result.output_file == run / "oue_car.safetensors"
    assert result.diffusers_file == run / "pytorch_lora_weights.safetensors"
    assert result.epoch_files == [run / "oue_car-000001.safetensors"]
    assert [path.name for path in result.samples] == ["oue_car_e000001_00_7.png", "oue_car_e000002_00_7.png"]
    for name in ("loss.png", "summary.json", "state.safetensors", "logs/loss.csv"):
        assert (run / name).is_file(), name
    total = progress[-1].total_steps
    assert [p.step for p in progress] == list(range(1, total + 1)) and total == len(result.loss_curve)
    assert progress[-1].epoch == 2 and progress[-1].it_per_s > 0
    assert any(p.samples for p in progress)

    tensors, metadata = _kohya_file(result.output_file)
    _check_kohya_names(list(tensors), ("lora_te_",))
    assert any(key.startswith("lora_te_") for key in tensors)
    assert any(key.startswith("lora_unet_down_blocks_0_attentions_0_proj_in") for key in tensors)
    assert all(metadata.get(key) not in (None, "") for key in REQUIRED_METADATA)
    assert metadata["ss_base_model_version"] == "sd_v1" and metadata["ss_network_dim"] == "4"
    assert metadata["ss_num_epochs"] == "2" and metadata["ss_sd_model_name"] == model.name
    assert json.loads(metadata["ss_tag_frequency"])["1_oue car"]["oue car"] == 4
    with safe_open(str(result.diffusers_file), framework="pt") as handle:
        prefixes = {key.split(".", 1)[0] for key in handle.keys()}  # noqa: SIM118
    assert prefixes == {"unet", "text_encoder"}

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["progress"]["steps"] == total
    assert summary["outputs"]["kohya"] == "oue_car.safetensors"
    assert summary["parameters"]["network_dim"] == 4 and summary["timings"]["training_seconds"] > 0

    _same_picture_from_both_files(StableDiffusionPipeline, model, result.output_file, result.diffusers_file)


def test_sdxl_lora_with_both_text_encoders_loads_in_diffusers_from_both_files(
    tiny_models, tmp_path: Path
) -> None:
    from diffusers import StableDiffusionXLPipeline

    model = tiny_models("sdxl")
    # No seed: one is drawn and recorded, so the run can be repeated.
    config = _config(sdxl=True, max_token_length=150, seed=None)
    result = train_lora(config, data=_dataset(tmp_path / "data"), base_model=model, out_dir=tmp_path / "run")

    tensors, metadata = _kohya_file(result.output_file)
    _check_kohya_names(list(tensors), ("lora_te1_", "lora_te2_"))
    assert {key.split("_text_model")[0] for key in tensors if key.startswith("lora_te")} == {
        "lora_te1",
        "lora_te2",
    }
    # kohya's SDXL UNet names are the original UNet's: input_blocks / middle_block / output_blocks.
    unet_keys = [key for key in tensors if key.startswith("lora_unet_")]
    assert unet_keys and all(
        re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_\d", k) for k in unet_keys
    )
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert all(metadata.get(key) not in (None, "") for key in REQUIRED_METADATA)
    assert metadata["ss_seed"] == str(result.summary["effective"]["seed"])

    _same_picture_from_both_files(StableDiffusionXLPipeline, model, result.output_file, result.diffusers_file)


def test_a_stopped_run_resumes_to_the_same_lora_as_an_uninterrupted_one(tiny_models, tmp_path: Path) -> None:
    model = tiny_models("sd15")
    data = _dataset(tmp_path / "data", repeats=2)
    settings = dict(
        max_train_steps=4,
        gradient_accumulation_steps=2,
        lr_scheduler="cosine_with_restarts",
        lr_scheduler_num_cycles=2,
        lr_warmup_steps=1,
        flip_aug=True,
        shuffle_caption=True,
        caption_dropout_rate=0.2,
        min_snr_gamma=5.0,
        max_token_length=150,
        cache_latents_to_disk=True,
        max_data_loader_n_workers=1,
        learning_rate=1e-3,
    )
    straight = train_lora(_config(**settings), data=data, base_model=model, out_dir=tmp_path / "straight")

    steps_seen: list[int] = []
    stopped = train_lora(
        _config(**settings),
        data=data,
        base_model=model,
        out_dir=tmp_path / "resumed",
        on_progress=lambda progress: steps_seen.append(progress.step),
        should_stop=lambda: len(steps_seen) >= 2,
    )
    assert stopped.stopped and stopped.output_file is None and steps_seen == [1, 2]
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["status"] == "stopped"
    assert not (tmp_path / "resumed" / "lora.safetensors").exists()

    resumed = train_lora(
        _config(**settings),
        data=data,
        base_model=model,
        out_dir=tmp_path / "resumed",
        resume=True,
        on_progress=lambda progress: steps_seen.append(progress.step),
    )
    assert steps_seen == [1, 2, 3, 4]
    # (step, loss) pairs: the same steps, the same losses within float noise.
    assert [step for step, _ in resumed.loss_curve] == [step for step, _ in straight.loss_curve]
    assert [loss for _, loss in resumed.loss_curve] == pytest.approx(
        [loss for _, loss in straight.loss_curve]
    )
    expected, _ = _kohya_file(straight.output_file)
    actual, _ = _kohya_file(resumed.output_file)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6)
    assert list((tmp_path / "resumed" / "latent_cache").glob("*.safetensors"))


def test_prior_preservation_generates_class_images_from_the_class_prompt(tiny_models, tmp_path: Path) -> None:
    config = _config(
        max_train_steps=1,
        class_prompt="photo of a car",
        num_class_images=2,
        class_image_steps=2,
        prior_loss_weight=0.5,
        instance_prompt="photo of oue car",
    )
    result = train_lora(
        config,
        data=_dataset(tmp_path / "data", captions=False),
        base_model=tiny_models("sd15"),
        out_dir=tmp_path / "run",
    )
    class_images = sorted((tmp_path / "run" / "class_images").glob("*.png"))
    assert len(class_images) == 2
    assert all(path.with_suffix(".txt").read_text().strip() == "photo of a car" for path in class_images)
    dataset = result.summary["dataset"]
    # Regularization repeats are balanced to the training images, as kohya does.
    assert dataset["train_images"] == 4 and dataset["reg_images"] == 4
    # Uncaptioned images take their folder's class tokens first (kohya's rule), the instance prompt otherwise;
    # kohya counts the regularization folders' tags too.
    assert dataset["tag_frequency"] == {"1_oue car": {"oue car": 4}, "class_images": {"photo of a car": 2}}
    assert any("no caption" in warning for warning in result.summary["warnings"])


def _zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def _png_bytes() -> bytes:
    buffer = BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _corrupt_zip(folder: Path) -> Path:
    path = folder / "bad.zip"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    return path


BAD_INPUTS = {
    "corrupt zip": (_corrupt_zip, None, AtelierError, "not a valid zip"),
    "escaping zip": (
        lambda d: _zip(d / "evil.zip", {"../evil.png": _png_bytes()}),
        None,
        UnsafeFileError,
        "outside",
    ),
    "zip bomb": (
        lambda d: _zip(d / "bomb.zip", {"a.png": bytes(3 * 1024 * 1024)}),
        None,
        UnsafeFileError,
        "zip bomb",
    ),
    "no images": (
        lambda d: _zip(d / "text.zip", {"notes/readme.txt": b"hi"}),
        None,
        AtelierError,
        "no training images",
    ),
    "truncated image": (
        lambda d: _zip(d / "cut.zip", {"a.png": _png_bytes()[:60], "a.txt": b"oue car"}),
        None,
        AtelierError,
        "not a readable image",
    ),
    "empty caption": (
        lambda d: _zip(d / "empty.zip", {"a.png": _png_bytes(), "a.txt": b"  \n"}),
        None,
        AtelierError,
        "caption file .* is empty",
    ),
    "preset for another base model": (
        lambda d: _dataset(d / "data"),
        "sdxl-dreambooth-lora",
        AtelierError,
        "is an SD 1.5 model, but the training settings",
    ),
}


@pytest.mark.parametrize(
    ("make_data", "preset", "error", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys()
)
def test_bad_input_is_a_clear_error_and_leaves_nothing_behind(
    tiny_models, tmp_path: Path, make_data: Any, preset: str | None, error: type, message: str
) -> None:
    model = tiny_models("sd15")
    data = make_data(tmp_path)
    before = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*"))
    config = load_train_config(TINY, preset=preset)
    with pytest.raises(error, match=message) as raised:
        train_lora(config, data=data, base_model=model, out_dir=tmp_path / "run")
    assert "\n" not in str(raised.value)
    assert sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*")) == before


def test_a_used_run_folder_needs_resume_and_resume_needs_state(tiny_models, tmp_path: Path) -> None:
    model, data = tiny_models("sd15"), _dataset(tmp_path / "data")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old.txt").write_text("earlier run")
    with pytest.raises(AtelierError, match="is not empty"):
        train_lora(_config(), data=data, base_model=model, out_dir=tmp_path / "run")
    with pytest.raises(AtelierError, match="no saved training state"):
        train_lora(_config(), data=data, base_model=model, out_dir=tmp_path / "run", resume=True)
    assert [path.name for path in (tmp_path / "run").iterdir()] == ["old.txt"]


def test_the_seed_workflow_zip_dataset_toml_and_sd15_preset(
    tiny_models, tmp_path: Path, seed_dataset_toml: str
) -> None:
    """The first seed: training_data.zip with sample/ (6 photos of 512x704, .txt captions), its dataset.toml and
    its kohya settings (the sd15-lora preset), shortened to one step."""
    archive = tmp_path / "training_data.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for index in range(1, 7):
            pixels = np.random.default_rng(index).integers(0, 255, (704, 512, 3), dtype=np.uint8)
            buffer = BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            bundle.writestr(f"images/sample/{index}.png", buffer.getvalue())
            bundle.writestr(f"images/sample/{index}.txt", f"wta woman, photo {index}, smiling\n")
    (tmp_path / "dataset.toml").write_text(seed_dataset_toml, encoding="utf-8")
    config = load_train_config(
        preset="sd15-lora",
        overrides={"max_train_epochs": None, "max_train_steps": 1, "max_data_loader_n_workers": 0, "seed": 2},
    )

    result = train_lora(
        config,
        data=archive,
        base_model=tiny_models("sd15"),
        out_dir=tmp_path / "run",
        dataset_config=tmp_path / "dataset.toml",
    )

    tensors, metadata = _kohya_file(result.output_file)
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == ("64", "32.0")
    assert (metadata["ss_clip_skip"], metadata["ss_max_token_length"], metadata["ss_noise_offset"]) == (
        "2",
        "225",
        "0.1",
    )
    assert metadata["ss_num_train_images"] == "60"
    # With a dataset.toml, kohya records each dataset's own resolution and batch size in ss_datasets.
    (dataset,) = json.loads(metadata["ss_datasets"])
    assert (dataset["resolution"], dataset["batch_size_per_device"]) == ([512, 512], 2)
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 64
    # One step moved the zero-initialised up weights of UNet and text encoder through gradient checkpointing.
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"].abs().max() > 0
    assert tensors["lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"].abs().max() > 0
    effective = result.summary["effective"]
    assert effective["optimizer"] == "torch.optim.AdamW" and effective["latent_cache"] == "memory"
    warnings = " ".join(result.summary["warnings"])
    assert "8-bit AdamW is not available" in warnings and "needs a GPU" in warnings
    assert list(result.summary["dataset"]["folders"]) == ["sample"]


# kohya's train_network.py writes these only without --dataset_config (read from its metadata code).
_KOHYA_SINGLE_DATASET_KEYS = {
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
}


def test_a_dataset_config_is_recorded_as_kohya_records_it(tmp_path, tiny_models):
    """ss_* metadata says what training really used: each dataset's size, batch, buckets and subsets."""
    data = _dataset(tmp_path / "data", repeats=2)  # "2_oue car": 4 captioned images
    reg = tmp_path / "data" / "reg"
    reg.mkdir()
    for index in range(2):
        Image.new("RGB", (64, 64), (index * 90, 40, 40)).save(reg / f"car{index}.png")
    (tmp_path / "data" / "dataset.toml").write_text(
        """
[general]
shuffle_caption = true
caption_extension = ".txt"

[[datasets]]
resolution = 64
batch_size = 2
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32

  [[datasets.subsets]]
  image_dir = "2_oue car"
  num_repeats = 3
  keep_tokens = 1
  flip_aug = true

  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  class_tokens = "car"

[[datasets]]
resolution = [64, 64]
batch_size = 1
enable_bucket = false

  [[datasets.subsets]]
  image_dir = "2_oue car"
  shuffle_caption = false
""",
        encoding="utf-8",
    )
    result = train_lora(
        _config(max_train_steps=1),
        data=data,
        base_model=tiny_models("sd15"),
        out_dir=tmp_path / "run",
        dataset_config=tmp_path / "data" / "dataset.toml",
    )
    _, metadata = _kohya_file(result.output_file)
    assert not _KOHYA_SINGLE_DATASET_KEYS & metadata.keys()
    datasets = json.loads(metadata["ss_datasets"])
    assert [list(entry) for entry in datasets] == [
        [
            "is_dreambooth",
            "batch_size_per_device",
            "num_train_images",
            "num_reg_images",
            "resolution",
            "enable_bucket",
            "min_bucket_reso",
            "max_bucket_reso",
            "tag_frequency",
            "bucket_info",
            "resize_interpolation",
            "subsets",
        ]
    ] * 2
    first, second = datasets
    assert first["batch_size_per_device"] == 2 and second["batch_size_per_device"] == 1
    assert first["num_train_images"] == 12 and second["num_train_images"] == 4  # 4 images x 3, x 1
    assert first["num_reg_images"] > 0 and second["num_reg_images"] == 0
    assert first["resolution"] == [64, 64] and first["enable_bucket"] is True
    assert (first["min_bucket_reso"], first["max_bucket_reso"]) == (32, 128)
    assert (second["enable_bucket"], second["min_bucket_reso"], second["bucket_info"]) == (False, None, None)
    assert (
        sum(bucket["count"] for bucket in first["bucket_info"]["buckets"].values())
        == 12 + first["num_reg_images"]
    )
    assert first["tag_frequency"]["2_oue car"]["oue car"] == 4  # per image, not per repeat
    product, regularisation = first["subsets"]
    assert product == {
        "img_count": 4,
        "num_repeats": 3,
        "color_aug": False,
        "flip_aug": True,
        "random_crop": False,
        "shuffle_caption": True,
        "keep_tokens": 1,
        "keep_tokens_separator": "",
        "secondary_separator": None,
        "enable_wildcard": False,
        "caption_prefix": None,
        "caption_suffix": None,
        "resize_interpolation": None,
        "image_dir": "2_oue car",
        # With a dataset config kohya reads no repeats or class tokens from folder names, and neither does Atelier.
        "class_tokens": None,
        "is_reg": False,
    }
    assert (regularisation["image_dir"], regularisation["is_reg"], regularisation["class_tokens"]) == (
        "reg",
        True,
        "car",
    )
    assert second["subsets"][0]["shuffle_caption"] is False
    # Top level: the non-regularisation folders of every dataset, a repeated name numbered as kohya numbers it.
    assert json.loads(metadata["ss_dataset_dirs"]) == {
        "2_oue car": {"n_repeats": 3, "img_count": 4},
        "2_oue car (2)": {"n_repeats": 1, "img_count": 4},
    }
    assert set(json.loads(metadata["ss_tag_frequency"])) == {"2_oue car", "reg"}
    assert metadata["ss_num_train_images"] == "16"


def test_without_a_dataset_config_the_single_dataset_keys_are_kohyas(tmp_path, tiny_models):
    data = _dataset(tmp_path / "data", repeats=2)
    result = train_lora(
        _config(max_train_steps=1, enable_bucket=False),
        data=data,
        base_model=tiny_models("sd15"),
        out_dir=tmp_path / "run",
    )
    _, metadata = _kohya_file(result.output_file)
    assert "ss_datasets" not in metadata
    assert metadata["ss_resolution"] == "(64, 64)" and metadata["ss_batch_size_per_device"] == "2"
    assert (metadata["ss_color_aug"], metadata["ss_random_crop"], metadata["ss_enable_bucket"]) == (
        "False",
        "False",
        "False",
    )
    # kohya: no bucket sizes and "null" bucket info when bucketing is off.
    assert (metadata["ss_min_bucket_reso"], metadata["ss_max_bucket_reso"]) == ("None", "None")
    assert metadata["ss_bucket_info"] == "null" and metadata["ss_reg_dataset_dirs"] == "{}"
    assert json.loads(metadata["ss_dataset_dirs"]) == {"2_oue car": {"n_repeats": 2, "img_count": 4}}
