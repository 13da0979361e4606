"""Contact sheets: an offline HTML lookbook (and optionally a PNG grid) of a folder of generated images.

Three kinds of folder are understood:

* a catalog batch with ``manifest.jsonl`` (one JSON object per line with ``file``, ``sku``, ``scene``,
  ``seed``, ``prompt``, ``negative_prompt``, ``params``): one section per SKU, one group per scene;
* training runs, whose ``samples/`` folder holds PNGs with A1111 ``parameters`` text chunks;
* any folder of outputs: images are found recursively and grouped by the prompt read from each image's
  A1111 infotext (the PNG ``parameters`` chunk: the text before ``Negative prompt:``, or before the last
  ``Steps:`` line), parsed by :mod:`atelier.engine.infotext`.

The HTML uses no external CSS, scripts or fonts, and refers to images by paths relative to itself, so
the folder can be zipped, mailed or opened from a file share as it is.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image, ImageDraw, ImageOps

from atelier.campaign.text import BUNDLED_FAMILIES, DEFAULT_FAMILY, FittedText, draw_fitted_text, fit_text
from atelier.engine import (
    Provenance,
    combined_source_type,
    parse_infotext,
    read_infotext,
    source_type_of,
    write_image,
)
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.files import write_text_atomic
from atelier.images import open_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MANIFEST_NAME = "manifest.jsonl"
SHEET_MARKER = "atelier:contact-sheet"
NO_PROMPT = "No prompt recorded"
# Generation settings worth showing next to a group, in this order, when every image shares them.
_SHOWN_PARAMS = ("Steps", "Sampler", "CFG scale", "Size", "Model", "steps", "sampler", "cfg", "size", "model")


@dataclass(frozen=True)
class SheetImage:
    path: Path
    prompt: str = ""
    negative_prompt: str = ""
    seed: str = ""
    params: dict[str, str] = field(default_factory=dict)
    sku: str = ""
    scene: str = ""


@dataclass
class SheetGroup:
    title: str
    images: list[SheetImage] = field(default_factory=list)


@dataclass
class SheetSection:
    title: str
    kind: str  # "sku" (a manifest's product) or "prompt"
    groups: list[SheetGroup] = field(default_factory=list)


def _natural_key(path: Path) -> list[Any]:
    # step_900 sorts before step_1000, as a person would expect.
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.as_posix())]


def _image_from_file(path: Path) -> SheetImage | None:
    """An image with the prompt, seed and settings of its A1111 infotext; None for our own PNG grids."""
    try:
        with open_image(path, field="images", label=str(path), load=False) as opened:
            if SHEET_MARKER in opened.info:
                return None
            infotext = read_infotext(opened)
    except (AtelierError, OSError):
        # Shown as an unreadable tile rather than stopping the sheet.
        return SheetImage(path)
    if not infotext:
        return SheetImage(path)
    fields = parse_infotext(infotext)
    settings = {key: str(value) for key, value in fields.items() if key not in ("Prompt", "Negative prompt")}
    if "Size-1" in settings and "Size-2" in settings:
        settings["Size"] = f"{settings['Size-1']}x{settings['Size-2']}"
    return SheetImage(
        path=path,
        prompt=str(fields["Prompt"]).strip(),
        negative_prompt=str(fields["Negative prompt"]).strip(),
        seed=settings.get("Seed", ""),
        params=settings,
    )


def _scan_images(folder: Path, exclude: set[Path]) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.resolve() not in exclude:
                found.append(path)
    return sorted(found, key=lambda p: _natural_key(p.relative_to(folder)))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _read_manifest(folder: Path, manifest: Path) -> list[SheetImage]:
    images = []
    base = folder.resolve()
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AtelierError(f"{manifest.name} line {number} is not valid JSON: {exc.msg}") from exc
        if not isinstance(record, dict) or not isinstance(record.get("file"), str) or not record["file"]:
            raise AtelierError(f"{manifest.name} line {number} has no 'file'")
        path = (base / record["file"]).resolve()
        if Path(record["file"]).is_absolute() or not path.is_relative_to(base):
            raise UnsafeFileError(f"{manifest.name} line {number}: {record['file']!r} is outside {folder}")
        params = record.get("params") or {}
        images.append(
            SheetImage(
                path=path,
                prompt=_text(record.get("prompt")),
                negative_prompt=_text(record.get("negative_prompt")),
                seed=_text(record.get("seed")),
                params={str(k): _text(v) for k, v in params.items()} if isinstance(params, dict) else {},
                sku=_text(record.get("sku")),
                scene=_text(record.get("scene")),
            )
        )
    return images


def collect_sections(folder: Path, *, exclude: tuple[Path, ...] = ()) -> list[SheetSection]:
    """Group the images of ``folder`` into sections and groups as the contact sheet shows them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"folder not found: {folder}")
    manifest = folder / MANIFEST_NAME
    sections: dict[str, SheetSection] = {}
    if manifest.is_file():
        for entry in _read_manifest(folder, manifest):
            section = sections.setdefault(entry.sku, SheetSection(entry.sku or "No SKU", "sku"))
            group = next((g for g in section.groups if g.title == (entry.scene or "No scene")), None)
            if group is None:
                group = SheetGroup(entry.scene or "No scene")
                section.groups.append(group)
            group.images.append(entry)
    else:
        excluded = {path.resolve() for path in exclude}
        unprompted = SheetSection(NO_PROMPT, "prompt", [SheetGroup("")])
        for path in _scan_images(folder, excluded):
            image = _image_from_file(path)
            if image is None:
                continue
            if not image.prompt:
                unprompted.groups[0].images.append(image)
                continue
            if image.prompt not in sections:
                sections[image.prompt] = SheetSection(
                    f"Prompt {len(sections) + 1}", "prompt", [SheetGroup("")]
                )
            sections[image.prompt].groups[0].images.append(image)
        if unprompted.groups[0].images:
            sections[""] = unprompted
    if not sections:
        raise AtelierError(f"no images found in {folder}")
    return list(sections.values())


def _summary(sections: list[SheetSection]) -> str:
    count = sum(len(group.images) for section in sections for group in section.groups)

    def plural(number: int, word: str) -> str:
        return f"{number} {word}{'' if number == 1 else 's'}"

    parts = [plural(count, "image")]
    if sections[0].kind == "sku":
        scenes = {group.title for section in sections for group in section.groups}
        parts += [plural(len(sections), "SKU"), plural(len(scenes), "scene")]
    else:
        parts.append(plural(sum(1 for section in sections if section.title != NO_PROMPT), "prompt"))
    return " \u00b7 ".join(parts)


def _shared(images: list[SheetImage], attribute: str) -> str | None:
    values = {getattr(image, attribute) for image in images}
    return values.pop() if len(values) == 1 else None


def _shared_params(images: list[SheetImage]) -> list[tuple[str, str]]:
    shown = []
    for key in _SHOWN_PARAMS:
        values = {image.params.get(key) for image in images}
        if len(values) == 1 and (value := values.pop()):
            shown.append((key, value))
    return shown


def _caption(image: SheetImage, group_prompt: str | None) -> list[str]:
    parts = []
    if image.seed:
        parts.append(f"seed {image.seed}")
    parts.append(image.path.stem)
    if group_prompt is None and image.prompt:
        parts.append(image.prompt)
    return parts


_STYLE = """
:root { --bg: #f7f6f3; --fg: #1c1c1e; --muted: #6b6b70; --card: #ffffff; --line: #e4e1da; --accent: #8a6d3b; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #141414; --fg: #f2f2f2; --muted: #a0a0a5; --card: #1f1f1f; --line: #2e2e2e; --accent: #d9b36c; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { padding: 56px 6vw 28px; }
h1 { margin: 0 0 6px; font-size: clamp(28px, 4vw, 44px); font-weight: 700; letter-spacing: -0.02em; }
.summary { margin: 0; color: var(--muted); }
nav { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 20px; }
nav a { color: var(--fg); text-decoration: none; border: 1px solid var(--line); border-radius: 999px;
  padding: 3px 12px; font-size: 13px; background: var(--card); }
nav a:hover { border-color: var(--accent); }
section { padding: 32px 6vw 12px; border-top: 1px solid var(--line); }
h2 { margin: 0 0 18px; font-size: 24px; font-weight: 650; letter-spacing: -0.01em; }
.group { margin-bottom: 36px; }
h3 { margin: 0 0 6px; font-size: 12px; font-weight: 600; letter-spacing: 0.12em; text-transform: uppercase;
  color: var(--accent); }
.prompt { margin: 0 0 4px; max-width: 90ch; }
.negative { margin: 0 0 4px; max-width: 90ch; color: var(--muted); font-size: 13px; }
.params { display: flex; flex-wrap: wrap; gap: 6px; margin: 8px 0 0; padding: 0; list-style: none; }
.params li { font-size: 12px; color: var(--muted); border: 1px solid var(--line); border-radius: 4px;
  padding: 1px 8px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 22px; margin-top: 18px; }
figure { margin: 0; background: var(--card); border-radius: 10px; overflow: hidden;
  box-shadow: 0 1px 2px rgba(0, 0, 0, 0.06), 0 6px 20px rgba(0, 0, 0, 0.05); }
figure a { display: block; background: var(--line); }
figure img { display: block; width: 100%; height: auto; }
figcaption { padding: 10px 14px 12px; font-size: 13px; color: var(--muted); overflow-wrap: anywhere; }
figcaption .seed { color: var(--fg); font-weight: 600; margin-right: 8px; }
figcaption .own-prompt { display: block; margin-top: 4px; color: var(--fg); }
.missing { padding: 40px 14px; text-align: center; color: var(--muted); font-size: 13px; }
footer { padding: 24px 6vw 48px; color: var(--muted); font-size: 12px; }
@media print { section { break-inside: avoid-page; } figure { box-shadow: none; border: 1px solid var(--line); } }
"""


def _relative_url(path: Path, html_dir: Path) -> str:
    return quote(Path(os.path.relpath(path.resolve(), html_dir.resolve())).as_posix())


def render_html(sections: list[SheetSection], title: str, html_dir: Path) -> str:
    """The contact sheet page; every text is escaped and every image path is relative to ``html_dir``."""
    escape = html.escape
    out = [
        "<!doctype html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_STYLE}</style>",
        "</head>",
        "<body>",
        "<header>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="summary">{escape(_summary(sections))}</p>',
    ]
    if len(sections) > 1:
        out.append("<nav>")
        out.extend(
            f'<a href="#section-{index}">{escape(section.title)}</a>'
            for index, section in enumerate(sections, 1)
        )
        out.append("</nav>")
    out.append("</header>")
    for index, section in enumerate(sections, 1):
        out.append(f'<section id="section-{index}">')
        out.append(f"<h2>{escape(section.title)}</h2>")
        for group in section.groups:
            prompt = _shared(group.images, "prompt")
            negative = _shared(group.images, "negative_prompt")
            out.append('<div class="group">')
            if group.title:
                out.append(f"<h3>{escape(group.title)}</h3>")
            if prompt:
                out.append(f'<p class="prompt">{escape(prompt)}</p>')
            if negative:
                out.append(f'<p class="negative">Negative: {escape(negative)}</p>')
            params = _shared_params(group.images)
            if params:
                out.append('<ul class="params">')
                out.extend(f"<li>{escape(key)}: {escape(value)}</li>" for key, value in params)
                out.append("</ul>")
            out.append('<div class="grid">')
            for image in group.images:
                out.append(_figure(image, prompt, html_dir))
            out.append("</div>")
            out.append("</div>")
        out.append("</section>")
    out.append("<footer>Made with Atelier</footer>")
    out.append("</body>")
    out.append("</html>")
    return "\n".join(out) + "\n"


def _figure(image: SheetImage, group_prompt: str | None, html_dir: Path) -> str:
    escape = html.escape
    caption = []
    if image.seed:
        caption.append(f'<span class="seed">seed {escape(image.seed)}</span>')
    caption.append(escape(image.path.name))
    if group_prompt is None and image.prompt:
        caption.append(f'<span class="own-prompt">{escape(image.prompt)}</span>')
    if not image.path.is_file():
        body = f'<div class="missing">missing file<br>{escape(image.path.name)}</div>'
    else:
        url = escape(_relative_url(image.path, html_dir))
        alt = escape(image.prompt or image.path.name)
        body = f'<a href="{url}"><img src="{url}" alt="{alt}" loading="lazy"></a>'
    return f"<figure>{body}<figcaption>{' '.join(caption)}</figcaption></figure>"


def render_grid_png(
    sections: list[SheetSection], title: str, *, columns: int = 6, thumb: int = 256
) -> Image.Image:
    """Thumbnails in a labelled grid: a heading per section and group, a caption under each image."""
    family = BUNDLED_FAMILIES[DEFAULT_FAMILY]
    margin, gutter, caption_height = 40, 16, 42
    columns = max(1, min(columns, max(len(g.images) for s in sections for g in s.groups)))
    width = 2 * margin + columns * thumb + (columns - 1) * gutter
    text_width = width - 2 * margin
    ink, muted, paper, tile = (28, 28, 30), (110, 110, 115), (250, 249, 246), (232, 229, 222)

    def fitted(text: str, size: int, weight: str, lines: int, box_width: int = text_width) -> FittedText:
        return fit_text(
            text,
            family,
            weight,
            max_width=box_width,
            max_height=round(size * 1.3) * lines,
            max_size=size,
            min_size=size,
            line_spacing=1.3,
            max_lines=lines,
        )

    # Lay everything out first so the canvas can be made the right height in one go.
    title_text = fitted(title, 30, "bold", 2)
    plan: list[tuple[str, Any]] = [("text", (title_text, "bold", ink, 24))]
    for section in sections:
        plan.append(("text", (fitted(section.title, 22, "bold", 1), "bold", ink, 8)))
        for group in section.groups:
            if group.title:
                plan.append(("text", (fitted(group.title.upper(), 14, "medium", 1), "medium", muted, 4)))
            prompt = _shared(group.images, "prompt")
            if prompt:
                plan.append(("text", (fitted(prompt, 14, "regular", 2), "regular", muted, 10)))
            for start in range(0, len(group.images), columns):
                plan.append(("row", (group.images[start : start + columns], prompt)))
        plan.append(("space", 20))
    height = margin * 2
    for kind, item in plan:
        if kind == "text":
            height += item[0].height + item[3]
        elif kind == "row":
            height += thumb + caption_height + gutter
        else:
            height += item

    canvas = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(canvas)
    top = margin
    for kind, item in plan:
        if kind == "space":
            top += item
            continue
        if kind == "text":
            text, weight, color, space_after = item
            draw_fitted_text(
                draw, text, family, weight, left=margin, top=top, width=text_width, align="left", fill=color
            )
            top += text.height + space_after
            continue
        images, group_prompt = item
        for column, image in enumerate(images):
            left = margin + column * (thumb + gutter)
            draw.rectangle((left, top, left + thumb - 1, top + thumb - 1), fill=tile)
            picture = _thumbnail(image.path, thumb)
            if picture is not None:
                canvas.paste(
                    picture, (left + (thumb - picture.width) // 2, top + (thumb - picture.height) // 2)
                )
            caption = " \u00b7 ".join(_caption(image, group_prompt))
            text = fitted(caption, 12, "regular", 2, thumb)
            draw_fitted_text(
                draw,
                text,
                family,
                "regular",
                left=left,
                top=top + thumb + 6,
                width=thumb,
                align="left",
                fill=muted,
            )
        top += thumb + caption_height + gutter
    return canvas


def _thumbnail(path: Path, size: int) -> Image.Image | None:
    try:
        with open_image(path, field="images", label=str(path), load=False) as opened:
            opened.draft("RGB", (size, size))  # JPEGs decode at a fraction of their size: much faster
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    except (AtelierError, OSError):
        return None
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    return picture


def build_contact_sheet(
    dir: Path,
    *,
    out_html: Path | None = None,
    png_path: Path | None = None,
    title: str | None = None,
    signer: Any = None,
) -> Path:
    """Write the contact sheet of ``dir`` (default ``dir/index.html``) and, with ``png_path``, a PNG grid
    (signed with Content Credentials by ``signer``, an ``atelier.engine.ContentSigner``, when given).

    Returns the HTML file's path.
    """
    folder = Path(dir)
    html_path = Path(out_html) if out_html is not None else folder / "index.html"
    exclude = (png_path,) if png_path is not None else ()
    sections = collect_sections(folder, exclude=exclude)
    sheet_title = title or folder.resolve().name or "Contact sheet"
    write_text_atomic(html_path, render_html(sections, sheet_title, html_path.parent))
    if png_path is not None:
        grid = render_grid_png(sections, sheet_title)
        provenance = _grid_provenance(sections)
        write_image(Path(png_path), grid, provenance, text={SHEET_MARKER: sheet_title}, signer=signer)
    return html_path


def _grid_provenance(sections: list[SheetSection]) -> Provenance:
    """The grid is a composition of its pictures: AI-made when any of them says it is (XMP or infotext)."""
    types = []
    for image in (image for section in sections for group in section.groups for image in group.images):
        try:
            with open_image(image.path, field="images", label=str(image.path), load=False) as opened:
                types.append(source_type_of(opened))
        except (AtelierError, OSError):
            continue  # an unreadable tile shows nothing
    return Provenance(combined_source_type(types))
