"""Scene presets for product shots: the shipped data, custom files, and unknown names."""

from __future__ import annotations

import pytest

from atelier.campaign.product import load_scene_presets, scene_preset
from atelier.errors import AtelierError, NotFoundError


def test_the_shipped_scenes_load_with_prompts_and_light() -> None:
    presets = load_scene_presets()
    assert {"studio", "marble", "forest", "living-room", "kitchen", "beach"} <= set(presets)
    for preset in presets.values():
        assert preset.prompt and preset.negative and preset.title
        assert 0 <= preset.light < 360
    studio = presets["studio"]
    assert studio.light == 270 and studio.shadow_direction == 90  # light from above: shadow straight down
    assert studio.prompt_for("a yellow windbreaker").startswith("a yellow windbreaker, ")
    assert studio.prompt_for("  ") == studio.prompt


def test_an_unknown_scene_lists_the_known_ones() -> None:
    with pytest.raises(NotFoundError) as caught:
        scene_preset("marbel")
    message = str(caught.value)
    assert "did you mean 'marble'" in message and "forest" in message and "\n" not in message
    assert caught.value.field == "scene"
    with pytest.raises(NotFoundError, match="known scenes: studio, marble"):
        scene_preset("zzzz")


def test_a_custom_scenes_file(tmp_path) -> None:
    path = tmp_path / "scenes.toml"
    path.write_text('[attic]\nprompt = "a dusty attic"\nlight = 10.5\n', encoding="utf-8")
    attic = scene_preset("attic", load_scene_presets(path))
    assert (attic.title, attic.negative, attic.light) == ("attic", "", 10.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[attic]\nprompt = "x"\nnegtive = "y"\n', "did you mean 'negative'"),
        ("[attic]\nlight = 90\n", "needs a prompt"),
        ('[attic]\nprompt = "x"\nlight = 400\n', "light must be degrees"),
        ('attic = "x"\n', "must be a table"),
        ("[attic\n", "not valid TOML"),
    ],
)
def test_a_bad_scenes_file_is_one_line(tmp_path, text, message) -> None:
    path = tmp_path / "scenes.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(AtelierError, match=message) as caught:
        load_scene_presets(path)
    assert caught.value.field == "scene"
