"""The import contracts of `make lint` cover every module: a new engine or training module is private by default."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _contract(name_start: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(contract for contract in contracts if contract["name"].startswith(name_start))


@pytest.mark.parametrize("package", ["engine", "training"])
def test_every_module_of_a_library_is_behind_its_surface(package: str) -> None:
    folder = ROOT / "src" / "atelier" / package
    modules = {
        f"atelier.{package}.{path.stem}" for path in folder.glob("*.py") if path.stem != "__init__"
    } | {f"atelier.{package}.{path.name}" for path in folder.iterdir() if (path / "__init__.py").is_file()}
    contract = _contract(
        f"The layers above use {package}" if package == "training" else "The layers above use the engine"
    )
    assert set(contract["forbidden_modules"]) == modules


def test_the_layers_are_in_the_documented_order() -> None:
    layers = _contract("Layers")["layers"]
    assert layers == [
        f"atelier.{name}" for name in ("cli", "ui", "service", "campaign", "training", "engine", "prompts")
    ]
    assert (
        "prompts < engine < training < campaign < service < ui < cli"
        in (ROOT / "ARCHITECTURE.md").read_text()
    )
