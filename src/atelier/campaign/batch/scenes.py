"""Scenes: the prompts, sizes, seeds and LoRA a catalog row is photographed in (``scenes.toml``), checked."""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.config_models import unknown_key_error
from atelier.engine import (
    GenerationRequest,
    check_name,
    resolve_sampler,
)
from atelier.errors import AtelierError
from atelier.files import read_toml
from atelier.images import DEFAULT_MAX_PIXELS

MAX_PHOTO_PIXELS = DEFAULT_MAX_PIXELS
MODEL_HASH_LENGTH = 10  # A1111's short model hash: enough to tell checkpoints apart, same in both modes
MAX_SEED = 2**32 - 1
_SCENE_DEFAULTS = GenerationRequest(prompt="")
SCENE_KEYS = (
    "name",
    "prompt",
    "negative",
    "width",
    "height",
    "steps",
    "sampler",
    "seeds",
    "lora",
    "cfg_scale",
    "denoising_strength",
    "mask_blur",
    "inpaint_only_masked",
    "inpainting_fill",
)
_LORA_KEYS = ("name", "weight")
# The GenerationRequest fields Scene.request sets: the settings that make one catalog image differ from another.
HASHED_SETTINGS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "denoising_strength",
    "mask_blur",
    "inpaint_only_masked",
    "inpainting_fill",
)


@dataclass(frozen=True)
class SceneLora:
    name: str
    weight: float = 1.0

    @property
    def tag(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"


@dataclass(frozen=True)
class Scene:
    """One ``[[scene]]`` of a scenes file; prompts still hold their ``{placeholders}``."""

    name: str
    prompt: str
    seeds: tuple[int, ...]
    negative: str = ""
    width: int = _SCENE_DEFAULTS.width
    height: int = _SCENE_DEFAULTS.height
    steps: int = _SCENE_DEFAULTS.steps
    sampler: str = _SCENE_DEFAULTS.sampler
    cfg_scale: float = _SCENE_DEFAULTS.cfg_scale
    denoising_strength: float = _SCENE_DEFAULTS.denoising_strength
    mask_blur: int = _SCENE_DEFAULTS.mask_blur
    inpaint_only_masked: bool = _SCENE_DEFAULTS.inpaint_only_masked
    inpainting_fill: str = _SCENE_DEFAULTS.inpainting_fill
    lora: SceneLora | None = None

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The column names the prompts use, in order of first use."""
        names = [name for text in (self.prompt, self.negative) for _, name in _template_parts(text) if name]
        return tuple(dict.fromkeys(names))

    def fill(self, values: dict[str, str], columns: tuple[str, ...]) -> tuple[str, str]:
        """The prompt (with the LoRA tag) and negative prompt for one catalog row."""
        for name in self.placeholders:
            if name not in columns:
                raise AtelierError(
                    f"scene {self.name!r} uses {{{name}}}, which is not a column of the catalog", field=name
                )
            if not values.get(name, "").strip():
                raise AtelierError(f"{name} is empty, and scene {self.name!r} uses {{{name}}}", field=name)
        prompt = _fill(self.prompt, values)
        if self.lora is not None:
            prompt = f"{prompt} {self.lora.tag}" if prompt else self.lora.tag
        return prompt, _fill(self.negative, values)

    def request(self, prompt: str, negative: str, seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            sampler=self.sampler,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            seed=seed,
            width=self.width,
            height=self.height,
            denoising_strength=self.denoising_strength,
            mask_blur=self.mask_blur,
            inpaint_only_masked=self.inpaint_only_masked,
            inpainting_fill=self.inpainting_fill,
        )


def _template_parts(text: str) -> Iterator[tuple[str, str | None]]:
    """(literal text, placeholder name or None) pieces; ``{{`` and ``}}`` are literal braces."""
    for literal, name, format_spec, conversion in string.Formatter().parse(text):
        if name is not None and (format_spec or conversion):
            raise ValueError(f"{{{name}...}} has a format or conversion")
        yield literal, name


def _fill(text: str, values: dict[str, str]) -> str:
    return "".join(literal + (values[name] if name else "") for literal, name in _template_parts(text))


def _check_template(text: str, where: str) -> None:
    try:
        names = [name for _, name in _template_parts(text) if name is not None]
    except ValueError as exc:
        raise AtelierError(
            f"{where}: {exc}; placeholders are {{column}}, literal braces are written {{{{ and }}}}"
        ) from None
    for name in names:
        if not name.isidentifier():
            raise AtelierError(
                f"{where}: {{{name}}} is not a placeholder; use a column name such as {{product}}, "
                "and write {{ and }} for literal braces"
            )


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise unknown_key_error(key, allowed, where=where)


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AtelierError(f"{where}: {key} must be a number, got {value!r}", field=key)
    # 7 and 7.0 are the same setting; the request hash must not tell them apart.
    return float(value)


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise AtelierError(f"{where}: {key} must be text, got {value!r}", field=key)
    return value


def _parse_lora(value: Any, where: str) -> SceneLora:
    if isinstance(value, str):
        table: dict[str, Any] = {"name": value}
    elif isinstance(value, dict):
        table = value
        _check_keys(table, _LORA_KEYS, f"the lora of {where}")
    else:
        raise AtelierError(f"{where}: lora must be a name or {{name = ..., weight = ...}}", field="lora")
    name = check_name(_text(table.get("name"), "lora name", where), what="lora")
    weight = _number(table.get("weight", 1.0), "lora weight", where)
    return SceneLora(name, weight)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise AtelierError(f"{where}: seeds must be a list of integers, such as [1, 2, 3]", field="seeds")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            # -1 (random) would make every run a new request and defeat resuming.
            raise AtelierError(
                f"{where}: seeds must be integers from 0 to {MAX_SEED}, got {seed!r}", field="seeds"
            )
    if len(set(value)) != len(value):
        raise AtelierError(f"{where}: seeds lists a seed twice", field="seeds")
    return tuple(value)


def _parse_scene(table: Any, index: int) -> Scene:
    if not isinstance(table, dict):
        raise AtelierError(f"scene {index} is not a table; write each scene as [[scene]]")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AtelierError(f"scene {index} needs a name", field="name")
    where = f"scene {name!r}"
    _check_keys(table, SCENE_KEYS, where)
    try:
        check_name(name, what="scene")
    except AtelierError as exc:
        raise AtelierError(f"{where}: {exc}", field="name") from None
    if "prompt" not in table:
        raise AtelierError(f"{where} needs a prompt", field="prompt")
    if "seeds" not in table:
        raise AtelierError(f"{where} needs seeds, such as seeds = [1, 2, 3]", field="seeds")
    values: dict[str, Any] = {
        "name": name,
        "prompt": _text(table["prompt"], "prompt", where),
        "negative": _text(table.get("negative", ""), "negative", where),
        "seeds": _parse_seeds(table["seeds"], where),
    }
    for key in ("width", "height", "steps", "mask_blur", "inpaint_only_masked"):
        if key in table:
            values[key] = table[key]  # GenerationRequest.validate checks the types below
    for key in ("cfg_scale", "denoising_strength"):
        if key in table:
            values[key] = _number(table[key], key, where)
    for key in ("sampler", "inpainting_fill"):
        if key in table:
            values[key] = _text(table[key], key, where)
    if "lora" in table:
        values["lora"] = _parse_lora(table["lora"], where)
    scene = Scene(**values)
    if not isinstance(scene.inpaint_only_masked, bool):
        raise AtelierError(f"{where}: inpaint_only_masked must be true or false", field="inpaint_only_masked")
    _check_template(scene.prompt, f"{where} prompt")
    _check_template(scene.negative, f"{where} negative")
    try:
        resolve_sampler(scene.sampler)
        scene.request(scene.prompt, scene.negative, scene.seeds[0]).validate()
    except AtelierError as exc:
        raise AtelierError(f"{where}: {exc}", field=exc.field) from None
    return scene


def load_scenes(path: str | os.PathLike[str]) -> list[Scene]:
    """Read and check a scenes TOML file; any problem raises AtelierError naming the scene and key."""
    path = Path(path)
    data = read_toml(path, what="scenes file", field="scenes")
    _check_keys(data, ("scene",), path.name)
    tables = data.get("scene")
    if not isinstance(tables, list) or not tables:
        raise AtelierError(f"{path.name} has no scenes; add [[scene]] tables", field="scenes")
    scenes = [_parse_scene(table, index) for index, table in enumerate(tables, start=1)]
    seen: set[str] = set()
    for scene in scenes:
        if scene.name in seen:
            raise AtelierError(f"two scenes are named {scene.name!r}; scene names must differ", field="name")
        seen.add(scene.name)
    return scenes
