"""A1111 sampler names build working diffusers schedulers from a model's own scheduler config."""

from __future__ import annotations

import copy
import inspect

import diffusers
import pytest
import torch

from atelier.engine.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    make_scheduler,
    resolve_sampler,
    supported_schedule_types,
)
from atelier.errors import AtelierError

torch.set_num_threads(1)

# diffusers' schedulers call numpy on torch tensors thousands of times per construction; numpy 2 warns each time.
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning"),
]

# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json (a PNDMScheduler config).
SD15_SCHEDULER_CONFIG: dict[str, object] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "trained_betas": None,
}

# SDXL-style configs spell out "leading" spacing, which shifts where diffusers starts a Karras schedule.
LEADING_SCHEDULER_CONFIG = {**SD15_SCHEDULER_CONFIG, "timestep_spacing": "leading"}

REQUIRED_SAMPLERS = [
    "Euler a",
    "Euler",
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DDIM",
    "UniPC",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "LCM",
]

# diffusers' documented A1111 equivalents (docs/source/en/api/schedulers/overview.md).
DOCUMENTED_CLASSES = {
    "DPM++ 2M": diffusers.DPMSolverMultistepScheduler,
    "DPM++ 2M SDE": diffusers.DPMSolverMultistepScheduler,
    "DPM++ SDE": diffusers.DPMSolverSinglestepScheduler,
    "DPM2": diffusers.KDPM2DiscreteScheduler,
    "DPM2 a": diffusers.KDPM2AncestralDiscreteScheduler,
    "Euler": diffusers.EulerDiscreteScheduler,
    "Euler a": diffusers.EulerAncestralDiscreteScheduler,
    "Heun": diffusers.HeunDiscreteScheduler,
    "LMS": diffusers.LMSDiscreteScheduler,
    "UniPC": diffusers.UniPCMultistepScheduler,
    "LCM": diffusers.LCMScheduler,
    "DDIM": diffusers.DDIMScheduler,
}


def _sd15_sigma(timestep: int) -> float:
    alphas_cumprod = diffusers.DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG).alphas_cumprod
    return float(((1 - alphas_cumprod[timestep]) / alphas_cumprod[timestep]) ** 0.5)


def _sample_with_oracle(scheduler: diffusers.SchedulerMixin, steps: int = 10) -> float:
    """Mean error of a full sampling loop whose model predicts the exact noise towards a known target.

    With a perfect noise prediction every sampler must land on the target (DDIM/PLMS end one training step
    early, at the model's smallest noise level, so a small residual remains).
    """
    alphas_cumprod = diffusers.DDPMScheduler.from_config(SD15_SCHEDULER_CONFIG).alphas_cumprod
    generator = torch.Generator().manual_seed(0)
    target = torch.rand((1, 4, 8, 8), generator=generator) * 2 - 1
    scheduler.set_timesteps(steps)
    sample = torch.randn(target.shape, generator=generator) * scheduler.init_noise_sigma
    step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for timestep in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, timestep)
        # Sigma samplers use fractional timesteps; interpolate alpha-bar between training steps.
        low = int(float(timestep))
        high = min(low + 1, len(alphas_cumprod) - 1)
        fraction = float(timestep) - low
        alpha_bar = alphas_cumprod[low] * (1 - fraction) + alphas_cumprod[high] * fraction
        noise = (model_input - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()
        extra = {"generator": generator} if step_takes_generator else {}
        sample = scheduler.step(noise, timestep, sample, **extra).prev_sample
    return float((sample - target).abs().mean())


def test_a1111_names_are_offered_in_a1111_order() -> None:
    for name in REQUIRED_SAMPLERS:
        assert name in SAMPLER_NAMES
    # A1111 lists the k-diffusion samplers (DPM++ first) before the timestep samplers.
    assert SAMPLER_NAMES.index("DPM++ 2M") < SAMPLER_NAMES.index("Euler a") < SAMPLER_NAMES.index("DDIM")
    assert SCHEDULE_TYPES[0] == "Automatic"
    assert "Karras" in SCHEDULE_TYPES


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_builds_from_the_sd15_config_and_sets_timesteps(name: str) -> None:
    scheduler = make_scheduler(name, SD15_SCHEDULER_CONFIG)
    if name in DOCUMENTED_CLASSES:
        assert type(scheduler) is DOCUMENTED_CLASSES[name]
    scheduler.set_timesteps(20)
    assert len(scheduler.timesteps) >= 20
    # The model's betas and prediction type carry over untouched.
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_start == 0.00085
    assert scheduler.config.prediction_type == "epsilon"


# Karras runs use A1111's legacy combined names ("DPM++ 2M Karras"), which must select Karras sigmas.
@pytest.mark.parametrize(
    "name",
    list(SAMPLER_NAMES)
    + [f"{name} Karras" for name in SAMPLER_NAMES if "Karras" in supported_schedule_types(name)],
)
def test_every_sampler_denoises_to_the_target_with_a_perfect_model(name: str) -> None:
    scheduler = make_scheduler(name, SD15_SCHEDULER_CONFIG)
    if name.endswith(" Karras"):
        assert scheduler.config.use_karras_sigmas is True
    assert _sample_with_oracle(scheduler) < 0.05


def test_plain_names_do_not_use_karras_sigmas() -> None:
    assert make_scheduler("DPM++ 2M", SD15_SCHEDULER_CONFIG).config.use_karras_sigmas is False
    assert make_scheduler("LMS", SD15_SCHEDULER_CONFIG).config.use_karras_sigmas is False


def test_karras_schedule_spans_the_model_sigma_range_like_a1111() -> None:
    # A1111 builds Karras sigmas from the model's smallest to largest sigma (k-diffusion get_sigmas_karras);
    # with a "leading" model config diffusers would otherwise start lower (about 11.0 instead of 14.6).
    scheduler = make_scheduler("Euler", LEADING_SCHEDULER_CONFIG, "Karras")
    scheduler.set_timesteps(20)
    sigma_min, sigma_max, rho = _sd15_sigma(0), _sd15_sigma(999), 7.0
    ramp = torch.linspace(0, 1, 20, dtype=torch.float64)
    expected = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    expected = torch.cat([expected, torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(scheduler.sigmas.double(), expected, rtol=1e-4, atol=1e-5)


def test_automatic_keeps_the_models_timestep_spacing() -> None:
    automatic = make_scheduler("Euler", LEADING_SCHEDULER_CONFIG)
    automatic.set_timesteps(20)
    assert float(automatic.timesteps[0]) == 951.0  # "leading" with steps_offset=1, as the model asks
    uniform = make_scheduler("Euler", LEADING_SCHEDULER_CONFIG, "Uniform")
    uniform.set_timesteps(20)
    assert float(uniform.timesteps[0]) == 999.0  # k-diffusion's default discretisation starts at the top


def test_explicit_schedule_type_overrides_a_karras_model_config() -> None:
    karras_model_config = {**SD15_SCHEDULER_CONFIG, "use_karras_sigmas": True}
    assert make_scheduler("DPM++ 2M", karras_model_config, "Uniform").config.use_karras_sigmas is False
    exponential = make_scheduler("DPM++ 2M", karras_model_config, "Exponential")
    assert exponential.config.use_exponential_sigmas is True
    assert exponential.config.use_karras_sigmas is False
    exponential.set_timesteps(20)


def test_names_pin_what_they_imply_over_a_dpmsolver_model_config() -> None:
    model_config = {**SD15_SCHEDULER_CONFIG, "algorithm_type": "sde-dpmsolver++", "solver_order": 3}
    deterministic = make_scheduler("DPM++ 2M", model_config)
    assert deterministic.config.algorithm_type == "dpmsolver++"
    assert deterministic.config.solver_order == 2
    stochastic = make_scheduler("DPM++ 2M SDE", SD15_SCHEDULER_CONFIG)
    assert stochastic.config.algorithm_type == "sde-dpmsolver++"
    assert stochastic.config.final_sigmas_type == "zero"
    assert make_scheduler("DPM++ 2M SDE Heun", SD15_SCHEDULER_CONFIG).config.solver_type == "heun"
    assert make_scheduler("PLMS", {**SD15_SCHEDULER_CONFIG, "skip_prk_steps": False}).config.skip_prk_steps


def test_make_scheduler_does_not_modify_the_model_config() -> None:
    model_config = copy.deepcopy(SD15_SCHEDULER_CONFIG)
    make_scheduler("DPM++ 2M Karras", model_config)
    assert model_config == SD15_SCHEDULER_CONFIG


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("dpm++ 2m karras", ("DPM++ 2M", "Karras")),
        ("DPM++ 2M SDE Karras", ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Heun Exponential", ("DPM++ 2M SDE Heun", "Exponential")),
        ("euler A", ("Euler a", "Automatic")),
        ("  Euler   a ", ("Euler a", "Automatic")),
        ("k_euler_a", ("Euler a", "Automatic")),
        ("k_dpmpp_2m_ka", ("DPM++ 2M", "Karras")),
        ("ddim", ("DDIM", "Automatic")),
    ],
)
def test_legacy_and_differently_cased_names_resolve(given: str, expected: tuple[str, str]) -> None:
    assert resolve_sampler(given) == expected


def test_schedule_type_is_resolved_case_insensitively() -> None:
    assert resolve_sampler("DPM++ 2M", "karras") == ("DPM++ 2M", "Karras")
    assert resolve_sampler("Euler", "sgm_uniform") == ("Euler", "SGM Uniform")
    assert resolve_sampler("Euler", None) == ("Euler", "Automatic")
    assert resolve_sampler("Euler", "") == ("Euler", "Automatic")
    # A legacy suffix plus an explicit "Automatic" (as A1111 infotext writes it) keeps the suffix.
    assert resolve_sampler("DPM++ 2M Karras", "Automatic") == ("DPM++ 2M", "Karras")


def test_unknown_sampler_lists_valid_names() -> None:
    with pytest.raises(AtelierError) as excinfo:
        resolve_sampler("Euler b")
    assert excinfo.value.field == "sampler"
    message = str(excinfo.value)
    assert "'Euler b'" in message
    for name in SAMPLER_NAMES:
        assert name in message
    with pytest.raises(AtelierError):
        make_scheduler("DPM++ 2S a", SD15_SCHEDULER_CONFIG)


def test_unknown_schedule_type_lists_valid_types() -> None:
    with pytest.raises(AtelierError) as excinfo:
        resolve_sampler("Euler", "Cosine")
    assert excinfo.value.field == "schedule_type"
    assert "Karras" in str(excinfo.value)


def test_schedule_type_the_scheduler_cannot_produce_is_refused() -> None:
    for name in ("Euler a", "DDIM", "LCM"):
        assert "Karras" not in supported_schedule_types(name)
        with pytest.raises(AtelierError) as excinfo:
            make_scheduler(name, SD15_SCHEDULER_CONFIG, "Karras")
        assert excinfo.value.field == "schedule_type"


def test_conflicting_legacy_suffix_and_schedule_type_is_refused() -> None:
    with pytest.raises(AtelierError) as excinfo:
        resolve_sampler("DPM++ 2M Karras", "Exponential")
    assert excinfo.value.field == "schedule_type"
