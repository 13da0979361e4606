"""Ad layout templates: data (TOML), not code.

A template describes where images, colour panels, the logo and the text go, in units relative to the
canvas, so one template serves every channel size. Because a 1200x628 banner and a 1080x1920 story need
different arrangements, a template has up to three layouts picked by the canvas's aspect ratio
(:func:`orientation_for`): ``landscape`` (wider than 5:4), ``portrait`` (taller than 3:4) and ``square``
(everything between, including 4:5). A missing orientation falls back to ``square``.

Units:

* ``box = [x, y, w, h]``: fractions of the canvas width (x, w) and height (y, h).
* sizes (font sizes, gaps, corner radii, rule and border thickness): fractions of the canvas's
  *shorter* side, so type keeps its proportions when the canvas is stretched.
* colours: a brand role (``primary``, ``secondary``, ``text``, ``background``), ``auto`` (for the
  CTA label: whichever brand colour contrasts most with the button) or ``#RRGGBB``.

A layout is drawn in this order: background colour, ``panels`` with ``layer = "back"``, ``images``
(materials; cover crops, contain letterboxes), the other ``panels`` (gradients and scrims), the logo,
then text ``blocks``. A block stacks its ``items`` (``headline``, ``body``, ``cta``, ``rule``) top to
bottom and aligns the stack inside its box; each text item is fitted by :func:`atelier.campaign.text.fit_text`.
Item styles come from the template's ``[styles.<item>]`` tables, overridden per block by
``<item> = { ... }`` inside the block.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import ImageColor

from atelier.config_models import closest
from atelier.errors import AtelierError, NotFoundError
from atelier.files import read_toml

BUILTIN_DIR = Path(__file__).parent / "templates"
ORIENTATIONS = ("square", "landscape", "portrait")
COLOR_ROLES = ("primary", "secondary", "text", "background")
ITEMS = ("headline", "body", "cta", "rule")
WEIGHTS = ("regular", "medium", "bold", "black")


def orientation_for(width: int, height: int) -> str:
    """``landscape`` above 5:4, ``portrait`` below 3:4, else ``square`` (4:5 posts count as square)."""
    aspect = width / height
    if aspect > 1.25:
        return "landscape"
    if aspect < 0.75:
        return "portrait"
    return "square"


Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ItemStyle:
    """How one stacked item (headline, body, cta or rule) looks. Sizes are fractions of the short side."""

    weight: str = "regular"
    color: str = "text"
    max_size: float = 0.04
    min_size: float = 0.02
    line_spacing: float = 1.25
    max_lines: int | None = None
    share: float | None = None
    balance: bool = False
    uppercase: bool = False
    space_before: float = 0.02
    # The CTA button; ``radius`` is a fraction of the button's height (0.5 makes a pill).
    fill: str = "primary"
    padding_x: float = 1.2
    padding_y: float = 0.7
    radius: float = 0.5
    # The rule (a short accent bar).
    width: float = 0.07
    height: float = 0.008


DEFAULT_STYLES: dict[str, ItemStyle] = {
    "headline": ItemStyle(
        weight="bold",
        max_size=0.085,
        min_size=0.026,
        line_spacing=1.08,
        share=0.62,
        balance=True,
        space_before=0.03,
    ),
    "body": ItemStyle(
        weight="regular", max_size=0.036, min_size=0.019, line_spacing=1.35, balance=True, space_before=0.02
    ),
    "cta": ItemStyle(weight="bold", color="auto", max_size=0.03, min_size=0.018, space_before=0.04),
    "rule": ItemStyle(color="primary", space_before=0.0),
}
_ITEM_KEYS = {
    "headline": {
        "weight",
        "color",
        "max_size",
        "min_size",
        "line_spacing",
        "max_lines",
        "share",
        "balance",
        "uppercase",
        "space_before",
    },
    "cta": {
        "weight",
        "color",
        "max_size",
        "min_size",
        "uppercase",
        "space_before",
        "fill",
        "padding_x",
        "padding_y",
        "radius",
    },
    "rule": {"color", "width", "height", "space_before"},
}
_ITEM_KEYS["body"] = _ITEM_KEYS["headline"]


@dataclass(frozen=True)
class ImageSlot:
    box: Box
    fit: str = "cover"
    material: int = 0  # offset into the materials list; slots with different offsets show different images
    focus: tuple[float, float] = (0.5, 0.5)  # which part of the image a cover crop keeps
    radius: float = 0.0
    shadow: float = 0.0  # opacity of a soft drop shadow
    border: float = 0.0
    border_color: str = "background"
    fill: str = "background"  # behind a contained image


@dataclass(frozen=True)
class Panel:
    box: Box
    color: str = "background"
    opacity: float = 1.0
    radius: float = 0.0
    fade: str = "none"  # the edge that is fully transparent: none, top, bottom, left, right
    fade_length: float = 0.6  # share of the panel over which it ramps up to full opacity
    layer: str = "front"  # back: under the images; front: over them


@dataclass(frozen=True)
class BlockPanel:
    """A panel that hugs the text stack of a block, ``padding`` around it."""

    color: str = "background"
    opacity: float = 0.9
    radius: float = 0.012
    padding: float = 0.04


@dataclass(frozen=True)
class TextBlock:
    box: Box
    items: tuple[str, ...]
    styles: dict[str, ItemStyle]
    align: str = "left"
    valign: str = "bottom"
    panel: BlockPanel | None = None


@dataclass(frozen=True)
class LogoSlot:
    box: Box
    align: str = "left"
    valign: str = "top"


@dataclass(frozen=True)
class Layout:
    background: str
    images: tuple[ImageSlot, ...]
    panels: tuple[Panel, ...]
    blocks: tuple[TextBlock, ...]
    logo: LogoSlot | None


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    layouts: dict[str, Layout]
    source: Path

    def layout_for(self, width: int, height: int) -> tuple[str, Layout]:
        """The layout for a canvas of this size and the orientation it was chosen for."""
        orientation = orientation_for(width, height)
        if orientation in self.layouts:
            return orientation, self.layouts[orientation]
        if "square" in self.layouts:
            return "square", self.layouts["square"]
        name = next(iter(self.layouts))
        return name, self.layouts[name]


def builtin_template_names() -> list[str]:
    """Names usable as ``template = "..."`` without a path."""
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.toml"))


def load_template(name_or_path: str, base_dir: Path | None = None) -> Template:
    """A built-in template by name, or a template file (relative paths are read from ``base_dir``)."""
    if name_or_path in builtin_template_names():
        return parse_template_file(BUILTIN_DIR / f"{name_or_path}.toml")
    if not name_or_path.endswith(".toml"):
        raise NotFoundError(
            f"unknown template {name_or_path!r}: use one of {', '.join(builtin_template_names())} "
            "or a path to a .toml template file",
            field="template",
        )
    path = Path(name_or_path)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise NotFoundError(f"template file not found: {name_or_path}", field="template")
    return parse_template_file(path)


def parse_template_file(path: Path) -> Template:
    data = read_toml(path, what="template", field="template")
    return _TemplateParser(path).template(data)


class _TemplateParser:
    """Checks a template table by table so every error names the exact key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> AtelierError:
        return AtelierError(f"template {self.path.name}: {where} {message}", field="template")

    def check_keys(self, table: Any, allowed: set[str], where: str) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(where, "must be a table")
        for key in table:
            if key not in allowed:
                guess = closest(key, allowed)
                hint = f" (did you mean {guess!r}?)" if guess else ""
                raise self.fail(f"{where}.{key}" if where else key, f"is not a known key{hint}")
        return table

    def number(self, value: Any, where: str, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise self.fail(where, f"must be a number from {low:g} to {high:g}, got {value!r}")
        return float(value)

    def choice(self, value: Any, where: str, options: tuple[str, ...]) -> str:
        if value not in options:
            raise self.fail(where, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def color(self, value: Any, where: str, *, allow_auto: bool = False) -> str:
        if value in COLOR_ROLES or (allow_auto and value == "auto"):
            return value
        if isinstance(value, str) and value.startswith("#"):
            try:
                ImageColor.getrgb(value)
            except ValueError:
                pass
            else:
                return value
        roles = ", ".join(COLOR_ROLES + (("auto",) if allow_auto else ()))
        raise self.fail(where, f"must be a brand role ({roles}) or #RRGGBB, got {value!r}")

    def box(self, value: Any, where: str) -> Box:
        if not isinstance(value, list) or len(value) != 4:
            raise self.fail(where, "must be [x, y, w, h] in fractions of the canvas")
        x, y, w, h = (self.number(v, where, 0.0, 1.0) for v in value)
        if x + w > 1.0001 or y + h > 1.0001 or w <= 0 or h <= 0:
            raise self.fail(where, f"must lie inside the canvas, got {value!r}")
        return (x, y, w, h)

    def template(self, data: dict[str, Any]) -> Template:
        self.check_keys(data, {"name", "description", "styles", "layouts"}, "")
        styles = dict(DEFAULT_STYLES)
        for item, table in self.check_keys(data.get("styles", {}), set(ITEMS), "styles").items():
            styles[item] = self.style(item, styles[item], table, f"styles.{item}")
        layouts_table = self.check_keys(data.get("layouts"), set(ORIENTATIONS), "layouts")
        if not layouts_table:
            raise self.fail("layouts", f"needs at least one of {', '.join(ORIENTATIONS)}")
        layouts = {
            name: self.layout(table, styles, f"layouts.{name}") for name, table in layouts_table.items()
        }
        return Template(
            name=str(data.get("name", self.path.stem)),
            description=str(data.get("description", "")),
            layouts=layouts,
            source=self.path,
        )

    def style(self, item: str, base: ItemStyle, table: Any, where: str) -> ItemStyle:
        self.check_keys(table, _ITEM_KEYS[item], where)
        changes: dict[str, Any] = {}
        for key, value in table.items():
            at = f"{where}.{key}"
            if key == "weight":
                changes[key] = self.choice(value, at, WEIGHTS)
            elif key in ("color", "fill"):
                changes[key] = self.color(value, at, allow_auto=key == "color" and item == "cta")
            elif key in ("balance", "uppercase"):
                if not isinstance(value, bool):
                    raise self.fail(at, "must be true or false")
                changes[key] = value
            elif key == "max_lines":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise self.fail(at, "must be a whole number of at least 1")
                changes[key] = value
            elif key == "line_spacing":
                changes[key] = self.number(value, at, 0.8, 3.0)
            elif key in ("padding_x", "padding_y"):
                changes[key] = self.number(value, at, 0.0, 5.0)
            elif key == "radius":
                changes[key] = self.number(value, at, 0.0, 0.5)
            else:
                changes[key] = self.number(value, at, 0.0, 1.0)
        style = replace(base, **changes)
        if style.min_size > style.max_size:
            raise self.fail(where, "min_size is larger than max_size")
        return style

    def layout(self, table: Any, styles: dict[str, ItemStyle], where: str) -> Layout:
        self.check_keys(table, {"background", "images", "panels", "blocks", "logo"}, where)
        images = tuple(
            self.image_slot(slot, f"{where}.images[{i}]") for i, slot in enumerate(table.get("images", []))
        )
        panels = tuple(
            self.panel(panel, f"{where}.panels[{i}]") for i, panel in enumerate(table.get("panels", []))
        )
        blocks = tuple(
            self.block(block, styles, f"{where}.blocks[{i}]")
            for i, block in enumerate(table.get("blocks", []))
        )
        if not images:
            raise self.fail(where, "needs at least one entry in images")
        placed = [item for block in blocks for item in block.items if item != "rule"]
        for item in ("headline", "body", "cta"):
            if placed.count(item) != 1:
                raise self.fail(where, f"must place {item} in exactly one block (found {placed.count(item)})")
        logo = None
        if "logo" in table:
            logo_table = self.check_keys(table["logo"], {"box", "align", "valign"}, f"{where}.logo")
            logo = LogoSlot(
                box=self.box(logo_table.get("box"), f"{where}.logo.box"),
                align=self.choice(
                    logo_table.get("align", "left"), f"{where}.logo.align", ("left", "center", "right")
                ),
                valign=self.choice(
                    logo_table.get("valign", "top"), f"{where}.logo.valign", ("top", "middle", "bottom")
                ),
            )
        return Layout(
            background=self.color(table.get("background", "background"), f"{where}.background"),
            images=images,
            panels=panels,
            blocks=blocks,
            logo=logo,
        )

    def image_slot(self, table: Any, where: str) -> ImageSlot:
        allowed = {f.name for f in fields(ImageSlot)}
        self.check_keys(table, allowed, where)
        focus = table.get("focus", [0.5, 0.5])
        if not isinstance(focus, list) or len(focus) != 2:
            raise self.fail(f"{where}.focus", "must be [x, y] fractions of the image")
        material = table.get("material", 0)
        if isinstance(material, bool) or not isinstance(material, int) or material < 0:
            raise self.fail(f"{where}.material", "must be a whole number of at least 0")
        return ImageSlot(
            box=self.box(table.get("box"), f"{where}.box"),
            fit=self.choice(table.get("fit", "cover"), f"{where}.fit", ("cover", "contain")),
            material=material,
            focus=(
                self.number(focus[0], f"{where}.focus", 0, 1),
                self.number(focus[1], f"{where}.focus", 0, 1),
            ),
            radius=self.number(table.get("radius", 0.0), f"{where}.radius", 0, 0.5),
            shadow=self.number(table.get("shadow", 0.0), f"{where}.shadow", 0, 1),
            border=self.number(table.get("border", 0.0), f"{where}.border", 0, 0.2),
            border_color=self.color(table.get("border_color", "background"), f"{where}.border_color"),
            fill=self.color(table.get("fill", "background"), f"{where}.fill"),
        )

    def panel(self, table: Any, where: str) -> Panel:
        self.check_keys(table, {f.name for f in fields(Panel)}, where)
        return Panel(
            box=self.box(table.get("box"), f"{where}.box"),
            color=self.color(table.get("color", "background"), f"{where}.color"),
            opacity=self.number(table.get("opacity", 1.0), f"{where}.opacity", 0, 1),
            radius=self.number(table.get("radius", 0.0), f"{where}.radius", 0, 0.5),
            fade=self.choice(
                table.get("fade", "none"), f"{where}.fade", ("none", "top", "bottom", "left", "right")
            ),
            fade_length=self.number(table.get("fade_length", 0.6), f"{where}.fade_length", 0.05, 1),
            layer=self.choice(table.get("layer", "front"), f"{where}.layer", ("back", "front")),
        )

    def block(self, table: Any, styles: dict[str, ItemStyle], where: str) -> TextBlock:
        self.check_keys(table, {"box", "items", "align", "valign", "panel", *ITEMS}, where)
        items = table.get("items")
        if not isinstance(items, list) or not items:
            raise self.fail(f"{where}.items", f"must be a list of {', '.join(ITEMS)}")
        for item in items:
            self.choice(item, f"{where}.items", ITEMS)
        block_styles = {
            item: self.style(item, styles[item], table[item], f"{where}.{item}")
            if item in table
            else styles[item]
            for item in ITEMS
        }
        panel = None
        if "panel" in table:
            panel_table = self.check_keys(
                table["panel"], {f.name for f in fields(BlockPanel)}, f"{where}.panel"
            )
            panel = BlockPanel(
                color=self.color(panel_table.get("color", "background"), f"{where}.panel.color"),
                opacity=self.number(panel_table.get("opacity", 0.9), f"{where}.panel.opacity", 0, 1),
                radius=self.number(panel_table.get("radius", 0.012), f"{where}.panel.radius", 0, 0.5),
                padding=self.number(panel_table.get("padding", 0.04), f"{where}.panel.padding", 0, 0.3),
            )
        return TextBlock(
            box=self.box(table.get("box"), f"{where}.box"),
            items=tuple(items),
            styles=block_styles,
            align=self.choice(table.get("align", "left"), f"{where}.align", ("left", "center", "right")),
            valign=self.choice(table.get("valign", "bottom"), f"{where}.valign", ("top", "middle", "bottom")),
            panel=panel,
        )
