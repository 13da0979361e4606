"""Model licences: the classification table, where a licence is read from, and what the registry records."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from studio_helpers import make_lora

from atelier.service.database import open_database
from atelier.service.licenses import (
    COMMERCIAL,
    NON_COMMERCIAL,
    UNKNOWN,
    license_from_metadata,
    license_from_model_card,
    license_use,
    license_view,
)
from atelier.service.registry import ModelRegistry, inspect_model


@pytest.mark.parametrize(
    ("name", "use"),
    [
        ("creativeml-openrail-m", COMMERCIAL),
        ("CreativeML Open RAIL-M", COMMERCIAL),
        ("openrail++", COMMERCIAL),
        ("Apache-2.0", COMMERCIAL),
        ("MIT", COMMERCIAL),
        ("CC-BY-4.0", COMMERCIAL),
        ("https://creativecommons.org/licenses/by/4.0/", COMMERCIAL),
        ("https://huggingface.co/spaces/CompVis/stable-diffusion-license", COMMERCIAL),
        ("cc-by-nc-4.0", NON_COMMERCIAL),
        ("CC BY-NC-SA 4.0", NON_COMMERCIAL),
        ("https://creativecommons.org/licenses/by-nc/4.0/legalcode", NON_COMMERCIAL),
        ("bria-rmbg-1.4", NON_COMMERCIAL),
        ("flux-1-dev-non-commercial-license", NON_COMMERCIAL),
        ("sai-nc-community", NON_COMMERCIAL),
        ("Non-Commercial use only", NON_COMMERCIAL),
        ("stabilityai-ai-community", UNKNOWN),  # commercial only below a revenue threshold: a person decides
        ("other", UNKNOWN),
        ("fabrianolicense", UNKNOWN),
        ("", UNKNOWN),
        (None, UNKNOWN),
    ],
)
def test_the_table_classifies_licences(name: str | None, use: str) -> None:
    assert license_use(name) == use


def test_an_admins_ruling_wins_over_the_table() -> None:
    assert (
        license_view({"name": "stabilityai-ai-community", "source": "admin", "use": COMMERCIAL})["use"]
        == COMMERCIAL
    )
    assert license_view(None) == {"name": None, "use": UNKNOWN, "source": "none"}


def test_modelspec_license_and_model_cards_are_read(tmp_path: Path) -> None:
    assert license_from_metadata({"modelspec.license": "CreativeML Open RAIL-M\nfull text..."}) == (
        "CreativeML Open RAIL-M"
    )
    assert license_from_metadata({"ss_network_dim": "4"}) is None
    (tmp_path / "README.md").write_text(
        "---\nlicense: other\nlicense_name: flux-1-dev-non-commercial-license\ntags:\n- text-to-image\n---\n# FLUX\n"
    )
    assert license_from_model_card(tmp_path) == "flux-1-dev-non-commercial-license"


def test_a_lora_registers_with_the_licence_its_metadata_names(tmp_path: Path, tiny_models) -> None:
    path = make_lora(tiny_models("sd15"), tmp_path / "parka.safetensors")
    save_file(load_file(path), path, metadata={"modelspec.license": "cc-by-nc-4.0", "ss_network_dim": "4"})
    info = inspect_model(path)
    assert (info.license, info.license_source) == ("cc-by-nc-4.0", "modelspec.license")
    registry = ModelRegistry(open_database(f"sqlite:///{tmp_path / 'registry.db'}"))
    record = registry.register(name="parka", storage_key="models/parka.safetensors", info=info, version="1")
    shown = record.to_dict()
    assert shown["license"] == {"name": "cc-by-nc-4.0", "use": NON_COMMERCIAL, "source": "modelspec.license"}
    assert shown["details"]["metadata"]["modelspec.license"] == "cc-by-nc-4.0"
    assert shown["rights"] is None
    changed = registry.update_details(
        "lora",
        "parka",
        {"license": {"name": "cc-by-nc-4.0", "source": "admin", "use": COMMERCIAL, "note": "deal 7"}},
    )
    assert changed.license == {"name": "cc-by-nc-4.0", "use": COMMERCIAL, "source": "admin", "note": "deal 7"}


def test_a_controlnets_licence_comes_from_its_file_or_an_admins_record(tmp_path: Path) -> None:
    import json

    import torch

    from atelier.service.commercial import controlnet_license, controlnet_license_key

    path = tmp_path / "canny.safetensors"
    save_file({"weight": torch.zeros(2)}, path, metadata={"modelspec.license": "openrail"})
    assert controlnet_license(path) == {"name": "openrail", "use": COMMERCIAL, "source": "modelspec.license"}
    record = {"name": "cc-by-nc-4.0", "source": "admin", "declared_by": "legal"}
    (tmp_path / controlnet_license_key("canny").rsplit("/", 1)[-1]).write_text(json.dumps(record))
    assert controlnet_license(path)["use"] == NON_COMMERCIAL
