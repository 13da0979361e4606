"""diffusers folder -> original single-file checkpoint, checked by loading the result with diffusers' own
single-file loader (the direction Atelier uses to import A1111/ComfyUI checkpoints)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from atelier.engine.convert import diffusers_to_single_file_state_dict, save_single_file
from atelier.engine.tiny import TINY_TE2_WIDTH
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pipeline_class(arch: str):
    from diffusers import (
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    return {
        "sd15": StableDiffusionPipeline,
        "sd15-inpaint": StableDiffusionInpaintPipeline,
        "sdxl": StableDiffusionXLPipeline,
        "sdxl-refiner": StableDiffusionXLImg2ImgPipeline,
    }[arch]


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, tuple[str, Path, Path]]:
    """name -> (arch, diffusers folder, converted single file)."""
    root = tmp_path_factory.mktemp("convert")
    folders = {
        arch: (arch, Path(tiny_models(arch))) for arch in ("sd15", "sd15-inpaint", "sdxl", "sdxl-refiner")
    }
    return {
        name: (arch, folder, save_single_file(folder, root / f"{name.replace(', ', '-')}.safetensors", arch))
        for name, (arch, folder) in folders.items()
    }


def _assert_same_weights(original: torch.nn.Module, loaded: torch.nn.Module) -> None:
    expected, actual = original.state_dict(), loaded.state_dict()
    assert set(actual) == set(expected)
    not_loaded = [key for key, tensor in actual.items() if tensor.is_meta]
    assert not not_loaded, f"left uninitialised by the loader: {not_loaded}"
    different = [key for key in expected if not torch.equal(expected[key], actual[key])]
    assert not different, f"weights differ: {different}"


def _load_both(models, name: str):
    arch, folder, single_file = models[name]
    cls = _pipeline_class(arch)
    original = cls.from_pretrained(folder, local_files_only=True)
    loaded = cls.from_single_file(str(single_file), config=str(folder), local_files_only=True)
    return original, loaded


@pytest.mark.parametrize("name", ["sd15", "sd15-inpaint", "sdxl", "sdxl-refiner"])
def test_single_file_loads_back_with_identical_weights(models, name):
    original, loaded = _load_both(models, name)
    components = ["unet", "vae", "text_encoder", "text_encoder_2"]
    compared = [c for c in components if getattr(original, c, None) is not None]
    for component in compared:
        _assert_same_weights(getattr(original, component), getattr(loaded, component))
    expected_encoders = {
        "sd15": ["text_encoder"],
        "sd15-inpaint": ["text_encoder"],
        "sdxl": ["text_encoder", "text_encoder_2"],
        "sdxl-refiner": ["text_encoder_2"],
    }[models[name][0]]
    assert [c for c in compared if c.startswith("text_encoder")] == expected_encoders


@pytest.mark.parametrize(
    ("name", "model_type"),
    [
        ("sd15", "v1"),
        ("sd15-inpaint", "inpainting"),
        ("sdxl", "xl_base"),
        ("sdxl-refiner", "xl_refiner"),
    ],
)
def test_diffusers_recognises_the_architecture(models, name, model_type):
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    assert infer_diffusers_model_type(load_file(models[name][2])) == model_type


@pytest.mark.parametrize(
    ("arch", "model_type"),
    [("sd15", "v1"), ("sd15-inpaint", "inpainting"), ("sdxl", "xl_base"), ("sdxl-refiner", "xl_refiner")],
)
def test_real_size_layout_round_trips_through_diffusers_converters(arch, model_type):
    """Full-size architectures (shipped configs) on the meta device: no memory, real key names and shapes."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from atelier.engine.architectures import config_dir
    from atelier.engine.convert import components_to_single_file_state_dict

    configs = config_dir(arch)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((configs / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((configs / "vae" / "config.json").read_text()))
        encoders = {
            name: cls(CLIPTextConfig.from_pretrained(configs / name))
            for name, cls in (
                ("text_encoder", CLIPTextModel),
                ("text_encoder_2", CLIPTextModelWithProjection),
            )
            if (configs / name).is_dir()
        }
    checkpoint = components_to_single_file_state_dict(
        arch,
        unet=unet.state_dict(),
        vae=vae.state_dict(),
        **{name: encoder.state_dict() for name, encoder in encoders.items()},
    )

    assert single_file_utils.infer_diffusers_model_type(checkpoint) == model_type
    read_back = {
        unet: single_file_utils.convert_ldm_unet_checkpoint(checkpoint, dict(unet.config)),
        vae: single_file_utils.convert_ldm_vae_checkpoint(checkpoint, dict(vae.config)),
    }
    if "text_encoder" in encoders:
        read_back[encoders["text_encoder"]] = single_file_utils.convert_ldm_clip_checkpoint(checkpoint)
    if "text_encoder_2" in encoders:
        prefix = "conditioner.embedders.1.model." if arch == "sdxl" else "conditioner.embedders.0.model."
        read_back[encoders["text_encoder_2"]] = single_file_utils.convert_open_clip_checkpoint(
            encoders["text_encoder_2"], checkpoint, prefix=prefix
        )
    for module, state_dict in read_back.items():
        expected = {key: tensor.shape for key, tensor in module.state_dict().items()}
        # Like diffusers' loader: transformers 5 CLIPTextModel has no text_model wrapper.
        has_wrapper = any(key.startswith("text_model.") for key in expected)
        actual = {
            (key if has_wrapper else key.removeprefix("text_model.")): t.shape
            for key, t in state_dict.items()
        }
        assert actual == expected, f"{type(module).__name__}: {set(actual) ^ set(expected)}"


def test_original_only_shapes_that_diffusers_loader_would_also_accept_otherwise(models):
    # diffusers squeezes 1x1-conv VAE attention weights but also accepts linear ones; A1111/ComfyUI need convs.
    sdxl = load_file(models["sdxl"][2])
    for part in ("q", "k", "v", "proj_out"):
        assert sdxl[f"first_stage_model.decoder.mid.attn_1.{part}.weight"].ndim == 4
        assert sdxl[f"first_stage_model.encoder.mid.attn_1.{part}.weight"].ndim == 4
    assert sdxl["conditioner.embedders.1.model.text_projection"].shape == (TINY_TE2_WIDTH, TINY_TE2_WIDTH)
    in_proj = sdxl["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert in_proj.shape == (3 * TINY_TE2_WIDTH, TINY_TE2_WIDTH)
    assert "model.diffusion_model.label_emb.0.0.weight" in sdxl
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sdxl
    refiner = load_file(models["sdxl-refiner"][2])
    assert not any(
        key.startswith(("conditioner.embedders.1.", "conditioner.embedders.0.transformer."))
        for key in refiner
    )
    assert "conditioner.embedders.0.model.positional_embedding" in refiner
    inpaint = load_file(models["sd15-inpaint"][2])
    assert inpaint["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in inpaint


def test_every_prefix_is_one_the_original_layout_uses(models):
    layouts = {
        "sd15": ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."),
        "sdxl": (
            "model.diffusion_model.",
            "first_stage_model.",
            "conditioner.embedders.0.transformer.text_model.",
            "conditioner.embedders.1.model.",
        ),
        "sdxl-refiner": ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.model."),
    }
    for name in ("sd15", "sdxl", "sdxl-refiner"):
        arch = models[name][0]
        keys = load_file(models[name][2]).keys()
        assert all(key.startswith(layouts[arch]) for key in keys)
        assert all(any(key.startswith(prefix) for key in keys) for prefix in layouts[arch])


def test_saved_file_has_metadata_and_nothing_left_behind(models):
    arch, folder, single_file = models["sd15"]
    with safe_open(single_file, "pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "pt" and metadata["atelier_architecture"] == "sd15"
    configs = json.loads(metadata["atelier_diffusers_configs"])
    assert configs["unet/config.json"]["cross_attention_dim"] == 32
    assert sorted(p.name for p in single_file.parent.iterdir() if p.name.startswith(".")) == []


def test_half_precision_export(models, tmp_path):
    arch, folder, _ = models["sd15"]
    out = save_single_file(folder, tmp_path / "nested" / "half.safetensors", arch, dtype=torch.float16)
    half = load_file(out)
    full = diffusers_to_single_file_state_dict(folder, arch)
    assert set(half) == set(full)
    assert {tensor.dtype for tensor in half.values()} == {torch.float16}
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(half[key], full[key].half())


def test_overwrites_existing_output(models, tmp_path):
    arch, folder, _ = models["sd15"]
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"old")
    save_single_file(folder, out, arch)
    assert set(load_file(out)) == set(diffusers_to_single_file_state_dict(folder, arch))


def test_text_encoder_saved_with_or_without_text_model_prefix_converts_the_same(models, tmp_path):
    arch, folder, _ = models["sd15"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    weights_path = copy / "text_encoder" / "model.safetensors"
    weights = load_file(weights_path)
    renamed = {key if key.startswith("text_model.") else f"text_model.{key}": t for key, t in weights.items()}
    assert renamed != weights, "the fixture should flip the naming the saved file uses"
    save_file(renamed, weights_path)
    expected = diffusers_to_single_file_state_dict(folder, arch)
    actual = diffusers_to_single_file_state_dict(copy, arch)
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_sharded_unet_converts_the_same(models, tmp_path):
    arch, folder, _ = models["sd15"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    unet_path = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights = load_file(unet_path)
    unet_path.unlink()
    keys = sorted(weights)
    shards = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2 :]}
    for shard_name, shard_keys in shards.items():
        save_file({key: weights[key] for key in shard_keys}, copy / "unet" / shard_name)
    index = {"weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (copy / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    expected = diffusers_to_single_file_state_dict(folder, arch)
    actual = diffusers_to_single_file_state_dict(copy, arch)
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_shard_index_pointing_outside_the_folder_is_refused(models, tmp_path):
    arch, folder, _ = models["sd15"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    index = {"weight_map": {"conv_in.weight": "../../elsewhere.safetensors"}}
    (copy / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UnsafeFileError, match="outside its folder"):
        diffusers_to_single_file_state_dict(copy, arch)


def test_pickled_weights_are_refused_not_loaded(models, tmp_path):
    arch, folder, _ = models["sd15"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (copy / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(UnsafeFileError, match=r"\.bin"):
        save_single_file(copy, tmp_path / "out.safetensors", arch)
    assert not (tmp_path / "out.safetensors").exists()


def test_corrupt_weights_file_is_a_user_error(models, tmp_path):
    arch, folder, _ = models["sd15"]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AtelierError, match="cannot read"):
        diffusers_to_single_file_state_dict(copy, arch)


@pytest.mark.parametrize(
    ("name", "wrong_arch", "message"),
    [
        ("sd15", "sd15-inpaint", "4 input channels"),
        ("sd15-inpaint", "sd15", "9 input channels"),
        ("sd15", "sdxl", "SD 1.5 UNet"),
        ("sdxl", "sd15", "SDXL UNet"),
        # A base model passed as refiner would silently drop its CLIP-L encoder without this check.
        ("sdxl", "sdxl-refiner", "width"),
    ],
)
def test_folder_of_another_architecture_is_refused(models, name, wrong_arch, message):
    with pytest.raises(AtelierError, match=message) as caught:
        diffusers_to_single_file_state_dict(models[name][1], wrong_arch)
    assert caught.value.field == "arch"


def test_missing_component_or_folder_is_not_found(models, tmp_path):
    with pytest.raises(NotFoundError):
        diffusers_to_single_file_state_dict(tmp_path / "absent", "sd15")
    # An SDXL refiner folder has no CLIP-L encoder, which the base needs.
    with pytest.raises(NotFoundError, match="text_encoder"):
        diffusers_to_single_file_state_dict(models["sdxl-refiner"][1], "sdxl")


def test_bad_arguments_are_user_errors(models, tmp_path):
    arch, folder, _ = models["sd15"]
    with pytest.raises(AtelierError, match="unknown architecture") as caught:
        diffusers_to_single_file_state_dict(folder, "sd3")
    assert caught.value.field == "arch"
    with pytest.raises(AtelierError, match=r"\.safetensors") as caught:
        save_single_file(folder, tmp_path / "model.ckpt", arch)
    assert caught.value.field == "out_path"
    with pytest.raises(AtelierError, match="floating-point") as caught:
        save_single_file(folder, tmp_path / "model.safetensors", arch, dtype=torch.int8)
    assert caught.value.field == "dtype"


def test_in_memory_components_must_be_the_ones_the_arch_has(models):
    from atelier.engine.convert import components_to_single_file_state_dict

    folder = models["sdxl-refiner"][1]
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    vae = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors")
    bigg = load_file(folder / "text_encoder_2" / "model.safetensors")
    from_memory = components_to_single_file_state_dict(
        "sdxl-refiner", unet=unet, vae=vae, text_encoder_2=bigg
    )
    assert set(from_memory) == set(load_file(models["sdxl-refiner"][2]))
    with pytest.raises(AtelierError, match="has no text_encoder"):
        components_to_single_file_state_dict(
            "sdxl-refiner", unet=unet, vae=vae, text_encoder=bigg, text_encoder_2=bigg
        )
    with pytest.raises(AtelierError, match="needs a text_encoder_2"):
        components_to_single_file_state_dict("sdxl-refiner", unet=unet, vae=vae)
