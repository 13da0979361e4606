"""`atelier info IMAGE`: print the generation parameters stored in a PNG (A1111 infotext)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from atelier.errors import AtelierError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show the generation parameters of a PNG", description=__doc__)
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print the parsed parameters as a JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import UnidentifiedImageError

    from atelier.engine import parse_infotext, read_infotext

    if not args.image.is_file():
        raise AtelierError(f"image not found: {args.image}")
    try:
        text = read_infotext(args.image)
    except (UnidentifiedImageError, OSError) as exc:
        raise AtelierError(f"{args.image} is not a readable image ({exc})") from None
    if text is None:
        raise AtelierError(f"{args.image} carries no generation parameters")
    print(json.dumps(parse_infotext(text), ensure_ascii=False) if args.json else text)
    return 0
