"""The container image: the Containerfile's promises, `make image`, and a real build where one can run here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from deploy_helpers import ROOT

CONTAINERFILE = (ROOT / "Containerfile").read_text(encoding="utf-8")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", CONTAINERFILE)
    lines = [
        line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_the_containerfile_installs_from_the_lock_with_the_makefiles_torch():
    instructions = _instructions()
    args = {value.split("=", 1)[0]: value.split("=", 1)[1] for name, value in instructions if name == "ARG"}
    makefile_torch = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_torch and args["TORCH_VERSION"] == makefile_torch.group(1)
    assert args["TORCH_VARIANT"] == "cpu"
    runs = " ".join(value for name, value in instructions if name == "RUN")
    assert '"torch==${TORCH_VERSION}+${TORCH_VARIANT}"' in runs
    assert runs.count("-c requirements.lock") == 2, "torch's dependencies and Atelier's: both from the lock"
    assert "pip install --no-deps ." in runs


def test_the_image_runs_as_a_non_root_user_with_a_cache_volume_and_a_health_check():
    instructions = dict(_instructions())  # the last of each instruction wins: the runtime stage
    assert instructions["USER"] == "10001:10001"
    assert json.loads(instructions["VOLUME"]) == ["/data", "/cache"]
    assert "ATELIER_CACHE_DIR=/cache" in instructions["ENV"] and "HF_HUB_OFFLINE=1" in instructions["ENV"]
    health = instructions["HEALTHCHECK"]
    assert '"python", "-c"' in health and "/api/health" in health and "curl" not in health
    assert json.loads(instructions["ENTRYPOINT"]) == ["atelier-entrypoint"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    # No weights baked in: nothing is copied into the image but the venv and the entry point.
    copies = [value for name, value in _instructions() if name == "COPY"]
    assert all(not re.search(r"\.(safetensors|ckpt|bin|pt)\b", value) for value in copies)


def test_both_ignore_files_are_the_same_allow_list():
    docker = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    assert (ROOT / ".containerignore").read_text(encoding="utf-8") == docker
    rules = [line for line in docker.splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "everything is left out unless named"
    assert {"!src/", "!requirements.lock", "!pyproject.toml", "!deploy/entrypoint.sh"} <= set(rules)


def test_make_image_says_so_when_there_is_no_container_engine():
    done = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "image", "CONTAINER_ENGINE="],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "neither podman nor docker is installed" in done.stderr


def _engine_that_can_build() -> str:
    """podman or docker, if one is installed and can build here; skips the test with the reason otherwise."""
    if os.environ.get("ATELIER_TEST_IMAGE_BUILD") != "1":
        pytest.skip(
            "building the image takes minutes and needs the package indexes: set ATELIER_TEST_IMAGE_BUILD=1 "
            "(and ATELIER_TEST_IMAGE_FLAGS for the build, e.g. a local BASE_IMAGE) to run it"
        )
    for engine in ("podman", "docker"):
        path = shutil.which(engine)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0:
            return engine
    pytest.skip("neither podman nor docker can build here (not installed, or docker's daemon is not running)")


def test_the_image_builds_with_make_image():
    engine = _engine_that_can_build()
    tag = "atelier-test:cpu"
    done = subprocess.run(
        [
            "make",
            "-C",
            str(ROOT),
            "image",
            f"CONTAINER_ENGINE={engine}",
            "IMAGE=atelier-test",
            f"IMAGE_FLAGS={os.environ.get('ATELIER_TEST_IMAGE_FLAGS', '')}",
        ],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    inspected = subprocess.run([engine, "image", "inspect", tag], capture_output=True, text=True, check=True)
    (image,) = json.loads(inspected.stdout)
    config = image["Config"]
    assert config["User"] == "10001:10001"
    assert set(config["Volumes"]) == {"/data", "/cache"}
    health = config.get("Healthcheck") or image.get(
        "Healthcheck"
    )  # docker has it in Config, podman beside it
    assert "/api/health" in " ".join(health["Test"])
    assert image["Size"] < 4 * 1024**3, "no model weights, a CPU torch: a few GB at most"


def _runtime_closure() -> set[str]:
    """Distributions `pip install atelier` brings (no extras): what the image has."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = ["atelier"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a requirement for another platform
        for line in requires:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return seen


# Used when installed, after a check that it is (training/hardware.py: 8-bit AdamW on CUDA).
OPTIONAL_IMPORTS = {"bitsandbytes"}


def test_every_module_atelier_imports_comes_with_its_runtime_dependencies():
    """The image installs Atelier without its test extra: an import only a test tool brought in breaks it."""
    import ast
    import sys
    from importlib import metadata

    from packaging.utils import canonicalize_name

    providers = metadata.packages_distributions()
    closure = _runtime_closure()
    missing = {}
    for path in sorted((ROOT / "src" / "atelier").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        # Imports inside `try: ... except ImportError` are optional on purpose (bitsandbytes, ...).
        optional = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.Try)
            and any(
                isinstance(handler.type, ast.Name)
                and handler.type.id in ("ImportError", "ModuleNotFoundError")
                for handler in node.handlers
            )
            for statement in node.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("atelier", "__future__", *OPTIONAL_IMPORTS):
                    continue
                distributions = {canonicalize_name(d) for d in providers.get(top, [])}
                if not distributions & closure:
                    missing.setdefault(top, str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not a runtime dependency (pyproject.toml): {missing}"
