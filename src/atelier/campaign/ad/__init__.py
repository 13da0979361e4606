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

from atelier.campaign.ad.compose import compose_ad
from atelier.campaign.ad.render import AdRenderer, AdResult, ChannelResult, PlacedText
from atelier.campaign.ad.spec import (
    METADATA_KEY,
    RGB,
    AdSpec,
    AnimationSettings,
    Brand,
    Channel,
    contrast_ratio,
    load_ad_spec,
    parse_ad_spec,
    parse_channel,
    parse_color,
)

__all__ = [
    "AdRenderer",
    "AdResult",
    "AdSpec",
    "AnimationSettings",
    "Brand",
    "Channel",
    "ChannelResult",
    "METADATA_KEY",
    "PlacedText",
    "RGB",
    "compose_ad",
    "contrast_ratio",
    "load_ad_spec",
    "parse_ad_spec",
    "parse_channel",
    "parse_color",
]
