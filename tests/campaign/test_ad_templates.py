"""Layout templates are TOML data, checked key by key."""

from __future__ import annotations

import pytest

from atelier.campaign.templates import (
    builtin_template_names,
    load_template,
    orientation_for,
    parse_template_file,
)
from atelier.errors import AtelierError, NotFoundError

MINIMAL = """
name = "mine"
[layouts.square]
[[layouts.square.images]]
box = [0, 0, 1, 0.6]
[[layouts.square.blocks]]
box = [0.05, 0.62, 0.9, 0.35]
items = ["headline", "body", "cta"]
"""


def test_builtin_templates_cover_every_orientation():
    assert {"hero", "split", "frame", "mosaic"} <= set(builtin_template_names())
    for name in builtin_template_names():
        template = load_template(name)
        assert set(template.layouts) == {"square", "landscape", "portrait"}, name
        assert template.description


@pytest.mark.parametrize(
    ("size", "orientation"),
    [
        ((1080, 1080), "square"),
        ((1080, 1350), "square"),
        ((1080, 1920), "portrait"),
        ((1200, 628), "landscape"),
        ((640, 480), "landscape"),
    ],
)
def test_the_layout_follows_the_aspect_ratio(size, orientation):
    assert orientation_for(*size) == orientation
    name, layout = load_template("split").layout_for(*size)
    assert name == orientation
    assert layout == load_template("split").layouts[orientation]


def test_a_template_with_only_a_square_layout_serves_every_size(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL)
    template = parse_template_file(path)
    assert template.name == "mine"
    assert template.layout_for(1200, 628)[0] == "square"
    assert load_template("mine.toml", tmp_path).layouts.keys() == {"square"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("box = [0, 0, 1, 0.6]", "box = [0, 0, 1, 0.6]\nfitt = 'cover'"),
            r"layouts\.square\.images\[0\]\.fitt .*'fit'",
        ),
        (("box = [0, 0, 1, 0.6]", "box = [0.5, 0, 1, 0.6]"), r"images\[0\]\.box must lie inside the canvas"),
        (
            ("box = [0, 0, 1, 0.6]", "box = [0, 0, 1, 0.6]\nfit = 'stretch'"),
            r"fit must be one of cover, contain",
        ),
        (
            ('items = ["headline", "body", "cta"]', 'items = ["headline", "cta"]'),
            r"must place body in exactly one",
        ),
        (
            ("[layouts.square]", "[layouts.square]\nbackground = 'teal-ish'"),
            r"background must be a brand role",
        ),
        (
            ('items = ["headline", "body", "cta"]', 'items = ["headline", "body", "cta"]\nalign = "justify"'),
            r"align",
        ),
        (('name = "mine"', 'name = "mine"\n[styles.headline]\nmin_size = 0.2\nmax_size = 0.1'), r"min_size"),
    ],
)
def test_template_errors_name_the_key(tmp_path, change, message):
    path = tmp_path / "bad.toml"
    path.write_text(MINIMAL.replace(*change))
    with pytest.raises(AtelierError, match=message):
        parse_template_file(path)


def test_unknown_templates_are_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="unknown template 'fancy'.*hero"):
        load_template("fancy")
    with pytest.raises(NotFoundError, match="template file not found"):
        load_template("missing.toml", tmp_path)
    (tmp_path / "broken.toml").write_text("layouts = [")
    with pytest.raises(AtelierError, match="broken.toml is not valid TOML"):
        load_template("broken.toml", tmp_path)
