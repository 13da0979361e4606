"""`atelier verify FILE`: read and validate a file's Content Credentials (C2PA) and its AI disclosure (XMP).

Exit status: 0 when the credentials are valid (with --require-trust: valid and from a trusted signer), 1 when
they are invalid (the file changed after signing, a broken signature) or missing, 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError

TRUST_VARIABLE = "ATELIER_C2PA_TRUST_ANCHORS"
_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="check a file's Content Credentials (C2PA) and AI disclosure", description=__doc__
    )
    p.add_argument("file", type=Path, help="an image or video")
    p.add_argument("--json", action="store_true", help="print the result as a JSON object")
    p.add_argument(
        "--trust",
        type=Path,
        default=None,
        metavar="PEM",
        help=f"CA certificates whose signatures count as trusted (default: ${TRUST_VARIABLE}), "
        "e.g. the C2PA trust list",
    )
    p.add_argument("--require-trust", action="store_true", help="exit 1 unless the signer is trusted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atelier.engine import declared_source_type, read_credentials

    trust_file = args.trust or (Path(os.environ[TRUST_VARIABLE]) if os.environ.get(TRUST_VARIABLE) else None)
    anchors = _read_text(trust_file, "trust anchors") if trust_file else None
    if not args.file.is_file():
        raise AtelierError(f"file not found: {args.file}", field="file")
    data = args.file.read_bytes()
    credentials = read_credentials(data, trust_anchors=anchors)
    summary = credentials.summary() if credentials is not None else None
    source_type = declared_source_type(data)
    if args.json:
        print(
            json.dumps({"file": str(args.file), "digital_source_type": source_type, "credentials": summary})
        )
    else:
        _print(args.file, source_type, summary, trust_given=anchors is not None)
    if credentials is None or not credentials.valid:
        return 1
    return 1 if args.require_trust and not credentials.trusted else 0


def _print(path: Path, source_type: str | None, summary: dict[str, Any] | None, *, trust_given: bool) -> None:
    print(f"AI disclosure (XMP): {_short(source_type) if source_type else 'none'}")
    if summary is None:
        print(f"{path}: no Content Credentials")
        return
    if not summary["valid"]:
        reasons = "; ".join(f"{item['code']}: {item['explanation']}" for item in summary["failures"])
        print(f"{path}: Content Credentials INVALID ({reasons or 'no reason given'})")
    elif summary["trusted"]:
        print(f"{path}: Content Credentials valid, signer trusted")
    else:
        hint = "not among the trust anchors given" if trust_given else "no trust anchors given (--trust PEM)"
        print(f"{path}: Content Credentials valid (file unchanged since signing); signer not trusted: {hint}")
    signer = summary["signer"]
    if signer:
        print(f"signed by: {signer.get('common_name', '?')} ({signer.get('issuer', '?')})")
    if summary["claim_generator"]:
        print(f"made with: {', '.join(name for name in summary['claim_generator'] if name)}")
    if summary["actions"]:
        stated = f" ({_short(summary['digital_source_type'])})" if summary["digital_source_type"] else ""
        print(f"actions: {', '.join(summary['actions'])}{stated}")
    for item in summary["ingredients"]:
        own = ", with its own credentials" if item["credentials"] else ""
        print(f"ingredient: {item['title']} ({item['relationship']}{own})")
    generation = summary["generation"]
    if generation:
        for line in _generation_lines(generation):
            print(line)


def _generation_lines(record: dict[str, Any]) -> list[str]:
    lines = []
    for role in ("checkpoint", "refiner", "vae"):
        if isinstance(record.get(role), dict):
            item = record[role]
            lines.append(f"{role}: {item.get('name')} [{item.get('sha256') or item.get('hash')}]")
    for role, label in (("loras", "LoRA"), ("controlnets", "ControlNet"), ("embeddings", "embedding")):
        for item in record.get(role) or []:
            line = f"{label}: {item.get('name')} [{item.get('sha256') or item.get('hash')}]"
            training = item.get("training") or {}
            if training.get("dataset_dirs"):
                line += f", trained on {json.dumps(training['dataset_dirs'])}"
            if training.get("dataset_sha256"):
                line += f", dataset sha256 {training['dataset_sha256']}"
            lines.append(line)
    return lines


def _short(source_type: str) -> str:
    return source_type.removeprefix(_IPTC)


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise AtelierError(f"{what} file not found: {path}", field="trust") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AtelierError(f"cannot read {what} {path} as PEM text ({exc})", field="trust") from None
