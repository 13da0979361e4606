"""An ad spec: channels (sizes), brand colours, animation settings and the spec file itself, checked.

A spec is TOML (or the same as JSON through the API); every key is known and checked, and files it names are
resolved against its folder (``AdSpec.resolve_file``: confined for API specs, free for the user's own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import ImageColor
from pydantic import Field, ValidationInfo, field_validator

from atelier.campaign.templates import (
    Template,
    builtin_template_names,
    load_template,
)
from atelier.campaign.text import (
    BUNDLED_FAMILIES,
    FontFamily,
    bundled_font_names,
    font_family_from_file,
)
from atelier.config_models import ConfigModel
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.files import read_toml

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
CROSSFADE_FRAMES = 3


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


class Brand(ConfigModel):
    """The four brand colour roles templates refer to (``[brand]`` in a spec: ``#RRGGBB`` or CSS names)."""

    primary: RGB = (255, 255, 255)
    secondary: RGB = (200, 200, 200)
    text: RGB = (255, 255, 255)
    background: RGB = (17, 17, 17)

    @field_validator("*", mode="before")
    @classmethod
    def _colour(cls, value: Any, info: ValidationInfo) -> Any:
        return value if isinstance(value, tuple) else parse_color(value, f"brand.{info.field_name}")

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


class AnimationSettings(ConfigModel):
    """``[animation]``: the GIF/MP4 made from all materials, on one channel's layout."""

    channel: Channel | None = None
    seconds_per_material: float = Field(default=1.5, ge=0.2, le=20)
    crossfade_seconds: float = Field(default=0.5, ge=0, le=5)
    gif_max_side: int = Field(default=600, ge=64, le=MAX_CHANNEL_SIDE)

    @field_validator("channel", mode="before")
    @classmethod
    def _channel(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Channel) else parse_channel(value)


class _SpecFile(ConfigModel):
    """The spec as written (TOML or JSON): every key known, every value checked, before files are looked at."""

    config_name = "ad spec"

    materials: list[str] = Field(min_length=1)
    headline: str
    body: str = ""
    cta: str = ""
    logo: str | None = None
    channels: list[str] = ["square"]
    template: str = "hero"
    font: str = "roboto"
    brand: Brand = Brand()
    animation: AnimationSettings = AnimationSettings()

    @field_validator("materials")
    @classmethod
    def _file_names(cls, materials: list[str]) -> list[str]:
        for entry in materials:
            if not entry.strip():
                raise AtelierError(f"materials entries must be file names, got {entry!r}", field="materials")
        return materials

    @field_validator("headline")
    @classmethod
    def _required(cls, headline: str) -> str:
        if not headline.strip():
            raise AtelierError("headline is required", field="headline")
        return headline

    @field_validator("logo")
    @classmethod
    def _logo(cls, logo: str | None) -> str | None:
        if logo is not None and not logo.strip():
            raise AtelierError("logo must be an image file name", field="logo")
        return logo

    def parsed_channels(self) -> tuple[Channel, ...]:
        if not self.channels:
            raise AtelierError("channels must be a non-empty list", field="channels")
        channels = tuple(parse_channel(name) for name in self.channels)
        seen: set[str] = set()
        for channel in channels:
            if channel.name in seen:
                raise AtelierError(f"channel {channel.name!r} is listed twice", field="channels")
            seen.add(channel.name)
        return channels


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


def parse_ad_spec(data: dict[str, Any], base_dir: Path, *, confined: bool = True) -> AdSpec:
    """Check an ad spec given as a dict (parsed TOML or JSON); files are resolved against ``base_dir``.

    ``confined`` (for specs from the API) keeps every file it names inside ``base_dir``.
    """
    written = _SpecFile.parse(data)
    spec = AdSpec(
        base_dir=Path(base_dir),
        materials=tuple(written.materials),
        headline=written.headline,
        body=written.body,
        cta=written.cta,
        logo=written.logo,
        channels=written.parsed_channels(),
        template=written.template or "hero",
        font=written.font or "roboto",
        brand=written.brand,
        animation=written.animation,
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
