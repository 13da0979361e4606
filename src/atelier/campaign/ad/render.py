"""Drawing one channel of an ad: the template's layout filled with materials, copy, logo and brand colours."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from atelier.campaign.ad.spec import MAX_MATERIAL_SIDE, MIN_TEXT_PX, RGB, Brand, Channel, Rect
from atelier.campaign.templates import (
    ImageSlot,
    ItemStyle,
    Panel,
    Template,
    TextBlock,
)
from atelier.campaign.text import (
    FittedText,
    FontFamily,
    draw_fitted_text,
    fit_text,
    get_font,
    ink_width,
)
from atelier.images import open_image


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


def open_material(path: Path, name: str, what: str, background: RGB | None) -> Image.Image:
    with open_image(path, field=what, label=f"{what} {name}", orient=True) as opened:
        image = opened.convert("RGBA")
    image.thumbnail((MAX_MATERIAL_SIDE, MAX_MATERIAL_SIDE), Image.Resampling.LANCZOS)
    if background is None:
        return image
    # Cut-outs with transparency sit on the brand background rather than on black.
    flat = Image.new("RGBA", image.size, background + (255,))
    flat.alpha_composite(image)
    return flat.convert("RGB")
