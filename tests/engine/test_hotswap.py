"""LoRA hot-swap into a compiled UNet (engine/hotswap.py): the same pictures as ordinary adapters, no recompile.

Every comparison is against an eager pipeline of the same tiny model whose LoRAs are ordinary adapters
(``apply_loras`` without slots). Tolerances:

* A LoRA whose rank equals the slots' rank: exact (0.0), eager or with the ``aot_eager`` backend (dynamo's
  graph capture and guards, eager kernels), which checks what hot-swapping is about (weights and scales read at
  run time, no recompile) without inductor's numerics.
* A smaller rank is zero-padded to the slots' rank: the matmuls then have another inner size and round
  differently, 2e-6 on UNet outputs of magnitude ~1 (measured 8e-7, the same with no compile at all).
* Several LoRAs add up in slot order, not request order: float rounding again. The image tests ask for them in
  slot order, which makes them exact; the inductor test does not and stays within its tolerance.
* ``inductor`` (the real compiler, on the CPU here): 1e-4 on UNet outputs (measured ~2e-6). Inductor fuses and
  reorders float operations; the same LoRA as an ordinary adapter in an inductor-compiled UNet differs from
  eager by the same amount, so the slots add nothing to it. (The much stronger random LoRAs of ``make_lora``
  push that compile noise to 1e-2, which is why these tests write their own.)
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from itertools import pairwise
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from atelier.engine.hotswap import SLOT_LAYERS, hotswap_slots, prepare_hotswap
from atelier.engine.loras import AppliedLora, LoraLibrary, apply_loras
from atelier.engine.models import load_model
from atelier.errors import AtelierError

INDUCTOR_TOLERANCE = 1e-4
PADDED_TOLERANCE = 2e-6


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _write_lora(
    path: Path, unet, ranks: dict[str, int], *, seed: int, alphas: dict[str, float] | None = None
) -> Path:
    """A kohya-format LoRA training ``ranks`` (UNet layer -> rank), with per-layer alphas (default: rank)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer, rank in ranks.items():
        weight = unet.get_submodule(layer).weight  # Linear (out, in) or 1x1/3x3 Conv2d (out, in, kh, kw)
        fan_in = math.prod(weight.shape[1:])
        prefix = "lora_unet_" + layer.replace(".", "_")
        up_shape = (weight.shape[0], rank) + ((1, 1) if weight.ndim == 4 else ())
        down = torch.randn(rank, *weight.shape[1:], generator=generator) / math.sqrt(fan_in)
        state[f"{prefix}.lora_down.weight"] = down
        state[f"{prefix}.lora_up.weight"] = 0.5 * torch.randn(up_shape, generator=generator)
        state[f"{prefix}.alpha"] = torch.tensor(float((alphas or {}).get(layer, rank)))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def sd15_loras(tiny_models, tmp_path_factory):
    """LoRA files for the tiny SD 1.5 model: (library, names)."""
    folder = tmp_path_factory.mktemp("hotswap-loras")
    unet = load_model(tiny_models("sd15")).pipeline.unet
    layers = [name for name, _ in unet.named_modules() if SLOT_LAYERS.fullmatch(name)]
    # Every slot layer (proj_in/out are 1x1 convolutions in SD 1.5), rank 4, alpha 2.
    _write_lora(
        folder / "everywhere.safetensors",
        unet,
        dict.fromkeys(layers, 4),
        seed=1,
        alphas=dict.fromkeys(layers, 2),
    )
    # Only the cross-attention, another rank and alpha: swapped in after "everywhere", the rest must be zeroed.
    cross = [layer for layer in layers if ".attn2." in layer]
    _write_lora(
        folder / "cross.safetensors", unet, dict.fromkeys(cross, 2), seed=2, alphas=dict.fromkeys(cross, 1)
    )
    # A rank and an alpha per layer (peft's rank_pattern / alpha_pattern).
    mixed = {layer: 1 + i % 4 for i, layer in enumerate(layers)}
    _write_lora(
        folder / "mixed.safetensors",
        unet,
        mixed,
        seed=3,
        alphas={layer: 1.0 + i % 3 for i, layer in enumerate(layers)},
    )
    _write_lora(folder / "wide.safetensors", unet, dict.fromkeys(cross, 16), seed=4)
    # LoCon: also a ResNet convolution, which the slots do not hold.
    locon = {"down_blocks.0.resnets.0.conv1": 2, cross[0]: 2}
    _write_lora(folder / "locon.safetensors", unet, locon, seed=5)
    return LoraLibrary(folder)


def _request(library: LoraLibrary, *loras: tuple[str, float] | tuple[str, float, float]) -> list[AppliedLora]:
    """(name, weight) or (name, text encoder weight, UNet weight)."""
    return [AppliedLora(library.entry(lora[0]), lora[1], lora[-1]) for lora in loras]


def _prepared(
    path, *, backend: str | None, slots: int = 2, max_rank: int = 8, device: str = "cpu", mode=None
):
    """A freshly loaded model with LoRA slots, its UNet compiled as engine/acceleration.py does it."""
    model = load_model(path, device=device)
    prepare_hotswap(model.pipeline, slots=slots, max_rank=max_rank)
    if backend is not None:
        unet = model.pipeline.unet
        unet.forward = torch.compile(unet.forward, dynamic=False, backend=backend, mode=mode)
    return model


def _unet_output(pipeline) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    states = torch.randn(2, 77, pipeline.unet.config.cross_attention_dim, generator=generator)
    device = pipeline.unet.device
    with torch.no_grad():
        return pipeline.unet(sample.to(device), 10, states.to(device)).sample.cpu()


def _image(pipeline) -> np.ndarray:
    result = pipeline(
        "red shoe",
        negative_prompt="blurry",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
    )
    return result.images[0]


@contextmanager
def _no_recompile():
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize(
    ("device", "mode", "tolerance"),
    [
        ("cpu", None, INDUCTOR_TOLERANCE),
        # CUDA graphs (what max-autotune uses too): the graph must read the scale tensors written in place.
        # fp32; the tolerance allows for GPU kernels' own reduction order. Runs only where there is a GPU.
        pytest.param(
            "cuda",
            "reduce-overhead",
            1e-3,
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_compiled_slots_match_eager_and_never_recompile(tiny_models, sd15_loras, device, mode, tolerance):
    eager = load_model(tiny_models("sd15"), device=device)
    compiled = _prepared(tiny_models("sd15"), backend="inductor", device=device, mode=mode)
    steps = [
        [("everywhere", 1.0)],
        [("cross", 1.0)],
        [],
        [("everywhere", 0.5)],
        [("everywhere", 0.3), ("mixed", 0.8)],
        [("cross", 1.0), ("everywhere", 1.0)],
    ]
    outputs = []
    for i, loras in enumerate(steps):
        for model in (eager, compiled):
            apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, *loras))
        expected = _unet_output(eager.pipeline)
        if i == 0:
            graphs = counters["stats"]["unique_graphs"]  # process-wide: other tests compiled before this one
            got = _unet_output(compiled.pipeline)  # compiles
            assert counters["stats"]["unique_graphs"] == graphs + 1
        else:
            with _no_recompile():
                got = _unet_output(compiled.pipeline)
        assert (got - expected).abs().max() <= tolerance, loras
        outputs.append(expected)
    # Each step changes the output far beyond the tolerance, so matching eager means the right LoRAs applied.
    for before, after in pairwise(outputs):
        assert (before - after).abs().max() > 10 * tolerance


def test_swap_to_a_lora_on_fewer_layers_zeroes_the_rest(tiny_models, sd15_loras):
    eager = load_model(tiny_models("sd15"))
    # One slot, so each swap reuses it; rank 4 ("everywhere") fills it, the others are padded.
    compiled = _prepared(tiny_models("sd15"), backend="aot_eager", slots=1, max_rank=4)
    for loras in ([("everywhere", 1.0)], [("cross", 1.0)], [("mixed", 0.7)], [("cross", 0.6)]):
        for model in (eager, compiled):
            apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, *loras))
        with _no_recompile() if loras != [("everywhere", 1.0)] else nullcontext():
            difference = (_unet_output(compiled.pipeline) - _unet_output(eager.pipeline)).abs().max()
        assert difference <= (0 if loras == [("everywhere", 1.0)] else PADDED_TOLERANCE), loras
    # What "cross" does not train holds zeros, not what "everywhere" or "mixed" left there.
    slots = hotswap_slots(compiled.pipeline)
    assert slots is not None
    for name, layer in slots.layers.items():
        if ".attn2." not in name:
            assert (
                not layer.lora_A["hotswap_0_slot"].weight.any()
                and not layer.lora_B["hotswap_0_slot"].weight.any()
            )


def test_kohya_diffusers_and_sdxl_loras_swap_with_their_text_encoder_parts(tiny_models, make_lora, tmp_path):
    make_lora("kohya", tmp_path / "sd15", fmt="kohya", seed=11)
    make_lora("diffusers", tmp_path / "sd15", seed=12)
    make_lora("xl_one", tmp_path / "sdxl", arch="sdxl", seed=13)
    make_lora("xl_two", tmp_path / "sdxl", arch="sdxl", seed=14)
    cases = {
        # Two LoRAs in slot order ("kohya" went into the first slot): see the tolerances above.
        "sd15": [[("kohya", 1.0)], [("diffusers", 0.5, 0.8)], [], [("kohya", 0.7, 0.4), ("diffusers", 1.0)]],
        "sdxl": [[("xl_one", 1.0)], [("xl_two", 0.6)], [("xl_one", 0.5), ("xl_two", 1.0)], []],
    }
    for arch, steps in cases.items():
        torch._dynamo.reset()
        library = LoraLibrary(tmp_path / arch)
        eager = load_model(tiny_models(arch))
        compiled = _prepared(tiny_models(arch), backend="aot_eager", max_rank=4)  # make_lora's rank: exact
        images = []
        for i, loras in enumerate(steps):
            for model in (eager, compiled):
                apply_loras(model.pipeline, model.loaded_loras, _request(library, *loras))
            expected = _image(eager.pipeline)
            with _no_recompile() if i else nullcontext():
                got = _image(compiled.pipeline)
            np.testing.assert_array_equal(got, expected, err_msg=f"{arch} {loras}")
            images.append(expected)
        assert all(np.abs(a - b).max() > 0.01 for a, b in pairwise(images))


def test_too_many_loras_too_high_a_rank_and_other_layers_are_refused(tiny_models, sd15_loras):
    model = _prepared(tiny_models("sd15"), backend=None, slots=2, max_rank=8)
    apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, ("cross", 1.0)))
    before = _unet_output(model.pipeline)
    refused = {
        r"3 LoRAs in one request, but the compiled model has 2 LoRA slots; .*\(lora_slots\)": [
            ("everywhere", 1.0),
            ("cross", 1.0),
            ("mixed", 1.0),
        ],
        r"LoRA 'wide' has rank 16, above the compiled LoRA slots' maximum rank 8; .*\(lora_max_rank\)": [
            ("wide", 1.0)
        ],
        r"LoRA 'locon' trains down_blocks\.0\.resnets\.0\.conv1, outside the layers compiled LoRA slots hold": [
            ("locon", 1.0)
        ],
    }
    for message, loras in refused.items():
        with pytest.raises(AtelierError, match=message) as error:
            apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, *loras))
        assert error.value.field == "lora"
        assert "\n" not in str(error.value)
        # A refused request leaves the slots as they were.
        assert torch.equal(_unet_output(model.pipeline), before)


def test_a_lora_in_a_slot_is_not_copied_again(tiny_models, sd15_loras):
    from peft.utils import hotswap as peft_hotswap

    model = _prepared(tiny_models("sd15"), backend=None, slots=2)
    copy = mock.patch.object(
        peft_hotswap, "hotswap_adapter_from_state_dict", wraps=peft_hotswap.hotswap_adapter_from_state_dict
    )
    with copy as swapped:
        for loras in ([("everywhere", 1.0)], [("cross", 1.0)], [("everywhere", 0.4)], [], [("cross", 0.2)]):
            apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, *loras))
        assert swapped.call_count == 2
        # A third LoRA replaces the least recently used one ("everywhere"), so "cross" stays.
        apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, ("mixed", 1.0)))
        apply_loras(model.pipeline, model.loaded_loras, _request(sd15_loras, ("cross", 1.0)))
        assert swapped.call_count == 3
