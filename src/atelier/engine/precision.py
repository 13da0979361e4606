"""Numeric precision: which dtype a device runs in, and a VAE that never hands back a black or NaN picture.

``--precision`` (CLI) and the studio setting ``precision`` take one of :data:`PRECISIONS`:

* ``auto``: fp16 on CUDA (what the field's published speeds use; every CUDA card since Pascal runs it, bf16 only
  since Ampere), fp32 on the CPU.
* ``fp16``: CUDA only. On the CPU most fp16 kernels are slow reference code, so it is refused rather than slow.
* ``bf16``: CUDA cards that support it (Ampere and newer), and CPUs with native bf16 (AVX512-BF16 or AMX), where
  it halves memory and runs faster than fp32. Other CPUs emulate it, slower than fp32: refused with the reason.
* ``fp32``: anywhere; the reference.

The VAE is the part of Stable Diffusion that breaks in fp16: the stock SDXL VAE (and some SD 1.5 VAEs) make
activations above fp16's 65,504 in the decoder's last blocks, which come out as inf and then NaN, a black
picture. diffusers' SDXL pipelines upcast the VAE to fp32 for decoding when its config says ``force_upcast``
(the stock SDXL VAE's does), but not for every decode Atelier makes (hires fix, SD 1.5 checkpoints with a bad
VAE, external VAEs). :func:`guard_vae` checks every decoder output: a non-finite one in half precision is decoded
again in fp32 and the decoder stays in fp32 from then on (what A1111 does with "revert VAE to 32-bit floats");
one that is non-finite in fp32 too is an error naming the fixes. An fp16-safe VAE (``madebyollin/sdxl-vae-fp16-fix``,
used with ``--vae``) avoids the upcast and its cost altogether.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from atelier.errors import AtelierError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: settings and the CLI check a precision name without loading it.
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_GUARD_MARK = "_atelier_nan_guard"

log = logging.getLogger(__name__)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise AtelierError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}", field="precision"
        )


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic in hardware (AVX512-BF16 or AMX), where bf16 beats fp32."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, check, lambda: False)()) for check in checks)


def resolve_precision(precision: str, device: str) -> torch.dtype:
    """The dtype for ``precision`` on ``device``, or a one-line error saying why it cannot run there."""
    import torch

    check_precision(precision)
    on_cuda = device.startswith("cuda")
    if precision == "auto":
        return torch.float16 if on_cuda else torch.float32
    if precision == "fp16" and not on_cuda:
        raise AtelierError(
            f"fp16 needs a CUDA GPU; on {device} use fp32, or bf16 on a CPU with native bf16",
            field="precision",
        )
    if precision == "bf16":
        if on_cuda and not torch.cuda.is_bf16_supported():
            raise AtelierError("this GPU does not support bf16; use fp16", field="precision")
        if device == "cpu" and not cpu_has_native_bf16():
            raise AtelierError(
                "this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 is slower than fp32; use fp32",
                field="precision",
            )
    dtype: torch.dtype = getattr(torch, _DTYPE_NAMES[precision])
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    """``fp16``, ``bf16`` or ``fp32``: how a dtype is named in settings, logs and /metrics."""
    short = str(dtype).removeprefix("torch.")
    return next((name for name, long in _DTYPE_NAMES.items() if long == short), short)


class NonFiniteDecode(AtelierError):
    """The VAE decoded NaN or inf values even in fp32."""


def guard_vae(vae: Any) -> None:
    """Make every decode of ``vae`` finite: a half-precision decoder that overflows is run again in fp32.

    Installed once per VAE module (idempotent). The check is a forward hook on ``vae.decoder``, so it covers
    every path that decodes through this VAE (the pipelines, hires fix, tiled decoding tile by tile) and stays
    outside a compiled decoder's graph. Once it has overflowed, the decoder stays in fp32: the next picture
    would overflow again, and decoding it twice costs more than decoding it in fp32 once.
    """
    decoder = getattr(vae, "decoder", None)
    if decoder is None or getattr(decoder, _GUARD_MARK, False):
        return
    setattr(decoder, _GUARD_MARK, True)
    decoder.register_forward_pre_hook(_match_decoder_dtype, with_kwargs=True)
    decoder.register_forward_hook(_retry_in_fp32, with_kwargs=True)


def _match_decoder_dtype(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch

    # After an upcast the decoder is fp32 while the pipeline still hands it half-precision latents.
    dtype = next(module.parameters()).dtype
    if args and isinstance(args[0], torch.Tensor) and args[0].dtype != dtype:
        return (args[0].to(dtype), *args[1:]), kwargs
    return None


def _retry_in_fp32(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
    import torch

    if torch.isfinite(output).all():
        return output
    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        raise NonFiniteDecode(
            "the VAE decoded NaN values even in fp32: this VAE is damaged or does not belong to this "
            "checkpoint; choose another VAE",
            field="vae",
        )
    log.warning("the VAE overflowed in %s (a black picture); decoding in fp32 from now on", dtype)
    module.to(torch.float32)
    latents = args[0].to(torch.float32)
    # The eager forward of the module's class: a compiled forward would recompile for fp32 inputs.
    upcast = type(module).forward(module, latents, *args[1:], **kwargs)
    if not torch.isfinite(upcast).all():
        raise NonFiniteDecode(
            "the VAE decoded NaN values even in fp32: this VAE is damaged or does not belong to this "
            "checkpoint; choose another VAE",
            field="vae",
        )
    return upcast.to(output.dtype)


def vae_upcast(vae: Any) -> bool:
    """True when :func:`guard_vae` had to move this VAE's decoder to fp32."""
    import torch

    decoder = getattr(vae, "decoder", None)
    if decoder is None or not getattr(decoder, _GUARD_MARK, False):
        return False
    return bool(next(decoder.parameters()).dtype == torch.float32 and vae.dtype != torch.float32)
