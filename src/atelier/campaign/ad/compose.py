"""``compose_ad``: a spec rendered into every channel's PNG, the GIF and the MP4, atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from atelier.campaign.ad.output import ad_provenance, build_animation, png_text, save_gif, save_video
from atelier.campaign.ad.render import AdRenderer, AdResult, ChannelResult, open_material
from atelier.campaign.ad.spec import AdSpec
from atelier.campaign.templates import (
    Template,
)
from atelier.engine import write_image


def compose_ad(
    spec: AdSpec,
    out_dir: Path,
    *,
    resolve_material: Callable[[str], Path] | None = None,
    template: Template | None = None,
    make_video: bool = True,
    signer: Any = None,
) -> AdResult:
    """Render ``spec`` into ``out_dir``: ``<channel>.png`` per channel, ``ad.gif`` and, with ffmpeg, ``ad.mp4``.

    ``resolve_material`` maps each ``materials`` entry to an image file (the service passes one that
    understands ids of generated images); by default entries are files in the spec's folder.
    ``template`` replaces the spec's template (for trying one copy deck in several layouts).
    ``signer`` (an ``atelier.engine.ContentSigner``) signs every file with Content Credentials, the
    materials and logo as ingredients.
    """
    resolve = resolve_material or (lambda entry: spec.resolve_file(entry, "material"))
    if template is None:
        template = spec.load_template()
    family = spec.font_family()
    files = [(entry, resolve(entry)) for entry in spec.materials]
    materials = [open_material(path, entry, "material", spec.brand.background) for entry, path in files]
    if spec.logo:
        files.append((spec.logo, spec.resolve_file(spec.logo, "logo")))
    logo = open_material(files[-1][1], spec.logo, "logo", None) if spec.logo else None
    provenance = ad_provenance(files, with_ingredients=signer is not None)
    texts = {"headline": spec.headline, "body": spec.body, "cta": spec.cta}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[ChannelResult] = []
    for channel in spec.channels:
        renderer = AdRenderer(template, channel.size, spec.brand, family, texts, logo)
        image, placed = renderer.render(materials, 0)
        text = png_text(spec, template, channel, renderer, placed)
        path = write_image(out_dir / f"{channel.name}.png", image, provenance, text=text, signer=signer)
        results.append(ChannelResult(channel, path, renderer.orientation, tuple(placed)))

    gif_channel = spec.animation.channel or spec.channels[0]
    renderer = AdRenderer(template, gif_channel.size, spec.brand, family, texts, logo)
    animation = build_animation(renderer, materials, spec.animation)
    comment = json.dumps(
        {"channel": gif_channel.name, "template": template.name, "materials": list(spec.materials)}
    )
    gif_path = out_dir / "ad.gif"
    save_gif(animation, gif_path, spec.animation.gif_max_side, comment, provenance, signer)

    video_file = out_dir / "ad.mp4"
    video_note = (
        save_video(animation, video_file, provenance, signer) if make_video else "video not requested"
    )
    video_path = video_file if video_note is None else None
    return AdResult(out_dir, template.name, tuple(results), gif_path, gif_channel, video_path, video_note)
