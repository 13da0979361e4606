"""A1111 sampler names mapped onto diffusers schedulers.

Users pick samplers by the names AUTOMATIC1111's web UI shows ("Euler a", "DPM++ 2M", ...) and a separate
"Schedule type" ("Automatic", "Karras", ...), as A1111 does since v1.9. Older combined names such as
"DPM++ 2M Karras" and k-diffusion aliases such as "k_euler_a" are accepted and split into the two parts.

Every scheduler is built with ``SchedulerClass.from_config(model_scheduler_config, **overrides)``: the model's
own scheduler config (betas, prediction type, timestep spacing, ...) is kept, and only what the A1111 name
implies is overridden. The mapping follows the table in diffusers' scheduler overview
(https://huggingface.co/docs/diffusers/api/schedulers/overview), with these choices:

* "DPM++ 2M" variants pin ``algorithm_type`` and ``solver_order=2``, because a model config written for
  DPMSolverMultistepScheduler may carry another algorithm or order that the name rules out.
* "DPM++ SDE" uses DPMSolverSinglestepScheduler (the documented equivalent) with
  ``algorithm_type="sde-dpmsolver++"``, so that it stays stochastic like k-diffusion's ``sample_dpmpp_sde``.
  The closer port, DPMSolverSDEScheduler, needs the ``torchsde`` package, which Atelier does not install.
* "PLMS" is PNDMScheduler with ``skip_prk_steps=True``, which is the pure linear multistep method.
* k-diffusion samplers always finish at sigma 0 (the last step returns the denoised image), so the
  DPM++ and Euler samplers set ``final_sigmas_type="zero"``. The single-step solver also gets
  ``lower_order_final=True``, which diffusers would otherwise switch on itself with a warning.
* UniPC keeps diffusers' defaults (variant "bh2", order 2); A1111's own defaults ("bh1", order 3) are web-UI
  settings, not part of the name.
* "DPM++ 2S a", "DPM++ 3M SDE", "DPM fast", "DPM adaptive" and "Restart" have no diffusers equivalent and are
  not offered.

Schedule types:

* "Automatic" changes nothing: the model config decides the timestep spacing. A1111 (v1.9+) instead
  resolves "Automatic" to a per-sampler default (Karras for DPM++ 2M, DPM++ SDE and DPM2, Exponential for
  DPM++ 2M SDE); choose that schedule type explicitly to get the same result.
* "Karras" and "Exponential" set ``use_karras_sigmas`` / ``use_exponential_sigmas`` and
  ``timestep_spacing="linspace"``: A1111 spans these schedules from the model's largest sigma to its smallest,
  and with a "leading" spacing diffusers would start them at a lower sigma.
* "Uniform" is k-diffusion's default discretisation (``timestep_spacing="linspace"``), "SGM Uniform" is
  ``timestep_spacing="trailing"`` (both from the same diffusers table).
* Samplers whose diffusers scheduler has no ``use_karras_sigmas`` (Euler a, DDIM, PLMS, LCM) reject
  "Karras" and "Exponential" instead of silently ignoring them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from atelier.errors import AtelierError

AUTOMATIC = "Automatic"
KARRAS = "Karras"
EXPONENTIAL = "Exponential"
UNIFORM = "Uniform"
SGM_UNIFORM = "SGM Uniform"

# In A1111's order (modules/sd_schedulers.py), limited to those diffusers can express.
SCHEDULE_TYPES: list[str] = [AUTOMATIC, UNIFORM, KARRAS, EXPONENTIAL, SGM_UNIFORM]

# Noise-schedule flags diffusers allows at most one of; an explicit schedule type turns the others off so a
# model config that ships e.g. use_karras_sigmas=True cannot leak into "Uniform".
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

_SCHEDULE_OVERRIDES: dict[str, dict[str, object]] = {
    AUTOMATIC: {},
    UNIFORM: {"timestep_spacing": "linspace"},
    KARRAS: {"timestep_spacing": "linspace", "use_karras_sigmas": True},
    EXPONENTIAL: {"timestep_spacing": "linspace", "use_exponential_sigmas": True},
    SGM_UNIFORM: {"timestep_spacing": "trailing"},
}

# Names A1111 also accepts for schedule types (modules/sd_schedulers.py aliases and internal names).
_SCHEDULE_ALIASES = {"sgmuniform": SGM_UNIFORM, "sgm_uniform": SGM_UNIFORM}


@dataclass(frozen=True)
class _Sampler:
    name: str
    # A SchedulerMixin subclass. Left open because type checkers read diffusers' package-level names as its
    # placeholder classes (diffusers.utils.dummy_pt_objects), which do not subclass SchedulerMixin.
    scheduler_class: type[Any]
    overrides: Mapping[str, object] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    def supports(self, schedule_type: str) -> bool:
        required = {KARRAS: "use_karras_sigmas", EXPONENTIAL: "use_exponential_sigmas"}.get(schedule_type)
        if required is None:
            return True
        return required in _init_parameters(self.scheduler_class)


def _init_parameters(scheduler_class: type[SchedulerMixin]) -> frozenset[str]:
    return frozenset(inspect.signature(scheduler_class.__init__).parameters)


_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}

# A1111's display order (modules/sd_samplers_kdiffusion.py, then the timestep samplers).
_SAMPLERS: list[_Sampler] = [
    _Sampler("DPM++ 2M", DPMSolverMultistepScheduler, _DPMPP_2M, ("k_dpmpp_2m",)),
    _Sampler(
        "DPM++ SDE",
        DPMSolverSinglestepScheduler,
        {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 2,
            "final_sigmas_type": "zero",
            "lower_order_final": True,
        },
        ("k_dpmpp_sde",),
    ),
    _Sampler("DPM++ 2M SDE", DPMSolverMultistepScheduler, _DPMPP_2M_SDE, ("k_dpmpp_2m_sde",)),
    _Sampler(
        "DPM++ 2M SDE Heun",
        DPMSolverMultistepScheduler,
        {**_DPMPP_2M_SDE, "solver_type": "heun"},
        ("k_dpmpp_2m_sde_heun",),
    ),
    _Sampler("Euler a", EulerAncestralDiscreteScheduler, {}, ("k_euler_a", "k_euler_ancestral")),
    _Sampler("Euler", EulerDiscreteScheduler, {"final_sigmas_type": "zero"}, ("k_euler",)),
    _Sampler("LMS", LMSDiscreteScheduler, {}, ("k_lms",)),
    _Sampler("Heun", HeunDiscreteScheduler, {}, ("k_heun",)),
    _Sampler("DPM2", KDPM2DiscreteScheduler, {}, ("k_dpm_2",)),
    _Sampler("DPM2 a", KDPM2AncestralDiscreteScheduler, {}, ("k_dpm_2_a",)),
    _Sampler("DDIM", DDIMScheduler),
    _Sampler("PLMS", PNDMScheduler, {"skip_prk_steps": True}),
    _Sampler("UniPC", UniPCMultistepScheduler),
    _Sampler("LCM", LCMScheduler),
]

SAMPLER_NAMES: list[str] = [sampler.name for sampler in _SAMPLERS]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


_SAMPLERS_BY_KEY: dict[str, _Sampler] = {}
for _sampler in _SAMPLERS:
    for _name in (_sampler.name, *_sampler.aliases):
        _SAMPLERS_BY_KEY[_key(_name)] = _sampler

# Suffixes of legacy combined names: "DPM++ 2M Karras", "k_dpmpp_2m_ka", "DPM++ 2M SDE Exponential".
_LEGACY_SUFFIXES: list[tuple[str, str]] = [
    (" " + _key(KARRAS), KARRAS),
    (" " + _key(EXPONENTIAL), EXPONENTIAL),
    ("_ka", KARRAS),
    ("_exp", EXPONENTIAL),
]


def _find_sampler(name: str) -> tuple[_Sampler, str | None]:
    """The sampler a name denotes, and the schedule type a legacy suffix implies (None when absent)."""
    key = _key(name)
    if key in _SAMPLERS_BY_KEY:
        return _SAMPLERS_BY_KEY[key], None
    for suffix, schedule_type in _LEGACY_SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in _SAMPLERS_BY_KEY:
            return _SAMPLERS_BY_KEY[key[: -len(suffix)]], schedule_type
    raise AtelierError(
        f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLER_NAMES)}",
        field="sampler",
    )


def _canonical_schedule_type(schedule_type: str | None) -> str:
    if schedule_type is None or not schedule_type.strip():
        return AUTOMATIC
    key = _key(schedule_type)
    for label in SCHEDULE_TYPES:
        if key == _key(label):
            return label
    if key.replace(" ", "") in _SCHEDULE_ALIASES:
        return _SCHEDULE_ALIASES[key.replace(" ", "")]
    raise AtelierError(
        f"unknown schedule type {schedule_type!r}; choose one of: {', '.join(SCHEDULE_TYPES)}",
        field="schedule_type",
    )


def resolve_sampler(name: str, schedule_type: str | None = None) -> tuple[str, str]:
    """Canonical ``(sampler name, schedule type)`` for a user's choice, as written to infotext.

    Case-insensitive; legacy names carry their schedule type ("DPM++ 2M Karras" -> ("DPM++ 2M", "Karras")).
    A legacy suffix that contradicts an explicit non-automatic ``schedule_type`` is an error, as is a schedule
    type the sampler's diffusers scheduler cannot produce.
    """
    sampler, implied_schedule_type = _find_sampler(name)
    requested = _canonical_schedule_type(schedule_type)
    if implied_schedule_type is not None and requested not in (AUTOMATIC, implied_schedule_type):
        raise AtelierError(
            f"sampler {name!r} already implies the {implied_schedule_type} schedule type, "
            f"which conflicts with schedule type {requested!r}",
            field="schedule_type",
        )
    resolved = implied_schedule_type or requested
    if not sampler.supports(resolved):
        raise AtelierError(
            f"sampler {sampler.name!r} does not support the {resolved} schedule type; "
            f"choose one of: {', '.join(supported_schedule_types(sampler.name))}",
            field="schedule_type",
        )
    return sampler.name, resolved


def supported_schedule_types(name: str) -> list[str]:
    """The schedule types a sampler accepts, in :data:`SCHEDULE_TYPES` order."""
    sampler, _ = _find_sampler(name)
    return [schedule_type for schedule_type in SCHEDULE_TYPES if sampler.supports(schedule_type)]


def make_scheduler(
    name: str, scheduler_config: Mapping[str, object], schedule_type: str | None = None
) -> SchedulerMixin:
    """A fresh diffusers scheduler for an A1111 sampler name, built from the model's own scheduler config."""
    sampler_name, resolved = resolve_sampler(name, schedule_type)
    sampler = _SAMPLERS_BY_KEY[_key(sampler_name)]

    overrides: dict[str, object] = dict(sampler.overrides)
    if resolved != AUTOMATIC:
        supported = _init_parameters(sampler.scheduler_class)
        overrides.update({flag: False for flag in _SIGMA_FLAGS if flag in supported})
        overrides.update(_SCHEDULE_OVERRIDES[resolved])
    return sampler.scheduler_class.from_config(dict(scheduler_config), **overrides)
