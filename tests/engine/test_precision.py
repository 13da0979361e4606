"""Precision: which dtype each device runs, and a VAE that never hands back a black picture.

The overflow is made for real: the tiny VAE's decoder gets input weights large enough that its activations pass
fp16's 65,504 (as the stock SDXL VAE's do at 1024 px) while fp32 holds them, so the test sees what users saw:
NaN pixels, a black image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atelier.engine import Engine, GenerationRequest, ModelCache
from atelier.engine import precision as precision_module
from atelier.engine.models import load_model
from atelier.engine.precision import guard_vae, precision_name, resolve_precision, vae_upcast
from atelier.errors import AtelierError


def test_auto_is_fp16_on_cuda_and_fp32_on_the_cpu():
    assert resolve_precision("auto", "cpu") == torch.float32
    assert resolve_precision("auto", "cuda") == torch.float16
    assert resolve_precision("auto", "cuda:1") == torch.float16
    assert resolve_precision("fp32", "cuda") == torch.float32
    assert precision_name(torch.bfloat16) == "bf16"


def test_fp16_on_the_cpu_and_unknown_names_are_one_line_errors():
    with pytest.raises(AtelierError, match="fp16 needs a CUDA GPU") as refused:
        resolve_precision("fp16", "cpu")
    assert refused.value.field == "precision"
    with pytest.raises(AtelierError, match="unknown precision 'half'; choose one of auto, fp32, fp16, bf16"):
        resolve_precision("half", "cpu")


def test_bf16_on_the_cpu_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("bf16", "cpu") == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(AtelierError, match="no native bf16"):
        resolve_precision("bf16", "cpu")


def test_bf16_on_the_cpu_makes_the_same_picture_as_fp32(tiny_models):
    """The opt-in CPU bf16 path end to end: a finite picture close to fp32's (tolerance: 12 of 255 levels on
    average, measured about 2; bf16 keeps 8 bits of mantissa)."""
    request = GenerationRequest(prompt="a red chair", model=str(tiny_models("sd15")), steps=4, seed=3)
    pictures = []
    for dtype in (torch.float32, torch.bfloat16):
        engine = Engine(device="cpu", dtype=dtype, models=ModelCache())
        pictures.append(np.asarray(engine.generate(request).images[0].image, dtype=np.float32))
    assert np.abs(pictures[0] - pictures[1]).mean() < 12


def _overflowing_vae(path, dtype):
    vae = load_model(path, dtype=dtype).pipeline.vae
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(2e3)
    return vae


def test_an_fp16_vae_that_overflows_is_decoded_again_in_fp32(tiny_models):
    path = tiny_models("sd15")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 500
    vae = _overflowing_vae(path, torch.float16)
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(latents.half()).sample).all()  # what users got: a black picture
        guard_vae(vae)
        guarded = vae.decode(latents.half()).sample
        reference = _overflowing_vae(path, torch.float32).decode(latents).sample
    assert torch.isfinite(guarded).all()
    assert guarded.dtype == torch.float16  # the pipeline gets what it asked for
    assert vae_upcast(vae)
    assert (guarded.float() - reference).abs().max() < 1e-2
    # The decoder stays in fp32: the next picture decodes once, finite.
    with torch.no_grad():
        assert torch.isfinite(vae.decode(latents.half()).sample).all()


def test_a_vae_that_is_nan_even_in_fp32_names_the_fix(tiny_models):
    engine = Engine(device="cpu", models=ModelCache())
    model = engine.load(tiny_models("sd15"))
    conv_out = model.pipeline.vae.decoder.conv_out
    saved = conv_out.weight.detach().clone()
    try:
        with torch.no_grad():
            conv_out.weight.fill_(float("nan"))
        request = GenerationRequest(prompt="a lamp", model=str(tiny_models("sd15")), steps=2, seed=1)
        with pytest.raises(AtelierError, match="NaN values even in fp32.*choose another VAE") as failed:
            engine.generate(request)
        assert failed.value.field == "vae"
    finally:
        with torch.no_grad():
            conv_out.weight.copy_(saved)
