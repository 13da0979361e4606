"""`atelier ad SPEC.toml --out DIR`: compose an ad (a PNG per channel, an animated GIF, an MP4 with ffmpeg)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from atelier.campaign.templates import builtin_template_names

    parser = subparsers.add_parser(
        "ad",
        help="compose an ad from images and copy: a PNG per channel, an animated GIF and an MP4",
        description=(
            "Compose an ad from the images and copy in an ad spec (TOML). Writes <channel>.png for every "
            "channel, ad.gif (the materials cycling under the copy, in the first channel's layout) and "
            "ad.mp4 when ffmpeg is on PATH. Channels: square 1080x1080, portrait 1080x1350, story "
            "1080x1920, banner 1200x628, or a custom WxH. Built-in templates: "
            + ", ".join(builtin_template_names())
            + "."
        ),
    )
    parser.add_argument("spec", type=Path, help="the ad spec TOML file")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the outputs")
    parser.add_argument("--template", help="use this template instead of the spec's (name or .toml path)")
    parser.add_argument("--no-video", action="store_true", help="do not make ad.mp4 even if ffmpeg is there")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atelier.campaign.ad import compose_ad, load_ad_spec
    from atelier.campaign.templates import load_template
    from atelier.cli.common import content_signer

    spec = load_ad_spec(args.spec)
    # A template path given on the command line is relative to where the command runs, not to the spec.
    template = load_template(args.template, Path.cwd()) if args.template else None
    result = compose_ad(
        spec, args.out, template=template, make_video=not args.no_video, signer=content_signer()
    )
    for channel in result.channels:
        size = f"{channel.channel.width}x{channel.channel.height}"
        print(f"wrote {channel.path} ({size}, {result.template} template, {channel.orientation} layout)")
        for role in channel.truncated:
            print(f"warning: the {role} was too long for {channel.channel.name} and was shortened")
    print(f"wrote {result.gif_path} (animation in the {result.gif_channel.name} layout)")
    if result.video_path is not None:
        print(f"wrote {result.video_path}")
    elif not args.no_video:
        print(f"note: {result.video_note}")
    return 0
