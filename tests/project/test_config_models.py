"""The one config base: pydantic's errors become one line naming the field, misspelt keys get the closest name."""

from __future__ import annotations

import pytest
from pydantic import Field

from atelier.config_models import ConfigModel, closest, unknown_key_error
from atelier.errors import AtelierError


class Brand(ConfigModel):
    primary: str = "#000000"
    background: str = "#ffffff"


class Spec(ConfigModel):
    config_name = "ad spec"
    headline: str
    seconds: float = 1.0
    rate: float = Field(default=1.0, ge=0.2, le=20)
    brand: Brand = Brand()


def test_closest_forgives_case_and_dashes() -> None:
    assert closest("Netwrok-Dim", ["network_alpha", "network_dim"]) == "network_dim"
    assert closest("zzz", ["network_dim"]) is None


def test_unknown_keys_name_the_table_and_the_guess() -> None:
    error = unknown_key_error("primray", ["primary", "background"], where="ad spec", prefix="brand.")
    assert str(error) == "unknown key 'brand.primray' in ad spec; did you mean 'primary'?"
    assert error.field == "brand.primray"
    assert str(unknown_key_error("x", ["a", "b"], where="scene 'studio'")).endswith("; known keys: a, b")


def test_validation_errors_are_one_line_with_the_dotted_field() -> None:
    assert Spec.parse({"headline": "Hi", "brand": {"primary": "#ff0000"}}).brand.primary == "#ff0000"
    with pytest.raises(AtelierError, match=r"^unknown key 'headlien' in ad spec; did you mean 'headline'\?$"):
        Spec.parse({"headlien": "Hi"})
    with pytest.raises(
        AtelierError, match=r"^unknown key 'brand.primray' in spot.toml; did you mean 'primary'"
    ) as caught:
        Spec.parse({"headline": "Hi", "brand": {"primray": "#ff0000"}}, where="spot.toml")
    assert caught.value.field == "brand.primray"
    with pytest.raises(
        AtelierError, match=r"^seconds in ad spec: input should be a valid number.*got 'soon'$"
    ) as caught:
        Spec.parse({"headline": "Hi", "seconds": "soon"})
    assert caught.value.field == "seconds"
    with pytest.raises(AtelierError, match=r"^headline is required in ad spec$"):
        Spec.parse({})
    with pytest.raises(AtelierError, match=r"^rate must be a number from 0.2 to 20, got 30$"):
        Spec.parse({"headline": "Hi", "rate": 30})
    with pytest.raises(AtelierError, match=r"^seconds in ad spec: input should be a valid number") as caught:
        Spec.parse({"headline": "Hi", "seconds": True})
    assert "\n" not in str(caught.value)
