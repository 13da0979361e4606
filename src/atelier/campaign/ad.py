"""The ad composer: materials + copy + brand -> one PNG per channel, an animated GIF and (with ffmpeg) an MP4.

An ad spec is a TOML file::

    materials = ["forest.png", "model.png", "rain-closeup.png"]   # relative to the spec's folder
    headline = "Rain-ready. Trail-ready."
    body = "The Aurora windbreaker sheds a downpour and packs into its own pocket."
    cta = "Shop the collection"
    logo = "logo.png"                                              # optional
    channels = ["square", "portrait", "story", "banner", "640x480"]
    template = "hero"                                              # built-in name or a .toml path
    font = "roboto"                                                # bundled name or a .ttf/.otf path

    [brand]
    primary = "#F2C230"
    secondary = "#2F4F3A"
    text = "#FFFFFF"
    background = "#14241C"

    [animation]                                                    # optional
    channel = "square"            # default: the first entry of channels
    seconds_per_material = 1.5
    crossfade_seconds = 0.5
    gif_max_side = 600

Outputs in the chosen folder: ``<channel>.png`` for every channel at exactly its size, ``ad.gif`` and,
when ``ffmpeg`` is on PATH, ``ad.mp4``. The animation uses the layout of ``animation.channel`` (default:
the first channel): each material is held for ``seconds_per_material`` with the text on top, then
cross-fades into the next, and the last fades back into the first so the loop has no jump. With a single
material the text fades in over the image instead. The GIF is scaled so its longer side is at most
``gif_max_side`` pixels to keep it small enough to post; the MP4 keeps the channel's full size.

Each PNG carries an ``atelier:ad`` tEXt chunk (JSON: materials, texts, template, layout, channel, and
which texts had to be shortened).
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFilter, ImageOps, PngImagePlugin, UnidentifiedImageError

from atelier import __version__
from atelier.campaign.templates import (
    ImageSlot,
    ItemStyle,
    Panel,
    Template,
    TextBlock,
    builtin_template_names,
    load_template,
)
from atelier.campaign.text import (
    BUNDLED_FAMILIES,
    FittedText,
    FontFamily,
    bundled_font_names,
    draw_fitted_text,
    fit_text,
    font_family_from_file,
    get_font,
    ink_width,
)
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.files import read_toml, write_atomic

RGB = tuple[int, int, int]
Rect = tuple[int, int, int, int]

CHANNEL_PRESETS: dict[str, tuple[int, int]] = {
    "square": (1080, 1080),
    "portrait": (1080, 1350),
    "story": (1080, 1920),
    "banner": (1200, 628),
}
MIN_CHANNEL_SIDE = 64
MAX_CHANNEL_SIDE = 4096
# Materials larger than this are scaled down on load: no channel needs more and it bounds memory.
MAX_MATERIAL_SIDE = 4096
METADATA_KEY = "atelier:ad"
# On tiny or extreme canvases (a 728x90 leaderboard) relative sizes would shrink text to a few pixels;
# below this it is shortened with an ellipsis (and reported) instead.
MIN_TEXT_PX = 10
VIDEO_FPS = 25
_CROSSFADE_FRAMES = 3


@dataclass(frozen=True)
class Channel:
    """A named output size: a preset (``square``...) or a custom ``WxH``."""

    name: str
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def parse_channel(value: str) -> Channel:
    """``square``, ``portrait``, ``story``, ``banner`` or ``"WxH"`` (64 to 4096 pixels a side)."""
    if not isinstance(value, str):
        raise AtelierError(f"channel must be a name or 'WxH', got {value!r}", field="channels")
    name = value.strip().lower()
    if name in CHANNEL_PRESETS:
        return Channel(name, *CHANNEL_PRESETS[name])
    match = re.fullmatch(r"(\d+)\s*x\s*(\d+)", name)
    if not match:
        raise AtelierError(
            f"unknown channel {value!r}: use {', '.join(CHANNEL_PRESETS)} or a size like '640x480'",
            field="channels",
        )
    width, height = int(match.group(1)), int(match.group(2))
    for side in (width, height):
        if not MIN_CHANNEL_SIDE <= side <= MAX_CHANNEL_SIDE:
            raise AtelierError(
                f"channel {value!r}: each side must be {MIN_CHANNEL_SIDE} to {MAX_CHANNEL_SIDE} pixels",
                field="channels",
            )
    return Channel(f"{width}x{height}", width, height)


def parse_color(value: Any, where: str) -> RGB:
    """A ``#RRGGBB`` (or ``#RGB``, or CSS colour name) value as an RGB triple."""
    if isinstance(value, str):
        try:
            return ImageColor.getrgb(value)[:3]
        except ValueError:
            pass
    raise AtelierError(f"{where}: {value!r} is not a colour (use #RRGGBB)", field=where)


def _relative_luminance(color: RGB) -> float:
    channels = []
    for value in color:
        c = value / 255
        channels.append(c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4)
    return 0.2126 * channels[0] + 0.7152 * channels[1] + 0.0722 * channels[2]


def contrast_ratio(first: RGB, second: RGB) -> float:
    """WCAG contrast ratio between two colours (1 to 21)."""
    lighter, darker = sorted((_relative_luminance(first), _relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


@dataclass(frozen=True)
class Brand:
    """The four brand colour roles templates refer to."""

    primary: RGB = (255, 255, 255)
    secondary: RGB = (200, 200, 200)
    text: RGB = (255, 255, 255)
    background: RGB = (17, 17, 17)

    def color(self, role: str) -> RGB:
        """A role name or a literal ``#RRGGBB`` as RGB."""
        if role in ("primary", "secondary", "text", "background"):
            return getattr(self, role)
        return ImageColor.getrgb(role)[:3]

    def readable_on(self, fill: RGB) -> RGB:
        """The brand text or background colour that reads best on ``fill``; black or white if neither does."""
        best = max((self.text, self.background), key=lambda color: contrast_ratio(color, fill))
        if contrast_ratio(best, fill) >= 4.5:
            return best
        return max(((255, 255, 255), (17, 17, 17)), key=lambda color: contrast_ratio(color, fill))


@dataclass(frozen=True)
class AnimationSettings:
    channel: Channel | None = None
    seconds_per_material: float = 1.5
    crossfade_seconds: float = 0.5
    gif_max_side: int = 600


@dataclass(frozen=True)
class AdSpec:
    """A parsed ad spec; file references are still as written, relative to ``base_dir``."""

    base_dir: Path
    materials: tuple[str, ...]
    headline: str
    body: str = ""
    cta: str = ""
    logo: str | None = None
    channels: tuple[Channel, ...] = (Channel("square", 1080, 1080),)
    template: str = "hero"
    font: str = "roboto"
    brand: Brand = field(default_factory=Brand)
    animation: AnimationSettings = field(default_factory=AnimationSettings)
    # A spec that came over the API may only name files inside its folder; a user's own spec file (the CLI)
    # may name any file the user can read, relative to the spec's folder or absolute.
    confined: bool = True

    def resolve_file(self, entry: str, what: str) -> Path:
        """``entry`` relative to the spec's folder (or absolute, unless confined); confined: no ``..`` escapes."""
        base = self.base_dir.resolve()
        if self.confined and Path(entry).is_absolute():
            raise UnsafeFileError(
                f"{what} {entry!r} must be a path relative to the spec's folder", field=what
            )
        path = (base / Path(entry).expanduser()).resolve()
        if self.confined and not path.is_relative_to(base):
            raise UnsafeFileError(f"{what} {entry!r} points outside the spec's folder", field=what)
        if not path.is_file():
            raise NotFoundError(f"{what} file not found: {entry} (looked in {base})", field=what)
        return path

    def load_template(self) -> Template:
        """The spec's template: a built-in name, or a .toml file inside the spec's folder."""
        if self.template in builtin_template_names() or not self.template.endswith(".toml"):
            # A name: a built-in, or an error that lists the built-ins.
            return load_template(self.template)
        return load_template(str(self.resolve_file(self.template, "template")))

    def font_family(self) -> FontFamily:
        if self.font.lower() in BUNDLED_FAMILIES:
            return BUNDLED_FAMILIES[self.font.lower()]
        if not self.font.lower().endswith((".ttf", ".otf")):
            raise NotFoundError(
                f"unknown font {self.font!r}: use {', '.join(bundled_font_names())} or a .ttf/.otf file",
                field="font",
            )
        return font_family_from_file(self.resolve_file(self.font, "font"))


_SPEC_KEYS = (
    "materials",
    "headline",
    "body",
    "cta",
    "logo",
    "channels",
    "template",
    "font",
    "brand",
    "animation",
)
_BRAND_KEYS = ("primary", "secondary", "text", "background")
_ANIMATION_KEYS = ("channel", "seconds_per_material", "crossfade_seconds", "gif_max_side")


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
            raise AtelierError(f"unknown key {prefix + key!r} in ad spec{hint}", field=prefix + key)


def _string(data: dict[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise AtelierError(f"{key} must be text, got {type(value).__name__}", field=key)
    if required and not value.strip():
        raise AtelierError(f"{key} is required", field=key)
    return value


def _number(table: dict[str, Any], key: str, default: float, low: float, high: float, where: str) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise AtelierError(f"{where}.{key} must be a number from {low:g} to {high:g}", field=f"{where}.{key}")
    return float(value)


def parse_ad_spec(data: dict[str, Any], base_dir: Path, *, confined: bool = True) -> AdSpec:
    """Check an ad spec given as a dict (parsed TOML or JSON); files are resolved against ``base_dir``.

    ``confined`` (for specs from the API) keeps every file it names inside ``base_dir``.
    """
    _check_keys(data, _SPEC_KEYS, "")
    materials = data.get("materials")
    if not isinstance(materials, list) or not materials:
        raise AtelierError("materials must be a non-empty list of image files", field="materials")
    for entry in materials:
        if not isinstance(entry, str) or not entry.strip():
            raise AtelierError(f"materials entries must be file names, got {entry!r}", field="materials")

    channel_names = data.get("channels", ["square"])
    if not isinstance(channel_names, list) or not channel_names:
        raise AtelierError("channels must be a non-empty list", field="channels")
    channels = tuple(parse_channel(name) for name in channel_names)
    seen: set[str] = set()
    for channel in channels:
        if channel.name in seen:
            raise AtelierError(f"channel {channel.name!r} is listed twice", field="channels")
        seen.add(channel.name)

    brand_table = data.get("brand", {})
    if not isinstance(brand_table, dict):
        raise AtelierError("brand must be a table of colours", field="brand")
    _check_keys(brand_table, _BRAND_KEYS, "brand.")
    brand = Brand(**{key: parse_color(value, f"brand.{key}") for key, value in brand_table.items()})

    animation_table = data.get("animation", {})
    if not isinstance(animation_table, dict):
        raise AtelierError("animation must be a table", field="animation")
    _check_keys(animation_table, _ANIMATION_KEYS, "animation.")
    animation = AnimationSettings(
        channel=parse_channel(animation_table["channel"]) if "channel" in animation_table else None,
        seconds_per_material=_number(animation_table, "seconds_per_material", 1.5, 0.2, 20, "animation"),
        crossfade_seconds=_number(animation_table, "crossfade_seconds", 0.5, 0, 5, "animation"),
        gif_max_side=int(_number(animation_table, "gif_max_side", 600, 64, MAX_CHANNEL_SIDE, "animation")),
    )

    logo = data.get("logo")
    if logo is not None and (not isinstance(logo, str) or not logo.strip()):
        raise AtelierError("logo must be an image file name", field="logo")

    spec = AdSpec(
        base_dir=Path(base_dir),
        materials=tuple(materials),
        headline=_string(data, "headline", required=True),
        body=_string(data, "body"),
        cta=_string(data, "cta"),
        logo=logo,
        channels=channels,
        template=_string(data, "template") or "hero",
        font=_string(data, "font") or "roboto",
        brand=brand,
        animation=animation,
        confined=confined,
    )
    if spec.logo is not None:
        spec.resolve_file(spec.logo, "logo")
    spec.font_family()
    spec.load_template()
    return spec


def load_ad_spec(path: Path) -> AdSpec:
    """Read and check an ad spec TOML file; material and logo paths are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"ad spec not found: {path}")
    # The user's own file: it may name images anywhere they can read.
    return parse_ad_spec(read_toml(path, what="ad spec"), path.parent, confined=False)


@dataclass(frozen=True)
class PlacedText:
    """One text item as drawn: ``box`` is the space it was given, ``bbox`` the pixels it covers."""

    role: str
    lines: tuple[str, ...]
    font_size: int
    box: Rect
    bbox: Rect | None
    truncated: bool


@dataclass(frozen=True)
class ChannelResult:
    channel: Channel
    path: Path
    orientation: str
    texts: tuple[PlacedText, ...]

    @property
    def truncated(self) -> list[str]:
        """Roles whose text had to be shortened with an ellipsis (or dropped) to fit."""
        return [text.role for text in self.texts if text.truncated]


@dataclass(frozen=True)
class AdResult:
    out_dir: Path
    template: str
    channels: tuple[ChannelResult, ...]
    gif_path: Path
    gif_channel: Channel
    video_path: Path | None
    video_note: str | None  # why there is no MP4, when there is none

    @property
    def paths(self) -> list[Path]:
        paths = [result.path for result in self.channels] + [self.gif_path]
        return paths + ([self.video_path] if self.video_path else [])


def _rect(box: tuple[float, float, float, float], width: int, height: int) -> Rect:
    x, y, w, h = box
    return (round(x * width), round(y * height), round((x + w) * width), round((y + h) * height))


def _rounded_mask(size: tuple[int, int], radius: int) -> Image.Image:
    """A rounded-rectangle mask with anti-aliased corners (Pillow's own rounded_rectangle is aliased)."""
    width, height = size
    mask = np.full((height, width), 255, dtype=np.uint8)
    radius = min(radius, width // 2, height // 2)
    if radius > 0:
        centres = np.arange(radius) + 0.5
        distance = np.hypot(radius - centres[None, :], radius - centres[:, None])
        corner = np.round(np.clip(radius - distance + 0.5, 0.0, 1.0) * 255).astype(np.uint8)
        mask[:radius, :radius] = corner
        mask[:radius, width - radius :] = corner[:, ::-1]
        mask[height - radius :, :radius] = corner[::-1, :]
        mask[height - radius :, width - radius :] = corner[::-1, ::-1]
    return Image.fromarray(mask, "L")


def _scaled(mask: Image.Image, opacity: float) -> Image.Image:
    return mask.point([round(value * opacity) for value in range(256)])


def _fade_mask(size: tuple[int, int], fade: str, fade_length: float) -> Image.Image:
    """0 at the ``fade`` edge rising (smoothly) to 255 ``fade_length`` of the way across."""
    width, height = size
    if fade == "none":
        return Image.new("L", size, 255)
    length = width if fade in ("left", "right") else height
    t = np.clip(np.linspace(0.0, 1.0, length) / fade_length, 0.0, 1.0)
    ramp = t * t * (3 - 2 * t)
    if fade in ("bottom", "right"):
        ramp = ramp[::-1]
    horizontal = fade in ("left", "right")
    values = np.tile(ramp, (height, 1)) if horizontal else np.tile(ramp[:, None], (1, width))
    return Image.fromarray(np.round(values * 255).astype(np.uint8), "L")


@dataclass
class _PlannedItem:
    role: str
    style: ItemStyle
    height: int
    width: int
    fitted: FittedText | None = None
    truncated: bool = False
    top: int = 0
    left: int = 0


@dataclass
class _PlannedBlock:
    block: TextBlock
    inner: Rect
    items: list[_PlannedItem]
    panel_rect: Rect | None = None


class AdRenderer:
    """Lays out one template on one canvas size; renders frames for any rotation of the materials.

    Text is fitted once per canvas, so animation frames only redraw images and panels.
    """

    def __init__(
        self,
        template: Template,
        size: tuple[int, int],
        brand: Brand,
        family: FontFamily,
        texts: dict[str, str],
        logo: Image.Image | None = None,
    ) -> None:
        self.template = template
        self.width, self.height = size
        self.short = min(size)
        self.brand = brand
        self.family = family
        self.texts = texts
        self.logo = logo
        self.orientation, self.layout = template.layout_for(self.width, self.height)
        self.blocks = [self._plan_block(block) for block in self.layout.blocks]
        # Panels and shadows depend only on the layout, so animation frames reuse them.
        self._layers: dict[str, tuple[Image.Image, tuple[int, int]]] = {}

    def px(self, fraction: float) -> int:
        return round(fraction * self.short)

    def size_range(self, style: ItemStyle) -> tuple[int, int]:
        """Font sizes in pixels for ``style`` on this canvas; never below what people can read."""
        min_size = max(self.px(style.min_size), MIN_TEXT_PX)
        return min_size, max(self.px(style.max_size), min_size)

    # Text planning

    def _plan_block(self, block: TextBlock) -> _PlannedBlock:
        x0, y0, x1, y1 = _rect(block.box, self.width, self.height)
        padding = self.px(block.panel.padding) if block.panel else 0
        inner = (x0 + padding, y0 + padding, x1 - padding, y1 - padding)
        inner_w, inner_h = inner[2] - inner[0], inner[3] - inner[1]

        roles = [role for role in block.items if role == "rule" or self.texts.get(role, "").strip()]
        items: list[_PlannedItem] = []
        fixed_height = 0
        for role in roles:
            style = block.styles[role]
            if role == "rule":
                item = _PlannedItem(
                    role, style, height=max(self.px(style.height), 1), width=self.px(style.width)
                )
            elif role == "cta":
                item = self._plan_cta(style, inner_w, inner_h)
            else:
                item = _PlannedItem(role, style, height=0, width=0)
            items.append(item)
            fixed_height += item.height
        gaps = sum(self.px(item.style.space_before) for item in items[1:])
        free = max(inner_h - gaps - fixed_height, 0)
        remaining = free
        for item in items:
            if item.role not in ("headline", "body"):
                continue
            limit = remaining if item.style.share is None else min(round(item.style.share * free), remaining)
            text = self.texts[item.role]
            min_size, max_size = self.size_range(item.style)
            fitted = fit_text(
                text.upper() if item.style.uppercase else text,
                self.family,
                item.style.weight,
                max_width=inner_w,
                max_height=limit,
                max_size=max_size,
                min_size=min_size,
                line_spacing=item.style.line_spacing,
                max_lines=item.style.max_lines,
                balance=item.style.balance,
            )
            item.fitted = fitted
            item.height, item.width, item.truncated = fitted.height, fitted.width, fitted.truncated
            remaining -= fitted.height

        # Items that ended up empty leave no gap behind.
        shown = [item for item in items if item.height > 0]
        total = sum(item.height for item in shown) + sum(
            self.px(item.style.space_before) for item in shown[1:]
        )
        if block.valign == "top":
            top = inner[1]
        elif block.valign == "middle":
            top = inner[1] + (inner_h - total) // 2
        else:
            top = inner[3] - total
        for index, item in enumerate(shown):
            if index:
                top += self.px(item.style.space_before)
            item.top = top
            if block.align == "center":
                item.left = inner[0] + (inner_w - item.width) // 2
            elif block.align == "right":
                item.left = inner[2] - item.width
            else:
                item.left = inner[0]
            top += item.height

        planned = _PlannedBlock(block, inner, items)
        if block.panel and shown:
            content_left = min(item.left for item in shown)
            content_right = max(item.left + item.width for item in shown)
            planned.panel_rect = (
                content_left - padding,
                shown[0].top - padding,
                content_right + padding,
                shown[-1].top + shown[-1].height + padding,
            )
        return planned

    def _plan_cta(self, style: ItemStyle, inner_w: int, inner_h: int) -> _PlannedItem:
        label = self.texts["cta"].strip()
        label = label.upper() if style.uppercase else label
        min_size, max_size = self.size_range(style)

        def button_size(size: int, text_width: int) -> tuple[int, int]:
            # int(): Pillow's boxes are whole pixels here, though typed as floats.
            cap_height = int(-get_font(self.family, style.weight, size).getbbox("H", anchor="ls")[1])
            width = text_width + 2 * round(size * style.padding_x)
            height = cap_height + 2 * round(size * style.padding_y)
            return width, height

        def fits(size: int) -> bool:
            width, height = button_size(size, ink_width(get_font(self.family, style.weight, size), label))
            return width <= inner_w and height <= inner_h

        best = None
        low, high = min_size, max_size
        while low <= high:
            middle = (low + high) // 2
            if fits(middle):
                best, low = middle, middle + 1
            else:
                high = middle - 1
        size = best or min_size
        fitted = fit_text(
            label,
            self.family,
            style.weight,
            max_width=max(inner_w - 2 * round(size * style.padding_x), 0),
            max_height=inner_h,
            max_size=size,
            min_size=size,
            line_spacing=1.0,
            max_lines=1,
        )
        width, height = button_size(size, fitted.width)
        if fitted.empty or height > inner_h:
            return _PlannedItem("cta", style, height=0, width=0, fitted=fitted, truncated=True)
        return _PlannedItem(
            "cta", style, height=height, width=width, fitted=fitted, truncated=fitted.truncated
        )

    # Drawing

    def _layer(
        self, key: str, build: Callable[[], tuple[Image.Image, tuple[int, int]]]
    ) -> tuple[Image.Image, tuple[int, int]]:
        if key not in self._layers:
            self._layers[key] = build()
        return self._layers[key]

    def _panel_layer(self, panel: Panel) -> tuple[Image.Image, tuple[int, int]]:
        x0, y0, x1, y1 = _rect(panel.box, self.width, self.height)
        size = (max(x1 - x0, 1), max(y1 - y0, 1))
        alpha = np.asarray(_fade_mask(size, panel.fade, panel.fade_length), dtype=np.float32)
        alpha *= (
            np.asarray(_rounded_mask(size, self.px(panel.radius)), dtype=np.float32) / 255 * panel.opacity
        )
        layer = Image.new("RGBA", size, self.brand.color(panel.color))
        layer.putalpha(Image.fromarray(np.round(alpha).astype(np.uint8), "L"))
        return layer, (x0, y0)

    def _shadow_layer(self, slot: ImageSlot) -> tuple[Image.Image, tuple[int, int]]:
        x0, y0, x1, y1 = _rect(slot.box, self.width, self.height)
        blur = max(self.px(0.022), 1)
        margin = blur * 3
        layer = Image.new("RGBA", (x1 - x0 + 2 * margin, y1 - y0 + 2 * margin), (0, 0, 0, 0))
        mask = Image.new("L", layer.size, 0)
        mask.paste(_rounded_mask((x1 - x0, y1 - y0), self.px(slot.radius)), (margin, margin + self.px(0.012)))
        layer.putalpha(_scaled(mask.filter(ImageFilter.GaussianBlur(blur)), slot.shadow))
        return layer, (x0 - margin, y0 - margin)

    def _draw_image_slot(self, canvas: Image.Image, index: int, material: Image.Image) -> None:
        slot = self.layout.images[index]
        x0, y0, x1, y1 = _rect(slot.box, self.width, self.height)
        if slot.shadow > 0:
            shadow, position = self._layer(f"shadow{index}", lambda: self._shadow_layer(slot))
            canvas.alpha_composite(shadow, _clamp_dest(position), _source_offset(position))
        radius = self.px(slot.radius)
        border = self.px(slot.border)
        if border:
            frame = Image.new("RGBA", (x1 - x0, y1 - y0), self.brand.color(slot.border_color))
            frame.putalpha(_rounded_mask(frame.size, radius))
            canvas.alpha_composite(frame, (x0, y0))
        inner = (x0 + border, y0 + border, x1 - border, y1 - border)
        size = (max(inner[2] - inner[0], 1), max(inner[3] - inner[1], 1))
        if slot.fit == "cover":
            picture = ImageOps.fit(material, size, Image.Resampling.LANCZOS, centering=slot.focus)
        else:
            picture = Image.new("RGB", size, self.brand.color(slot.fill))
            contained = ImageOps.contain(material, size, Image.Resampling.LANCZOS)
            picture.paste(contained, ((size[0] - contained.width) // 2, (size[1] - contained.height) // 2))
        picture = picture.convert("RGBA")
        picture.putalpha(_rounded_mask(size, max(radius - border, 0)))
        canvas.alpha_composite(picture, (inner[0], inner[1]))

    def _draw_logo(self, canvas: Image.Image) -> None:
        slot = self.layout.logo
        if slot is None or self.logo is None:
            return
        x0, y0, x1, y1 = _rect(slot.box, self.width, self.height)
        logo = ImageOps.contain(self.logo, (max(x1 - x0, 1), max(y1 - y0, 1)), Image.Resampling.LANCZOS)
        left = {"left": x0, "center": (x0 + x1 - logo.width) // 2, "right": x1 - logo.width}[slot.align]
        top = {"top": y0, "middle": (y0 + y1 - logo.height) // 2, "bottom": y1 - logo.height}[slot.valign]
        canvas.alpha_composite(logo, (left, top))

    def _draw_panels(self, canvas: Image.Image, layer_name: str) -> None:
        for index, panel in enumerate(self.layout.panels):
            if panel.layer == layer_name:
                layer, position = self._layer(f"panel{index}", functools.partial(self._panel_layer, panel))
                canvas.alpha_composite(layer, position)

    def base(self, materials: list[Image.Image], start: int = 0) -> Image.Image:
        """Background, images (material ``start`` in the main slot), panels and logo; no text."""
        canvas = Image.new("RGBA", (self.width, self.height), self.brand.color(self.layout.background))
        self._draw_panels(canvas, "back")
        for index, slot in enumerate(self.layout.images):
            self._draw_image_slot(canvas, index, materials[(start + slot.material) % len(materials)])
        self._draw_panels(canvas, "front")
        self._draw_logo(canvas)
        return canvas

    def draw_text(self, canvas: Image.Image) -> list[PlacedText]:
        """Draw every block's panel and items onto ``canvas`` (RGBA); returns where each text landed."""
        placed: list[PlacedText] = []
        for planned in self.blocks:
            panel = planned.block.panel
            if panel and planned.panel_rect:
                x0, y0, x1, y1 = planned.panel_rect
                layer = Image.new("RGBA", (x1 - x0, y1 - y0), self.brand.color(panel.color))
                layer.putalpha(_scaled(_rounded_mask(layer.size, self.px(panel.radius)), panel.opacity))
                canvas.alpha_composite(layer, (x0, y0))
            draw = ImageDraw.Draw(canvas)
            inner_left, _, inner_right, _ = planned.inner
            for item in planned.items:
                if item.role == "rule":
                    if item.height:
                        draw.rectangle(
                            (item.left, item.top, item.left + item.width - 1, item.top + item.height - 1),
                            fill=self.brand.color(item.style.color),
                        )
                    continue
                if item.role == "cta":
                    placed.append(self._draw_cta(canvas, draw, item))
                    continue
                box = (inner_left, item.top, inner_right, item.top + item.height)
                bbox = None
                if item.fitted and not item.fitted.empty:
                    bbox = draw_fitted_text(
                        draw,
                        item.fitted,
                        self.family,
                        item.style.weight,
                        left=inner_left,
                        top=item.top,
                        width=inner_right - inner_left,
                        align=planned.block.align,
                        fill=self.brand.color(item.style.color),
                    )
                lines = item.fitted.lines if item.fitted else ()
                size = item.fitted.size if item.fitted else 0
                placed.append(PlacedText(item.role, lines, size, box, bbox, item.truncated))
        return placed

    def _draw_cta(self, canvas: Image.Image, draw: ImageDraw.ImageDraw, item: _PlannedItem) -> PlacedText:
        fitted = item.fitted
        box = (item.left, item.top, item.left + item.width, item.top + item.height)
        if not item.height or fitted is None or fitted.empty:
            return PlacedText("cta", (), 0, box, None, item.truncated)
        fill = self.brand.color(item.style.fill)
        button = Image.new("RGBA", (item.width, item.height), fill)
        button.putalpha(_rounded_mask(button.size, round(item.style.radius * item.height)))
        canvas.alpha_composite(button, (item.left, item.top))
        color = (
            self.brand.readable_on(fill) if item.style.color == "auto" else self.brand.color(item.style.color)
        )
        font = get_font(self.family, item.style.weight, fitted.size)
        cap_height = int(-font.getbbox("H", anchor="ls")[1])  # whole pixels, though typed as a float
        # Centre the capital height, not the full ascent, so the label sits optically in the middle.
        top = item.top + (item.height - cap_height) // 2 + cap_height - fitted.ascent
        pad_x = round(fitted.size * item.style.padding_x)
        bbox = draw_fitted_text(
            draw,
            fitted,
            self.family,
            item.style.weight,
            left=item.left + pad_x,
            top=top,
            width=item.width - 2 * pad_x,
            align="center",
            fill=color,
        )
        return PlacedText("cta", fitted.lines, fitted.size, box, bbox, item.truncated)

    def render(
        self, materials: list[Image.Image], start: int = 0, *, with_text: bool = True
    ) -> tuple[Image.Image, list[PlacedText]]:
        canvas = self.base(materials, start)
        placed = self.draw_text(canvas) if with_text else []
        return canvas.convert("RGB"), placed


def _clamp_dest(position: tuple[int, int]) -> tuple[int, int]:
    return (max(position[0], 0), max(position[1], 0))


def _source_offset(position: tuple[int, int]) -> tuple[int, int]:
    # alpha_composite cannot place a layer at negative coordinates; skip the part that is off-canvas.
    return (max(-position[0], 0), max(-position[1], 0))


def _open_image(path: Path, name: str, what: str, background: RGB | None) -> Image.Image:
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGBA")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise AtelierError(f"{what} {name} is not a readable image: {exc}", field=what) from exc
    image.thumbnail((MAX_MATERIAL_SIDE, MAX_MATERIAL_SIDE), Image.Resampling.LANCZOS)
    if background is None:
        return image
    # Cut-outs with transparency sit on the brand background rather than on black.
    flat = Image.new("RGBA", image.size, background + (255,))
    flat.alpha_composite(image)
    return flat.convert("RGB")


def _save_png(image: Image.Image, info: PngImagePlugin.PngInfo, path: Path) -> None:
    image.save(path, format="PNG", pnginfo=info)


def _png_info(
    spec: AdSpec, template: Template, channel: Channel, renderer: AdRenderer, placed: list[PlacedText]
) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    record = {
        "channel": channel.name,
        "size": [channel.width, channel.height],
        "template": template.name,
        "layout": renderer.orientation,
        "materials": list(spec.materials),
        "texts": {"headline": spec.headline, "body": spec.body, "cta": spec.cta},
        "truncated": [text.role for text in placed if text.truncated],
        "logo": spec.logo,
    }
    info.add_text(METADATA_KEY, json.dumps(record, ensure_ascii=True))
    info.add_text("Software", f"Atelier {__version__}")
    return info


@dataclass(frozen=True)
class _Animation:
    """Key images plus a schedule of (from key, to key, blend amount, milliseconds) steps.

    Frames are blended on demand, so the GIF can blend small copies of the keys and the video can
    stream full-size frames without holding them all in memory.
    """

    keys: list[Image.Image]
    steps: list[tuple[int, int, float, int]]

    def frames(self, size: tuple[int, int] | None = None) -> Iterator[tuple[Image.Image, int]]:
        keys = self.keys
        if size is not None and size != keys[0].size:
            keys = [key.resize(size, Image.Resampling.LANCZOS) for key in keys]
        for first, second, amount, duration in self.steps:
            frame = keys[first] if amount == 0 else Image.blend(keys[first], keys[second], amount)
            yield frame, duration


def _build_animation(
    renderer: AdRenderer, materials: list[Image.Image], animation: AnimationSettings
) -> _Animation:
    """Each material held with the text, cross-fading into the next and back to the first (a seamless loop).

    A single material has nothing to cycle, so the text fades in over the bare image instead.
    """
    hold = round(animation.seconds_per_material * 1000)
    fade_steps = _CROSSFADE_FRAMES if animation.crossfade_seconds > 0 else 0
    fade = round(animation.crossfade_seconds * 1000 / max(fade_steps, 1))

    def crossfade(first: int, second: int) -> list[tuple[int, int, float, int]]:
        return [(first, second, step / (fade_steps + 1), fade) for step in range(1, fade_steps + 1)]

    if len(materials) == 1:
        keys = [renderer.render(materials, 0, with_text=False)[0], renderer.render(materials, 0)[0]]
        steps = [(0, 0, 0.0, max(hold // 3, 100)), *crossfade(0, 1), (1, 1, 0.0, hold * 2), *crossfade(1, 0)]
        return _Animation(keys, steps)
    keys = [renderer.render(materials, index)[0] for index in range(len(materials))]
    steps = []
    for index in range(len(keys)):
        steps.append((index, index, 0.0, hold))
        steps.extend(crossfade(index, (index + 1) % len(keys)))
    return _Animation(keys, steps)


def _save_gif(animation: _Animation, path: Path, max_side: int, comment: str) -> None:
    width, height = animation.keys[0].size
    scale = min(1.0, max_side / max(width, height))
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    paletted, durations = [], []
    for frame, duration in animation.frames(size):
        # Dithering against the frame's own palette avoids visible bands in gradients and skies.
        palette = frame.quantize(256, method=Image.Quantize.FASTOCTREE)
        paletted.append(frame.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG))
        durations.append(duration)

    def write(temp: Path) -> None:
        paletted[0].save(
            temp,
            format="GIF",
            save_all=True,
            append_images=paletted[1:],
            duration=durations,
            loop=0,
            comment=comment,
        )

    write_atomic(path, write)


def _save_video(animation: _Animation, path: Path) -> str | None:
    """Encode the animation to MP4 with ffmpeg; returns why not when it could not."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "ffmpeg not found on PATH, so no ad.mp4 was made"
    width, height = animation.keys[0].size
    failure = "ffmpeg failed"
    # libx264 is the codec every player handles; some ffmpeg builds lack it, mpeg4 is always built in.
    for codec in ("libx264", "mpeg4"):

        def encode(temp: Path, codec: str = codec) -> None:
            command = [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(VIDEO_FPS), "-i", "-",
                # yuv420p, which players expect, needs even dimensions.
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", codec, "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4", str(temp),
            ]  # fmt: skip
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert process.stdin is not None
                for frame, duration in animation.frames():
                    data = frame.tobytes()
                    for _ in range(max(round(duration * VIDEO_FPS / 1000), 1)):
                        process.stdin.write(data)
                process.stdin.close()
            except BrokenPipeError:
                pass
            stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
            if process.wait() != 0:
                last_line = (
                    stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
                )
                raise _VideoError(f"ffmpeg ({codec}) failed: {last_line}")

        try:
            write_atomic(path, encode)
            return None
        except _VideoError as exc:
            failure = str(exc)
    return failure


class _VideoError(Exception):
    pass


def compose_ad(
    spec: AdSpec,
    out_dir: Path,
    *,
    resolve_material: Callable[[str], Path] | None = None,
    template: Template | None = None,
    make_video: bool = True,
) -> AdResult:
    """Render ``spec`` into ``out_dir``: ``<channel>.png`` per channel, ``ad.gif`` and, with ffmpeg, ``ad.mp4``.

    ``resolve_material`` maps each ``materials`` entry to an image file (the service passes one that
    understands ids of generated images); by default entries are files in the spec's folder.
    ``template`` replaces the spec's template (for trying one copy deck in several layouts).
    """
    resolve = resolve_material or (lambda entry: spec.resolve_file(entry, "material"))
    if template is None:
        template = spec.load_template()
    family = spec.font_family()
    materials = [
        _open_image(resolve(entry), entry, "material", spec.brand.background) for entry in spec.materials
    ]
    logo = _open_image(spec.resolve_file(spec.logo, "logo"), spec.logo, "logo", None) if spec.logo else None
    texts = {"headline": spec.headline, "body": spec.body, "cta": spec.cta}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[ChannelResult] = []
    for channel in spec.channels:
        renderer = AdRenderer(template, channel.size, spec.brand, family, texts, logo)
        image, placed = renderer.render(materials, 0)
        info = _png_info(spec, template, channel, renderer, placed)
        path = write_atomic(out_dir / f"{channel.name}.png", functools.partial(_save_png, image, info))
        results.append(ChannelResult(channel, path, renderer.orientation, tuple(placed)))

    gif_channel = spec.animation.channel or spec.channels[0]
    renderer = AdRenderer(template, gif_channel.size, spec.brand, family, texts, logo)
    animation = _build_animation(renderer, materials, spec.animation)
    comment = json.dumps(
        {"channel": gif_channel.name, "template": template.name, "materials": list(spec.materials)}
    )
    gif_path = out_dir / "ad.gif"
    _save_gif(animation, gif_path, spec.animation.gif_max_side, comment)

    video_file = out_dir / "ad.mp4"
    video_note = _save_video(animation, video_file) if make_video else "video not requested"
    video_path = video_file if video_note is None else None
    return AdResult(out_dir, template.name, tuple(results), gif_path, gif_channel, video_path, video_note)
