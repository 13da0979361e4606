"""``compose_ad``: a spec rendered into every channel's PNG, the GIF and the MP4, atomically."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

from atelier.campaign.ad.output import build_animation, png_info, save_gif, save_png, save_video
from atelier.campaign.ad.render import AdRenderer, AdResult, ChannelResult, open_material
from atelier.campaign.ad.spec import AdSpec
from atelier.campaign.templates import (
    Template,
)
from atelier.files import write_atomic


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
        open_material(resolve(entry), entry, "material", spec.brand.background) for entry in spec.materials
    ]
    logo = open_material(spec.resolve_file(spec.logo, "logo"), spec.logo, "logo", None) if spec.logo else None
    texts = {"headline": spec.headline, "body": spec.body, "cta": spec.cta}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    results: list[ChannelResult] = []
    for channel in spec.channels:
        renderer = AdRenderer(template, channel.size, spec.brand, family, texts, logo)
        image, placed = renderer.render(materials, 0)
        info = png_info(spec, template, channel, renderer, placed)
        path = write_atomic(out_dir / f"{channel.name}.png", functools.partial(save_png, image, info))
        results.append(ChannelResult(channel, path, renderer.orientation, tuple(placed)))

    gif_channel = spec.animation.channel or spec.channels[0]
    renderer = AdRenderer(template, gif_channel.size, spec.brand, family, texts, logo)
    animation = build_animation(renderer, materials, spec.animation)
    comment = json.dumps(
        {"channel": gif_channel.name, "template": template.name, "materials": list(spec.materials)}
    )
    gif_path = out_dir / "ad.gif"
    save_gif(animation, gif_path, spec.animation.gif_max_side, comment)

    video_file = out_dir / "ad.mp4"
    video_note = save_video(animation, video_file) if make_video else "video not requested"
    video_path = video_file if video_note is None else None
    return AdResult(out_dir, template.name, tuple(results), gif_path, gif_channel, video_path, video_note)
