"""The rights record of a training set: who owns the images, whether they depict people, and their consent.

A LoRA trained on photos of a person can make new pictures of that person, so a brand's legal team wants to know,
for every LoRA, whose images it learned from and, where people are shown, that each person agreed to have a
likeness model trained (a model release or consent form, filed somewhere the team can find it). The record is
written by the person who assembles the training set, as ``rights.toml`` beside the images::

    owner = "Acme Retail GmbH"        # who owns the images (or holds the licence to train on them)
    depicts_people = true             # do the images show people?
    notes = "shoot of 2026-10-30"     # optional

    [[consent]]                       # one entry per person shown (required when depicts_people = true)
    person = "Jane Doe"               # a name, or an internal id if the record should not carry names
    reference = "MR-2026-014"         # where the signed release or consent form is filed
    date = 2026-11-02                 # when it was given (a TOML date, or "YYYY-MM-DD" text in JSON)

Training on images that depict people without a consent entry is refused, naming ``rights.consent``. The record
travels with the LoRA: the trainer writes it into the file's metadata as ``atelier.rights`` (JSON text, beside
kohya's ``ss_*`` keys, which kohya and A1111 show and otherwise ignore; named like ``atelier.dataset_sha256`` so
no future ``ss_*`` key can collide with it). Because it travels with the file, write an id rather than a name in
``person`` when the LoRA may leave the company.

Where the record comes from is the caller's business: ``atelier train --rights rights.toml`` or a
``rights.toml`` in the training folder or zip (:func:`find_rights`); the studio also takes it from its API. A run
without any record trains as before and its LoRA carries none (the studio can be set to refuse such uploads).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from atelier.config_models import unknown_key_error
from atelier.errors import AtelierError
from atelier.files import parse_toml, read_toml

RIGHTS_FILE = "rights.toml"
METADATA_KEY = "atelier.rights"
_KEYS = ("owner", "depicts_people", "consent", "notes")
_CONSENT_KEYS = ("person", "reference", "date")
_MAX_TEXT = 500
_MAX_CONSENTS = 200


@dataclass(frozen=True)
class Consent:
    """One person's consent to a likeness model being trained on pictures of them."""

    person: str
    reference: str
    date: dt.date


@dataclass(frozen=True)
class RightsRecord:
    """A checked rights record; ``source`` says where it came from (a file, an API request)."""

    owner: str
    depicts_people: bool
    consent: tuple[Consent, ...] = ()
    notes: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe values (dates as ``YYYY-MM-DD``), as stored in the LoRA's metadata and the registry."""
        out: dict[str, Any] = {
            "owner": self.owner,
            "depicts_people": self.depicts_people,
            "consent": [
                {"person": item.person, "reference": item.reference, "date": item.date.isoformat()}
                for item in self.consent
            ],
        }
        if self.notes:
            out["notes"] = self.notes
        if self.source:
            out["source"] = self.source
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str) -> RightsRecord:
        """A record stored by :meth:`to_dict` (a job's payload), checked again."""
        fields = {key: value for key, value in data.items() if key != "source"}
        source = data.get("source")
        return parse_rights(fields, where=where, source=source if isinstance(source, str) else None)

    def metadata(self) -> dict[str, str]:
        """The LoRA file's metadata entry for this record."""
        return {METADATA_KEY: json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)}


def parse_rights(
    data: Mapping[str, Any], *, where: str, source: str | None = None, today: dt.date | None = None
) -> RightsRecord:
    """Check a rights record (``rights.toml``'s table, or the same fields from JSON) and return it.

    Raises :class:`AtelierError` naming the first bad field (``rights.owner``, ``rights.consent[0].date``), and
    ``rights.consent`` when the images depict people and no consent is recorded.
    """
    if not isinstance(data, Mapping):
        raise AtelierError(f"the rights record in {where} must be a table of owner, depicts_people, consent")
    for key in data:
        if key not in _KEYS:
            raise unknown_key_error(str(key), _KEYS, where=where, prefix="rights.")
    owner = _text(data.get("owner"), "rights.owner", where, "who owns the images")
    depicts_people = data.get("depicts_people")
    if not isinstance(depicts_people, bool):
        raise AtelierError(
            f"rights.depicts_people in {where} must be true or false (do the images show people?)",
            field="rights.depicts_people",
        )
    raw_consent = data.get("consent", [])
    if not isinstance(raw_consent, list) or len(raw_consent) > _MAX_CONSENTS:
        raise AtelierError(
            f"rights.consent in {where} must be a list of at most {_MAX_CONSENTS} entries ([[consent]] tables)",
            field="rights.consent",
        )
    consent = tuple(
        _consent(item, f"rights.consent[{index}]", where, today or dt.date.today())
        for index, item in enumerate(raw_consent)
    )
    if depicts_people and not consent:
        raise AtelierError(
            f"the images depict people but {where} records no consent: add a [[consent]] entry (person, "
            "reference, date) for each person, or do not train on these images",
            field="rights.consent",
        )
    notes = data.get("notes")
    if notes is not None:
        notes = _text(notes, "rights.notes", where, "notes")
    return RightsRecord(owner, depicts_people, consent, notes, source)


def _consent(item: Any, prefix: str, where: str, today: dt.date) -> Consent:
    if not isinstance(item, Mapping):
        raise AtelierError(f"{prefix} in {where} must be a table of person, reference, date", field=prefix)
    for key in item:
        if key not in _CONSENT_KEYS:
            raise unknown_key_error(str(key), _CONSENT_KEYS, where=where, prefix=f"{prefix}.")
    person = _text(item.get("person"), f"{prefix}.person", where, "the person who gave consent")
    reference = _text(
        item.get("reference"), f"{prefix}.reference", where, "where the signed consent is filed"
    )
    value = item.get("date")
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value.strip())
        except ValueError:
            value = None
    # TOML's date-times are datetimes (a date subclass): a consent is dated by its day.
    if isinstance(value, dt.datetime):
        value = value.date()
    if not isinstance(value, dt.date):
        raise AtelierError(
            f"{prefix}.date in {where} must be the date the consent was given (2026-11-02)",
            field=f"{prefix}.date",
        )
    if value > today + dt.timedelta(days=1):  # a day of slack for time zones
        raise AtelierError(
            f"{prefix}.date {value.isoformat()} in {where} is in the future", field=f"{prefix}.date"
        )
    return Consent(person, reference, value)


def _text(value: Any, field: str, where: str, meaning: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AtelierError(f"{field} in {where} must be text: {meaning}", field=field)
    if len(value) > _MAX_TEXT:
        raise AtelierError(f"{field} in {where} is longer than {_MAX_TEXT} characters", field=field)
    return value.strip()


def read_rights(path: str | os.PathLike[str]) -> RightsRecord:
    """A ``rights.toml`` file, checked."""
    path = Path(path)
    data = read_toml(path, what="rights record", field="rights")
    return parse_rights(data, where=path.name, source=path.name)


def rights_member(files: list[str]) -> str | None:
    """Where a training zip (its files' paths) keeps ``rights.toml``: at its root or, when everything sits in
    one top folder (a zipped folder), in that folder."""
    if RIGHTS_FILE in files:
        return RIGHTS_FILE
    tops = {PurePosixPath(name).parts[0] for name in files if len(PurePosixPath(name).parts) > 1}
    roots = [name for name in files if len(PurePosixPath(name).parts) == 1]
    if len(tops) == 1 and not roots:
        inside = f"{next(iter(tops))}/{RIGHTS_FILE}"
        return inside if inside in files else None
    return None


def rights_in_zip(path: str | os.PathLike[str], files: list[str]) -> RightsRecord | None:
    """The ``rights.toml`` of a training zip whose (checked) file list is ``files``, or None."""
    member = rights_member(files)
    if member is None:
        return None
    name = f"{Path(path).name}/{member}"
    with zipfile.ZipFile(path) as archive:
        data = parse_toml(archive.read(member), name=name, field="rights")
    return parse_rights(data, where=name, source=f"{RIGHTS_FILE} in {Path(path).name}")


def find_rights(data: str | os.PathLike[str]) -> RightsRecord | None:
    """The ``rights.toml`` of a training folder or zip (see :func:`rights_member`), or None."""
    from atelier.training.archive import check_zip

    path = Path(data)
    if path.is_dir():
        if (path / RIGHTS_FILE).is_file():
            return read_rights(path / RIGHTS_FILE)
        entries = [item for item in path.iterdir() if not item.name.startswith(".")]
        if len(entries) == 1 and (entries[0] / RIGHTS_FILE).is_file():
            return read_rights(entries[0] / RIGHTS_FILE)
        return None
    if path.is_file() and path.suffix.lower() == ".zip":
        return rights_in_zip(path, check_zip(path))
    return None


def rights_from_metadata(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The rights record a LoRA file's metadata carries (as stored, a dict), or None (absent or unreadable)."""
    text = metadata.get(METADATA_KEY)
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
