"""``manifest.jsonl``: one line per made image, appended as it is made, so a batch resumes where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from atelier.campaign.contact_sheet import MANIFEST_NAME
from atelier.files import write_text_atomic


class Manifest:
    """``manifest.jsonl``: one JSON object per image, appended one whole line at a time.

    Opening it repairs what an interrupted run can leave behind: a last line cut short, or lines whose image
    file is gone. Those lines are dropped (their images are made again) and the file is rewritten atomically.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.records: list[dict[str, Any]] = []
        self.dropped = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, cut_short = lines[:-1], lines[-1]
        self.dropped = 1 if cut_short.strip() else 0
        base = self.folder.resolve()
        for line in complete:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.dropped += 1
                continue
            file = record.get("file") if isinstance(record, dict) else None
            path = (base / file).resolve() if isinstance(file, str) and file else None
            if path is None or not path.is_relative_to(base) or not path.is_file():
                self.dropped += 1
                continue
            self.records.append(record)
        if self.dropped:
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
            write_text_atomic(self.path, text)

    @property
    def done(self) -> set[str]:
        return {
            record["request_hash"] for record in self.records if isinstance(record.get("request_hash"), str)
        }

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # One write() on an O_APPEND descriptor: a killed run leaves at most one cut-short last line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)
