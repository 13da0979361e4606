"""Scene presets for product shots (studio sweep, marble table, forest trail, ...), as editable data.

The presets are ``scenes.toml`` beside this module (or any file of the same form): one table per scene with its
``title``, ``prompt``, ``negative`` and ``light``, the direction the light comes from, which sets where the shadow
falls. A catalog batch's ``scenes.toml`` (:mod:`atelier.campaign.batch.scenes`) is a different thing: it fixes the
sizes, seeds and LoRA of a whole run, where a preset only describes a place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from atelier.config_models import closest, unknown_key_error
from atelier.engine import check_name
from atelier.errors import AtelierError, NotFoundError
from atelier.files import read_toml

SCENES_FILE = Path(__file__).with_name("scenes.toml")
SCENE_PRESET_KEYS = ("title", "prompt", "negative", "light")


@dataclass(frozen=True)
class ScenePreset:
    """A place to photograph a product in."""

    name: str
    title: str
    prompt: str
    negative: str = ""
    light: float = 270.0  # degrees the light comes from: 0 right, 90 below, 180 left, 270 above

    @property
    def shadow_direction(self) -> float:
        """Where the shadow falls: away from the light."""
        return (self.light + 180.0) % 360.0

    def prompt_for(self, product: str = "") -> str:
        """The scene's prompt, with the product's description (``"a yellow windbreaker"``) in front."""
        product = product.strip()
        return f"{product}, {self.prompt}" if product else self.prompt


def load_scene_presets(path: str | os.PathLike[str] | None = None) -> dict[str, ScenePreset]:
    """The presets in ``path`` (default: the shipped ``scenes.toml``), by name, in file order."""
    source = Path(path) if path is not None else SCENES_FILE
    data = read_toml(source, what="scene presets file", field="scene")
    presets = {}
    for name, table in data.items():
        check_name(name, what="scene")
        if not isinstance(table, dict):
            raise AtelierError(f"{source.name}: scene {name!r} must be a table", field="scene")
        for key in table:
            if key not in SCENE_PRESET_KEYS:
                raise unknown_key_error(key, SCENE_PRESET_KEYS, where=f"scene {name!r}", field="scene")
        prompt = table.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise AtelierError(f"{source.name}: scene {name!r} needs a prompt", field="scene")
        title, negative, light = table.get("title", name), table.get("negative", ""), table.get("light", 270)
        if not isinstance(title, str) or not isinstance(negative, str):
            raise AtelierError(
                f"{source.name}: scene {name!r}: title and negative must be text", field="scene"
            )
        if isinstance(light, bool) or not isinstance(light, int | float) or not 0 <= light < 360:
            raise AtelierError(
                f"{source.name}: scene {name!r}: light must be degrees from 0 to 359, got {light!r}",
                field="scene",
            )
        presets[name] = ScenePreset(name, title, prompt.strip(), negative.strip(), float(light))
    return presets


def scene_preset(name: str, presets: dict[str, ScenePreset] | None = None) -> ScenePreset:
    """The preset ``name`` (default presets: the shipped file); an unknown name lists the known ones."""
    known = load_scene_presets() if presets is None else presets
    if name in known:
        return known[name]
    guess = closest(name, known)
    hint = f"did you mean {guess!r}? " if guess else ""
    raise NotFoundError(f"unknown scene {name!r}: {hint}known scenes: {', '.join(known)}", field="scene")
