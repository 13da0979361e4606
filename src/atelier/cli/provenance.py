"""`atelier provenance FILE`: which models, LoRAs (with their datasets' rights), inputs and settings made a picture,
and who asked for it.

Read from the file itself (XMP disclosure, Content Credentials, A1111 infotext) and from its JSON sidecar when one
lies beside it (``<name>.json``, as the studio stores them: download both to audit a picture elsewhere). Exit
status: 0 when the file says where it came from, 1 when it carries nothing (no sidecar, disclosure, credentials
or infotext), 2 for unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from atelier.cli.verify import TRUST_VARIABLE
from atelier.errors import AtelierError

_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "provenance",
        help="show what made a picture: models, licences, LoRAs and their rights, inputs, who asked",
        description=__doc__,
    )
    p.add_argument("file", type=Path, help="an image (its sidecar <name>.json is read when beside it)")
    p.add_argument("--json", action="store_true", help="print the answer as a JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from atelier.engine import read_credentials
    from atelier.service.audit import audit_record

    if not args.file.is_file():
        raise AtelierError(f"file not found: {args.file}", field="file")
    data = args.file.read_bytes()
    sidecar = _sidecar(args.file)
    trust = os.environ.get(TRUST_VARIABLE)
    anchors = Path(trust).read_text(encoding="ascii") if trust else None
    credentials = read_credentials(data, trust_anchors=anchors)
    answer = audit_record(
        data, sidecar=sidecar, credentials=credentials.summary() if credentials is not None else None
    )
    answer = {"file": str(args.file), **answer}
    if args.json:
        print(json.dumps(answer, default=str))
    else:
        for line in _lines(answer):
            print(line)
    return 0 if answer["found_in"] else 1


def _sidecar(path: Path) -> dict[str, Any] | None:
    beside = path.with_suffix(".json")
    if beside == path or not beside.is_file():
        return None
    try:
        stored = json.loads(beside.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AtelierError(f"cannot read the sidecar {beside}: {exc}", field="file") from None
    return stored if isinstance(stored, dict) else None


def _lines(answer: dict[str, Any]) -> list[str]:
    if not answer["found_in"]:
        return [
            f"{answer['file']}: no provenance (no sidecar, AI disclosure, Content Credentials or infotext)"
        ]
    lines = [f"{answer['file']}: read from {', '.join(answer['found_in'])}"]
    source_type = answer["digital_source_type"]
    lines.append(f"AI disclosure (XMP): {source_type.removeprefix(_IPTC) if source_type else 'none'}")
    credentials = answer["credentials"]
    if credentials is not None:
        lines.append(f"Content Credentials: {credentials['state']}")
    job = answer["job"] or {}
    asked = answer["asked_by"] or ("nobody named (a studio without API keys)" if job else "unknown")
    lines.append(f"asked by: {asked}" + (f" (job {job['id']}, {job.get('created_at')})" if job else ""))
    for role, item in answer["models"].items():
        for entry in item if isinstance(item, list) else [item]:
            lines.append(
                f"{role}: {entry.get('name')} [{entry.get('sha256') or entry.get('hash')}]{_licence(entry)}"
            )
    for lora in answer["loras"]:
        lines.append(
            f"LoRA: {lora.get('name')} [{lora.get('sha256')}] weight {lora.get('weight')}{_licence(lora)}"
        )
        lines.append(f"  rights: {_rights(lora.get('rights'))}")
        if lora["training"].get("dataset_sha256"):
            lines.append(f"  dataset sha256: {lora['training']['dataset_sha256']}")
    for name, value in answer["inputs"].items():
        lines.append(f"input {name}: {json.dumps(value)}")
    if answer["settings"]:
        shown = {key: value for key, value in answer["settings"].items() if value not in (None, "", [])}
        lines.append(f"settings: {json.dumps(shown, default=str)}")
    return lines


def _licence(entry: dict[str, Any]) -> str:
    licence = entry.get("license")
    if not isinstance(licence, dict):
        return ""
    return f", licence {licence.get('name') or 'none recorded'} ({licence.get('use')})"


def _rights(rights: Any) -> str:
    if not isinstance(rights, dict):
        return "no record"
    text = f"owner {rights.get('owner')}, depicts people: {'yes' if rights.get('depicts_people') else 'no'}"
    consents = [
        " ".join(str(item[key]) for key in ("person", "reference", "date") if item.get(key))
        for item in rights.get("consent") or []
        if isinstance(item, dict)
    ]
    return text + (f", consent: {'; '.join(consents)}" if consents else "")
