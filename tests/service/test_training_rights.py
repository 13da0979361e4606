"""Where a training upload's rights record comes from, and the studio's policy when there is none."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from atelier.errors import AtelierError
from atelier.service.training_rights import training_rights
from atelier.training import parse_rights

PACKSHOTS = {"owner": "Acme", "depicts_people": False}


def _studio(required: bool) -> SimpleNamespace:
    return SimpleNamespace(config=SimpleNamespace(require_training_rights=required))


def test_the_request_wins_then_the_settings_then_the_zip() -> None:
    in_zip = parse_rights(
        {"owner": "Zip Co", "depicts_people": False}, where="z", source="rights.toml in a.zip"
    )
    settings = {"rights": {"owner": "Toml Co", "depicts_people": False}}
    first = training_rights(
        _studio(False), requested=PACKSHOTS, settings=settings, settings_name="a.toml", zip_rights=in_zip
    )
    assert (first["owner"], first["source"]) == ("Acme", "request")
    second = training_rights(
        _studio(False), requested=None, settings=settings, settings_name="a.toml", zip_rights=in_zip
    )
    assert (second["owner"], second["source"]) == ("Toml Co", "a.toml")
    third = training_rights(
        _studio(False), requested=None, settings={}, settings_name="a.toml", zip_rights=in_zip
    )
    assert third["source"] == "rights.toml in a.zip"


def test_no_record_is_accepted_unless_the_studio_requires_one() -> None:
    assert (
        training_rights(_studio(False), requested=None, settings={}, settings_name="x", zip_rights=None)
        is None
    )
    with pytest.raises(AtelierError) as caught:
        training_rights(_studio(True), requested=None, settings={}, settings_name="x", zip_rights=None)
    assert caught.value.field == "rights"


def test_a_request_record_of_people_without_consent_is_refused() -> None:
    with pytest.raises(AtelierError) as caught:
        training_rights(
            _studio(False),
            requested={"owner": "Acme", "depicts_people": True},
            settings={},
            settings_name="x",
            zip_rights=None,
        )
    assert caught.value.field == "rights.consent"
