"""`atelier sheet DIR`: an offline HTML contact sheet (and optionally a PNG grid) of generated images."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sheet",
        help="make an HTML contact sheet of a folder of generated images",
        description=(
            "Make a lookbook-style HTML page of a folder of images: a catalog batch (manifest.jsonl) grouped "
            "by SKU and scene, or any generated PNGs (training samples included) grouped by prompt. The page "
            "works offline and links the images by relative paths."
        ),
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder of images")
    parser.add_argument(
        "--out", type=Path, metavar="HTML", help="where to write the page (default: DIR/index.html)"
    )
    parser.add_argument("--png", type=Path, metavar="PNG", help="also write the thumbnails as one PNG grid")
    parser.add_argument("--title", help="page title (default: the folder's name)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atelier.campaign.contact_sheet import build_contact_sheet
    from atelier.cli.common import content_signer

    signer = content_signer() if args.png else None
    html_path = build_contact_sheet(
        args.dir, out_html=args.out, png_path=args.png, title=args.title, signer=signer
    )
    print(f"wrote {html_path}")
    if args.png:
        print(f"wrote {args.png}")
    return 0
