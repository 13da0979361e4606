"""ControlNet units on tiny models: what the control image, weight, start/end and modes do to the picture."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from atelier.engine.controlnet import (
    ControlNetCache,
    ControlNetLibrary,
    ControlUnit,
    detect_controlnet_architecture,
    save_single_file,
)
from atelier.engine.generate import Engine
from atelier.engine.infotext import parse_infotext
from atelier.engine.request import GenerationRequest
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError

SIZE = 64
PROMPT = "a product photo of a leather bag"
NEGATIVE = "blurry"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Module scope, so the module's reference pictures (plain, controlled) are made with the same thread count
    # as the pictures compared with them: float sums differ by thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _outline(box=(12, 12, 52, 52)) -> Image.Image:
    """A ready control map (module "none"): white outline on black, as canny would draw it."""
    image = Image.new("RGB", (SIZE, SIZE), "black")
    ImageDraw.Draw(image).rectangle(box, outline="white", width=2)
    return image


def _photo(seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _unit(model_path, **fields) -> ControlUnit:
    values = {"image": _outline(), "module": "none", "model": str(model_path)}
    values.update(fields)
    return ControlUnit(**values)


def _generate(engine, model, units=(), **overrides):
    values = dict(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        model=str(model),
        steps=3,
        width=SIZE,
        height=SIZE,
        seed=21,
        controlnet_units=list(units),
    )
    values.update(overrides)
    return engine.generate(GenerationRequest(**values))


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def sd15(tiny_models):
    return tiny_models("sd15")


@pytest.fixture(scope="module")
def controlnet(tiny_models):
    return tiny_models("controlnet-sd15")


@pytest.fixture(scope="module")
def plain(engine, sd15):
    """The picture without any ControlNet."""
    return _pixels(_generate(engine, sd15))


@pytest.fixture(scope="module")
def controlled(engine, sd15, controlnet):
    """The same request with one balanced unit."""
    return _pixels(_generate(engine, sd15, [_unit(controlnet)]))


def test_the_control_image_changes_the_picture(engine, sd15, controlnet, plain, controlled):
    assert np.abs(controlled - plain).max() > 10
    other = _pixels(_generate(engine, sd15, [_unit(controlnet, image=_outline((4, 20, 40, 60)))]))
    assert np.abs(other - controlled).max() > 10


@pytest.mark.parametrize("fields", [{"weight": 0.0}, {"guidance_end": 0.0}], ids=["weight-0", "end-0"])
def test_a_unit_that_does_nothing_equals_no_controlnet(engine, sd15, controlnet, plain, fields):
    result = _pixels(_generate(engine, sd15, [_unit(controlnet, **fields)]))
    assert np.array_equal(result, plain)


def test_two_units_combine_and_a_zero_weight_unit_adds_nothing(engine, sd15, controlnet, controlled):
    second = _outline((30, 2, 62, 34))
    both = _pixels(_generate(engine, sd15, [_unit(controlnet), _unit(controlnet, image=second)]))
    assert np.abs(both - controlled).max() > 10
    muted = _pixels(_generate(engine, sd15, [_unit(controlnet), _unit(controlnet, image=second, weight=0.0)]))
    assert np.array_equal(muted, controlled)


def test_guidance_window_limits_the_controlled_steps(engine, sd15, controlnet, plain, controlled):
    late = _pixels(_generate(engine, sd15, [_unit(controlnet, guidance_start=0.5)]))
    assert np.abs(late - plain).max() > 0
    assert np.abs(late - controlled).max() > 0


def _scaled_copy(controlnet_dir, out_dir, factors) -> str:
    """The ControlNet with its output convolutions multiplied by ``factors`` (shallowest first, middle last)."""
    from diffusers import ControlNetModel

    model = ControlNetModel.from_pretrained(str(controlnet_dir))
    outputs = [*model.controlnet_down_blocks, model.controlnet_mid_block]
    assert len(outputs) == len(factors)
    with torch.no_grad():
        for conv, factor in zip(outputs, factors, strict=True):
            conv.weight.mul_(factor)
            conv.bias.mul_(factor)
    model.save_pretrained(str(out_dir))
    return str(out_dir)


# The extension's soft injection for a ControlNet with 5 residuals (the tiny one): 0.825 ** (12 - i).
SOFT = [0.825 ** (12 - i) for i in range(5)]


def test_my_prompt_is_more_important_scales_residuals_layer_by_layer(engine, sd15, controlnet, tmp_path):
    ours = _pixels(_generate(engine, sd15, [_unit(controlnet, control_mode="My prompt is more important")]))
    reference_model = _scaled_copy(controlnet, tmp_path / "soft", SOFT)
    reference = _pixels(_generate(engine, sd15, [_unit(reference_model)]))
    assert np.abs(ours - reference).max() <= 2


def test_controlnet_is_more_important_equals_diffusers_guess_mode(engine, sd15, controlnet, tmp_path):
    """guess_mode runs the ControlNet on the conditional half only, with its own logspace scales."""
    from diffusers import StableDiffusionControlNetPipeline

    from atelier.engine.samplers import make_scheduler

    result = _generate(engine, sd15, [_unit(controlnet, control_mode=2)])
    guess_mode_scales = torch.logspace(-1, 0, len(SOFT)).tolist()
    factors = [soft / guess for soft, guess in zip(SOFT, guess_mode_scales, strict=True)]
    reference_model = _scaled_copy(controlnet, tmp_path / "guess", factors)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        str(sd15),
        controlnet=_load_controlnet(reference_model),
        safety_checker=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler("Euler a", dict(pipe.scheduler.config))
    reference = pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        image=result.control_maps[0],
        num_inference_steps=3,
        guidance_scale=7.0,
        width=SIZE,
        height=SIZE,
        guess_mode=True,
        generator=[torch.Generator("cpu").manual_seed(21)],
    ).images[0]
    assert np.abs(_pixels(result) - np.asarray(reference, dtype=np.int16)).max() <= 2


def _load_controlnet(path):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(path)


def test_control_works_with_and_prompts(engine, sd15, controlnet, controlled, plain):
    """AND widens the UNet batch; the ControlNet residuals must be widened row for row with it."""
    halves = _pixels(_generate(engine, sd15, [_unit(controlnet)], prompt=f"{PROMPT} :0.5 AND {PROMPT} :0.5"))
    assert np.abs(halves - controlled).max() <= 2
    assert np.abs(halves - plain).max() > 10
    mixed = _generate(engine, sd15, [_unit(controlnet, control_mode=2)], prompt=f"{PROMPT} AND red:0.6")
    assert mixed.images[0].image.size == (SIZE, SIZE)


def test_img2img_with_the_init_image_as_control(engine, sd15, controlnet):
    photo = _photo(3)
    plain = _pixels(_generate(engine, sd15, init_image=photo, denoising_strength=0.8))
    # No image in the unit: A1111 uses the init image, here through canny.
    unit = ControlUnit(image=None, module="canny", model=str(controlnet), threshold_a=50, threshold_b=120)
    controlled = _generate(engine, sd15, [unit], init_image=photo, denoising_strength=0.8)
    assert np.abs(_pixels(controlled) - plain).max() > 10
    assert controlled.control_maps[0].size == (SIZE, SIZE)


@pytest.mark.parametrize("arch", ["sd15", "sd15-inpaint"])
def test_inpainting_with_controlnet_keeps_the_unmasked_photo(engine, tiny_models, controlnet, arch):
    photo = Image.new("RGB", (SIZE, SIZE), (40, 90, 200))
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    model = tiny_models(arch)
    common = dict(init_image=photo, mask=mask, mask_blur=0, denoising_strength=1.0)
    plain = _pixels(_generate(engine, model, **common))
    controlled = _pixels(_generate(engine, model, [_unit(controlnet)], **common))
    assert np.abs(controlled[16:48, 16:48] - plain[16:48, 16:48]).max() > 10
    assert (controlled[:8] == (40, 90, 200)).all()


def test_sdxl_txt2img_with_controlnet(engine, tiny_models):
    sdxl, controlnet = tiny_models("sdxl"), tiny_models("controlnet-sdxl")
    plain = _pixels(_generate(engine, sdxl))
    controlled = _pixels(_generate(engine, sdxl, [_unit(controlnet)]))
    assert np.abs(controlled - plain).max() > 10
    assert np.array_equal(_pixels(_generate(engine, sdxl, [_unit(controlnet, weight=0.0)])), plain)


def test_controlnet_for_another_base_is_refused(engine, tiny_models, controlnet):
    with pytest.raises(AtelierError) as info:
        _generate(engine, tiny_models("sdxl"), [_unit(controlnet)])
    assert info.value.field == "controlnet_units[0].model"
    assert "SD 1.5" in str(info.value) and "SDXL" in str(info.value)


def test_infotext_records_each_unit_as_the_extension_does(engine, sd15, controlnet):
    weights = controlnet / "diffusion_pytorch_model.safetensors"
    legacy = hashlib.sha256(weights.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    units = [
        _unit(controlnet, module="canny", image=_photo(1), weight=0.8, control_mode=1),
        _unit(controlnet, resize_mode=2, guidance_end=0.5, pixel_perfect=True),
    ]
    info = parse_infotext(_generate(engine, sd15, units).images[0].infotext)
    assert info["ControlNet 0"] == (
        f"Module: canny, Model: controlnet-sd15 [{legacy}], Weight: 0.8, Resize Mode: Crop and Resize, "
        "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, Guidance End: 1.0, "
        "Pixel Perfect: False, Control Mode: My prompt is more important"
    )
    # The extension reads a unit back by splitting on ", " and ": ".
    second = dict(item.split(": ") for item in info["ControlNet 1"].split(", "))
    assert second["Resize Mode"] == "Resize and Fill"
    assert second["Guidance End"] == "0.5"
    assert second["Pixel Perfect"] == "True"


def test_single_file_controlnet_equals_its_folder(engine, sd15, controlnet, controlled, tmp_path):
    single = save_single_file(controlnet, tmp_path / "outline.safetensors")
    assert detect_controlnet_architecture(single) == "controlnet-sd15"
    assert np.array_equal(_pixels(_generate(engine, sd15, [_unit(single)])), controlled)


def test_controlnets_stay_warm(sd15, controlnet):
    engine = Engine(device="cpu", controlnet_models=ControlNetCache())
    for weight in (1.0, 0.5):
        _generate(engine, sd15, [_unit(controlnet, weight=weight)], steps=1)
    assert engine.controlnet_models.loads == 1


def test_library_resolves_names_and_refuses_pickles(tmp_path, controlnet):
    import shutil

    shutil.copytree(controlnet, tmp_path / "Outline")
    (tmp_path / "scribble.pth").write_bytes(b"not loaded")
    library = ControlNetLibrary(tmp_path)
    (label,) = library.model_list()
    assert label.startswith("Outline [")
    assert library.resolve(label) == tmp_path / "Outline"
    assert library.resolve("outline") == tmp_path / "Outline"
    with pytest.raises(UnsafeFileError):
        library.resolve("scribble")
    with pytest.raises(UnsafeFileError):
        library.resolve("../Outline")
    with pytest.raises(NotFoundError, match="available in .*: Outline"):
        library.resolve("depth")


def test_pickled_controlnets_are_refused(engine, sd15, tmp_path):
    pickled = tmp_path / "control_sd15_canny.pth"
    pickled.write_bytes(b"\x80\x04 pickle")
    with pytest.raises(UnsafeFileError):
        _generate(engine, sd15, [_unit(pickled)])
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel"}))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(UnsafeFileError):
        detect_controlnet_architecture(folder)


def _header_only_file(path, tensors: dict[str, list[int]]) -> None:
    from safetensors.torch import save_file

    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in tensors.items()}, str(path))


@pytest.mark.parametrize(
    ("width", "expected"),
    [(768, "controlnet-sd15"), (2048, "controlnet-sdxl"), (1024, "text width 1024")],
)
def test_foreign_single_files_are_recognised_by_text_width(tmp_path, width, expected):
    path = tmp_path / "control.safetensors"
    _header_only_file(
        path,
        {
            "control_model.input_hint_block.0.weight": [16, 3, 3, 3],
            "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [1, width],
        },
    )
    if expected.startswith("controlnet"):
        assert detect_controlnet_architecture(path) == expected
    else:
        with pytest.raises(AtelierError, match=expected):
            detect_controlnet_architecture(path)


def test_a_checkpoint_is_not_taken_for_a_controlnet(tmp_path):
    path = tmp_path / "model.safetensors"
    _header_only_file(
        path, {"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [1, 768]}
    )
    with pytest.raises(AtelierError, match="not a ControlNet"):
        detect_controlnet_architecture(path)


def test_shipped_configs_describe_the_standard_controlnets():
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    from atelier.engine.architectures import config_dir

    for arch, width in (("controlnet-sd15", 768), ("controlnet-sdxl", 2048)):
        config = json.loads((config_dir(arch) / "config.json").read_text())
        with init_empty_weights():
            model = ControlNetModel.from_config(config)
        shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        assert shapes["controlnet_cond_embedding.conv_in.weight"] == (16, 3, 3, 3)
        to_k = next(shape for name, shape in shapes.items() if name.endswith("attn2.to_k.weight"))
        assert to_k[1] == width


@pytest.mark.parametrize("arch", ["controlnet-sd15", "controlnet-sdxl"])
def test_tiny_controlnets_match_their_tiny_base_and_are_not_silent(tiny_models, arch):
    from diffusers import ControlNetModel, UNet2DConditionModel

    model = ControlNetModel.from_pretrained(str(tiny_models(arch)))
    unet_config = UNet2DConditionModel.load_config(
        str(tiny_models(arch.removeprefix("controlnet-"))), subfolder="unet"
    )
    assert model.config.cross_attention_dim == unet_config["cross_attention_dim"]
    assert list(model.config.block_out_channels) == list(unet_config["block_out_channels"])
    for conv in [
        model.controlnet_cond_embedding.conv_out,
        *model.controlnet_down_blocks,
        model.controlnet_mid_block,
    ]:
        assert conv.weight.abs().sum() > 0


@pytest.mark.parametrize(
    ("units", "field"),
    [
        ([{"weight": 2.5}], "controlnet_units[0].weight"),
        ([{}, {"guidance_start": 0.8, "guidance_end": 0.2}], "controlnet_units[1].guidance_start"),
        ([{"module": "openpose"}], "controlnet_units[0].module"),
        ([{"model": ""}], "controlnet_units[0].model"),
        ([{"control_mode": 5}], "controlnet_units[0].control_mode"),
        ([{"resize_mode": "Stretch"}], "controlnet_units[0].resize_mode"),
        ([{"image": None}], "controlnet_units[0].image"),
        ([{"module": "canny", "threshold_a": 300}], "controlnet_units[0].threshold_a"),
        ([{}] * 4, "controlnet_units"),
    ],
)
def test_bad_units_name_the_field(engine, sd15, controlnet, units, field):
    with pytest.raises(AtelierError) as info:
        _generate(engine, sd15, [_unit(controlnet, **fields) for fields in units])
    assert info.value.field == field


def test_unknown_model_in_the_library_names_the_unit(sd15, tmp_path):
    engine = Engine(device="cpu", controlnets=ControlNetLibrary(tmp_path))
    with pytest.raises(NotFoundError) as info:
        _generate(engine, sd15, [_unit("control_v11p_sd15_canny [d14c016b]")])
    assert info.value.field == "controlnet_units[0].model"


def test_unit_limit_is_configurable(sd15, controlnet):
    engine = Engine(device="cpu", max_controlnet_units=1)
    with pytest.raises(AtelierError, match="at most 1"):
        _generate(engine, sd15, [_unit(controlnet), _unit(controlnet)])


def test_latent_fill_cannot_be_combined_with_controlnet(engine, sd15, controlnet):
    mask = Image.new("L", (SIZE, SIZE), 255)
    with pytest.raises(AtelierError) as info:
        _generate(
            engine, sd15, [_unit(controlnet)], init_image=_photo(), mask=mask, inpainting_fill="latent noise"
        )
    assert info.value.field == "inpainting_fill"
