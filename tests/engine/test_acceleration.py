"""The speed paths (engine/acceleration.py) against eager execution, on the tiny models.

Tolerances, in 8-bit levels of the final picture: channels-last and fused QKV only reorder float arithmetic
(mean difference below 0.5, measured 0.0-0.1); compiled graphs fuse kernels and reassociate sums (mean below 1,
measured about 0.1). A picture that differs by more than that was computed differently, not just reordered.
torch.compile is real here (inductor, C++ on the CPU): one compile per module, shared by the tests below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from atelier.engine import Engine, GenerationRequest, ModelCache, SpeedSettings
from atelier.engine.acceleration import compiled_graphs
from atelier.errors import AtelierError


def _picture(engine: Engine, request: GenerationRequest) -> np.ndarray:
    return np.asarray(engine.generate(request).images[0].image, dtype=np.float32)


def _request(path, **fields) -> GenerationRequest:
    fields = {"prompt": "a blue vase", "steps": 3, "seed": 11, **fields}
    return GenerationRequest(model=str(path), **fields)


@pytest.fixture(scope="module")
def eager(tiny_models):
    return Engine(device="cpu", models=ModelCache())


def test_sdpa_channels_last_and_fused_qkv_match_eager(tiny_models, eager):
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    fast = Engine(device="cpu", models=ModelCache(), speed=SpeedSettings(channels_last=True, fuse_qkv=True))
    request = _request(tiny_models("sd15"))
    assert np.abs(_picture(fast, request) - _picture(eager, request)).mean() < 0.5
    unet = fast.load(request.model).pipeline.unet
    assert {type(p) for p in unet.attn_processors.values()} == {FusedAttnProcessor2_0}
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert {type(p) for p in eager.load(request.model).pipeline.unet.attn_processors.values()} == {
        AttnProcessor2_0
    }


def test_fused_qkv_steps_aside_while_a_lora_is_active(tiny_models, make_lora, tmp_path, eager):
    """A fused projection would ignore the LoRA on to_q/to_k/to_v: the picture must be the LoRA's picture."""
    from atelier.engine import LoraLibrary

    make_lora("shiny", tmp_path, seed=5)
    library = LoraLibrary(tmp_path)
    fused = Engine(device="cpu", models=ModelCache(), loras=library, speed=SpeedSettings(fuse_qkv=True))
    plain = Engine(device="cpu", models=ModelCache(), loras=library)
    path = tiny_models("sd15")
    with_lora = _request(path, prompt="a blue vase <lora:shiny:1>")
    assert np.abs(_picture(fused, with_lora) - _picture(plain, with_lora)).mean() < 0.5
    assert np.abs(_picture(plain, with_lora) - _picture(plain, _request(path))).mean() > 2  # the LoRA shows
    state = fused.load(path).acceleration
    assert not state.qkv_fused
    _picture(fused, _request(path))  # no LoRA: fused again
    assert state.qkv_fused


def test_speed_settings_are_checked():
    with pytest.raises(AtelierError, match="unknown compile mode 'turbo'") as bad:
        SpeedSettings(compile_mode="turbo").validate()
    assert bad.value.field == "compile_mode"


@pytest.fixture(scope="module")
def compiled(tiny_models, tmp_path_factory):
    """An engine with a compiled UNet and VAE decoder (no LoRA slots: test_hotswap.py covers those)."""
    cache = tmp_path_factory.mktemp("compile-cache")
    speed = SpeedSettings(compile=True, lora_slots=0, compile_cache_dir=cache)
    torch._dynamo.reset()
    engine = Engine(device="cpu", models=ModelCache(), speed=speed)
    request = _request(tiny_models("sd15"))
    first = _picture(engine, request)
    return engine, request, first, cache


def test_a_compiled_unet_and_decoder_match_eager(compiled, eager):
    engine, request, first, _cache = compiled
    state = engine.load(request.model).acceleration
    assert state.compiled
    assert np.abs(first - _picture(eager, request)).mean() < 1


def test_one_compiled_graph_serves_many_picture_sizes(compiled, eager):
    engine, request, _first, _cache = compiled
    sizes = [(64, 96), (96, 64), (128, 128), (64, 128)]
    _picture(engine, _request(request.model, width=sizes[0][0], height=sizes[0][1]))
    # The first picture was square: dynamo's first graph assumed width == height; one more covers the rest.
    graphs = compiled_graphs()
    for width, height in sizes[1:]:
        sized = _request(request.model, width=width, height=height)
        assert np.abs(_picture(engine, sized) - _picture(eager, sized)).mean() < 1
    assert compiled_graphs() == graphs


def test_a_fast_draft_on_a_compiled_unet_runs_eagerly_and_leaves_the_graph_in_place(compiled, eager):
    """DeepCache changes the blocks that run from step to step: no recompiles, the eager picture, graph back."""
    from atelier.engine.acceleration import is_compiled_forward

    engine, request, _first, _cache = compiled
    graphs = compiled_graphs()
    draft = _request(request.model, fast="deepcache")
    assert np.abs(_picture(engine, draft) - _picture(eager, draft)).mean() < 1
    assert compiled_graphs() == graphs
    assert is_compiled_forward(engine.load(request.model).pipeline.unet)


def test_a_restarted_worker_loads_the_compiled_graphs_from_disk(compiled, tiny_models):
    """A new process with the same cache folder: inductor's cache answers, nothing is generated again."""
    engine, request, first, cache = compiled
    state = engine.load(request.model).acceleration
    assert state.cache_file is not None and state.cache_file.is_file()
    script = textwrap.dedent(
        f"""
        import json, sys
        from pathlib import Path
        import numpy as np, torch
        torch.set_num_threads({torch.get_num_threads()})  # as here: the thread count is in a graph's key
        from torch._dynamo.utils import counters
        from atelier.engine import Engine, GenerationRequest, ModelCache, SpeedSettings
        speed = SpeedSettings(compile=True, lora_slots=0, compile_cache_dir=Path({str(cache)!r}))
        engine = Engine(device="cpu", models=ModelCache(), speed=speed)
        request = GenerationRequest(prompt="a blue vase", model={request.model!r}, steps=3, seed=11)
        picture = np.asarray(engine.generate(request).images[0].image, dtype=np.float32)
        np.save(sys.argv[1], picture)
        state = engine.load(request.model).acceleration
        print(json.dumps({{"loaded": state.cache_loaded, "inductor": dict(counters["inductor"])}}))
        """
    )
    out = cache / "restarted.npy"
    env = {key: value for key, value in os.environ.items() if key not in ("TORCHINDUCTOR_CACHE_DIR",)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"]
    assert report["inductor"].get("fxgraph_cache_hit", 0) >= 2  # the UNet and the decoder
    assert report["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert np.abs(np.load(out) - first).max() <= 1


def test_compile_gives_the_model_its_lora_slots_before_the_graph(tiny_models):
    """The studio's compile setting end to end up to the graph: slots first (engine/hotswap.py), then the
    compiled forward; test_hotswap.py runs the swaps on a compiled UNet."""
    from atelier.engine.acceleration import is_compiled_forward
    from atelier.engine.hotswap import hotswap_slots

    speed = SpeedSettings(compile=True, lora_slots=1, lora_max_rank=8)
    engine = Engine(device="cpu", models=ModelCache(), speed=speed)
    pipeline = engine.load(tiny_models("sd15")).pipeline
    slots = hotswap_slots(pipeline)
    assert slots is not None and len(slots.slots) == 1
    assert is_compiled_forward(pipeline.unet) and is_compiled_forward(pipeline.vae.decoder)
