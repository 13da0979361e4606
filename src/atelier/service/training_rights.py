"""The rights record of a training upload: where the studio finds it, and what happens without one.

A record says who owns the training images, whether they depict people and, for each person, where their consent
to a likeness model is filed (the schema is ``rights.toml``'s, :mod:`atelier.training.rights`). The studio takes
the first of:

1. ``rights`` in the ``POST /api/train`` body (the same fields as JSON, dates as ``"YYYY-MM-DD"``);
2. a ``[rights]`` table in the training settings: the ``.toml`` uploaded beside the zip, or ``config.rights``;
3. ``rights.toml`` in the zip, at its root or in its one top folder.

A record of images that depict people with no consent entry is refused when the upload or request arrives (HTTP
422 naming ``rights.consent``); so is a malformed one, naming its field.

**No record at all is accepted by default**, and the LoRA is trained without one: the seed's pipeline (a zip
dropped in the bucket becomes a LoRA) predates the record, and a studio that only trains packshots has nobody to
ask. The training job then carries a warning, and the LoRA lists ``rights: null`` wherever it is picked, so the
gap is visible. A studio whose legal team wants every LoRA documented sets ``require_training_rights``
(``ATELIER_REQUIRE_TRAINING_RIGHTS=1``): uploads without a record are then refused, naming ``rights``.

The record (with its ``source``) goes into the job's payload, then into the LoRA's metadata (``atelier.rights``)
and its registry details.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atelier.errors import AtelierError

RIGHTS_KEY = "rights"
NO_RIGHTS_WARNING = (
    "no rights record came with this training data (owner, whether it shows people, their consent): the LoRA "
    "carries none. Add rights.toml to the zip (README, 'Training rights and consent')."
)


def check_rights_table(value: object, *, where: str, source: str) -> Any:
    """A rights record given as a table (JSON object, TOML table), checked: a ``RightsRecord``."""
    from atelier.training import parse_rights

    if not isinstance(value, Mapping):
        raise AtelierError(
            f"rights in {where} must be a table of owner, depicts_people and consent", field=RIGHTS_KEY
        )
    return parse_rights(value, where=where, source=source)


def training_rights(
    studio: Any,
    *,
    requested: Mapping[str, Any] | None,
    settings: Mapping[str, Any],
    settings_name: str,
    zip_rights: Any,
) -> dict[str, Any] | None:
    """The record a training job carries (``to_dict`` form), from the first source that has one; None without
    any, unless the studio requires one."""
    if requested is not None:
        record = check_rights_table(requested, where="the request", source="request")
    elif settings.get(RIGHTS_KEY) is not None:
        record = check_rights_table(settings[RIGHTS_KEY], where=settings_name, source=settings_name)
    else:
        record = zip_rights
    if record is None:
        if studio.config.require_training_rights:
            raise AtelierError(
                "this studio requires a rights record with training data (require_training_rights): add "
                "rights.toml to the zip (owner, depicts_people, and [[consent]] for each person shown)",
                field=RIGHTS_KEY,
            )
        return None
    return dict(record.to_dict())
