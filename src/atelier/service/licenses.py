"""Model licences: where a model's licence is read from, and whether it allows commercial work.

**Where a licence comes from**, in this order:

1. An admin's record (``PATCH /api/models/{name}``): the licence, and when the table below cannot decide (a
   conditional licence, a separate commercial agreement with the model's maker), the use it allows.
2. The uploader (``PUT /api/models/{file}?license=...``), for files that name no licence themselves. A file that
   names one keeps it: only an admin can record another, so an upload cannot relabel a non-commercial model.
3. The file: ``modelspec.license`` in a ``.safetensors`` header (Stability AI's ModelSpec, written by kohya's
   sd-scripts from ``--metadata_license`` and by other trainers; kohya's ``ss_*`` keys have no licence and
   Civitai keeps its permissions on its website, not in the file), or the ``license:`` (with ``license_name:``
   when it says ``other``) of a diffusers folder's ``README.md`` model card, as Hugging Face repositories state it.
4. A LoRA the studio trained inherits its base model's licence: it is a derivative of that model, and the
   OpenRAIL and Creative Commons licences carry their terms over to derivatives.

**Which use a licence allows** is decided by the small table below, on the licence's name (ModelSpec allows a
name, a link or the full text; the first line is read, links to creativecommons.org are understood):

- ``commercial``: CreativeML OpenRAIL-M (Stable Diffusion 1.x), OpenRAIL++-M (SD 2.x, SDXL), OpenRAIL, Apache
  2.0, MIT, BSD, CC0, CC BY and CC BY-SA. They allow commercial use; the OpenRAIL ones add use restrictions
  (no unlawful or harmful uses) that product pictures do not touch, and which the studio's users must still keep.
- ``non-commercial``: any Creative Commons NC licence, Stability AI's non-commercial community licences (SDXL
  Turbo, Stable Cascade), the FLUX.1 [dev] non-commercial licence, Bria's RMBG licences, DeepFloyd IF's, and any
  name that says "non-commercial". They forbid commercial use without a separate agreement with the maker.
- ``unknown``: everything else, including no licence at all, "other", and conditional licences such as the
  Stability AI Community Licence (commercial use only below a revenue threshold the studio cannot know). A person
  has to decide those: an admin records the use with the licence.

With ``commercial_use`` set (``ATELIER_COMMERCIAL_USE=1``), the studio refuses every model whose licence is not
``commercial`` (:mod:`atelier.service.commercial`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

COMMERCIAL = "commercial"
NON_COMMERCIAL = "non-commercial"
UNKNOWN = "unknown"
USES = (COMMERCIAL, NON_COMMERCIAL, UNKNOWN)
METADATA_KEY = "modelspec.license"
MAX_LICENSE_LENGTH = 200

# Licence names, compacted by _compact (lower case, letters, digits, "+" and "." only), and the use they allow.
_TABLE = {
    "creativemlopenrailm": COMMERCIAL,
    "creativemlopenrail": COMMERCIAL,
    "openrailm": COMMERCIAL,
    "openrail": COMMERCIAL,
    "openrail++": COMMERCIAL,
    "openrail++m": COMMERCIAL,
    "apache2.0": COMMERCIAL,
    "apache2": COMMERCIAL,
    "apachelicense2.0": COMMERCIAL,
    "apachelicenseversion2.0": COMMERCIAL,
    "mit": COMMERCIAL,
    "mitlicense": COMMERCIAL,
    "bsd2clause": COMMERCIAL,
    "bsd3clause": COMMERCIAL,
    "cc0": COMMERCIAL,
    "cc01.0": COMMERCIAL,
    "ccby2.0": COMMERCIAL,
    "ccby3.0": COMMERCIAL,
    "ccby4.0": COMMERCIAL,
    "ccbysa3.0": COMMERCIAL,
    "ccbysa4.0": COMMERCIAL,
    "sainccommunity": NON_COMMERCIAL,  # SDXL Turbo, SD 3 Medium at release
    "stablecascadenccommunity": NON_COMMERCIAL,
    "deepfloydiflicense": NON_COMMERCIAL,
    "briarmbg": NON_COMMERCIAL,  # bria-rmbg-1.4, bria-rmbg-2.0: by the prefix rule below
}
# Hugging Face model cards link the CreativeML OpenRAIL-M text under this address.
_LICENSE_LINKS = {"huggingface.co/spaces/compvis/stablediffusionlicense": COMMERCIAL}
_CREATIVE_COMMONS_LINK = re.compile(r"creativecommons\.org/(?:licenses/([a-z-]+)/(\d\.\d)|publicdomain/zero)")
_FRONT_MATTER_FIELD = re.compile(r"^(license|license_name)\s*:\s*(.+?)\s*$")


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9+.]", "", name.lower())


def license_use(name: str | None) -> str:
    """``commercial``, ``non-commercial`` or ``unknown`` for a licence name (see the module's table)."""
    if not name or not name.strip():
        return UNKNOWN
    first_line = name.strip().splitlines()[0].strip()
    lowered = first_line.lower()
    link = _CREATIVE_COMMONS_LINK.search(lowered)
    if link:
        kind, version = link.groups()
        if kind is None:
            return COMMERCIAL  # CC0, the public-domain dedication
        first_line = f"cc-{kind}-{version}"
    for address, use in _LICENSE_LINKS.items():
        if address in _compact_link(lowered):
            return use
    compact = _compact(first_line)
    if compact in _TABLE:
        return _TABLE[compact]
    if "noncommercial" in compact or compact.startswith(("ccbync", "briarmbg")):
        return NON_COMMERCIAL
    return UNKNOWN


def _compact_link(text: str) -> str:
    return re.sub(r"[^a-z0-9/.]", "", text.removeprefix("https://").removeprefix("http://"))


def check_license_text(value: object, *, field: str = "license") -> str:
    """A licence as a person typed it: one line of text, at most :data:`MAX_LICENSE_LENGTH` characters."""
    from atelier.errors import AtelierError

    if not isinstance(value, str) or not value.strip():
        raise AtelierError(
            "license must be the licence's name or link, e.g. creativeml-openrail-m", field=field
        )
    text = value.strip()
    if "\n" in text or len(text) > MAX_LICENSE_LENGTH:
        raise AtelierError(
            f"license must be one line of at most {MAX_LICENSE_LENGTH} characters (its name or a link)",
            field=field,
        )
    return text


def license_from_metadata(metadata: Mapping[str, Any]) -> str | None:
    """The licence a safetensors header's metadata names (``modelspec.license``), or None."""
    value = metadata.get(METADATA_KEY)
    if not isinstance(value, str) or not value.strip():
        return None
    # The spec allows the full licence text: the record keeps its first line, which names it.
    return value.strip().splitlines()[0].strip()[:MAX_LICENSE_LENGTH]


def license_from_model_card(folder: Path) -> str | None:
    """The ``license:`` of a diffusers folder's ``README.md`` front matter (Hugging Face model cards), or None.

    ``license: other`` with a ``license_name:`` gives that name (FLUX.1 [dev]: flux-1-dev-non-commercial-license).
    """
    card = folder / "README.md"
    if not card.is_file():
        return None
    try:
        lines = card.read_text(encoding="utf-8", errors="replace").splitlines()[:200]
    except OSError:
        return None
    if not lines or lines[0].strip() != "---":
        return None
    found: dict[str, str] = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        match = _FRONT_MATTER_FIELD.match(line)
        if match:
            found[match.group(1)] = match.group(2).strip("'\"")
    name = found.get("license")
    if name == "other" and found.get("license_name"):
        name = found["license_name"]
    return name[:MAX_LICENSE_LENGTH] if name else None


def license_record(name: str | None, source: str, **extra: Any) -> dict[str, Any]:
    """What the registry keeps in a model's ``details["license"]``: the licence, where it came from, and (from an
    admin) ``use``, ``note`` and who declared it."""
    record: dict[str, Any] = {"name": name, "source": source}
    record.update({key: value for key, value in extra.items() if value is not None})
    return record


def license_view(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """A licence record as the API shows it: name, the use it allows, where it came from (and any note).

    The use is worked out when shown (unless an admin recorded it), so a change to the table applies to every
    model at once.
    """
    record = dict(record or {})
    name = record.get("name")
    decided = record.get("use")
    view = {
        "name": name,
        "use": decided if decided in USES else license_use(name),
        "source": record.get("source") or "none",
    }
    for key in ("note", "declared_by"):
        if record.get(key):
            view[key] = record[key]
    return view
