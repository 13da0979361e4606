"""The lock is the truth: it agrees with pyproject.toml, and the tests run in exactly the locked set."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _deps_tool():
    spec = importlib.util.spec_from_file_location("atelier_deps_tool", ROOT / "tools" / "deps.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


deps = _deps_tool()
# `make upgrade-check` runs the suite against its scratch lock.
LOCK = Path(os.environ.get("ATELIER_LOCK_FILE", ROOT / "requirements.lock"))


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", "requirements.lock", "requirements-holds.txt", "Makefile"):
        shutil.copyfile(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_lock_agrees_with_pyproject_and_the_holds():
    assert deps.lock_problems(LOCK) == []


def test_this_test_environment_is_exactly_the_lock():
    assert deps.environment_problems(LOCK) == []


def test_torch_and_its_cuda_packages_are_left_to_the_install_step():
    names = set(deps.read_lock(LOCK))
    assert not {name for name in names if deps.is_torch_family(name)}
    # ...while what torch needs on every build is pinned like everything else.
    assert {"sympy", "networkx", "jinja2", "filelock", "typing-extensions"} <= names


def test_a_range_changed_without_a_new_lock_fails(project_copy: Path):
    pyproject = project_copy / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"pillow>=10.1"', '"pillow>=10.1,<11"'))
    problems = deps.lock_problems(project_copy / "requirements.lock", project_copy)
    assert any("run `make lock`" in problem for problem in problems)
    assert any(problem.startswith("the lock pins pillow==") and "<11" in problem for problem in problems)


def test_a_new_dependency_that_the_lock_lacks_fails(project_copy: Path):
    pyproject = project_copy / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace('"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich-argparse>=1",')
    )
    problems = deps.lock_problems(project_copy / "requirements.lock", project_copy)
    assert "rich-argparse is required (rich-argparse>=1) but not pinned in the lock" in problems


def test_a_torch_version_outside_the_range_fails(project_copy: Path):
    makefile = project_copy / "Makefile"
    makefile.write_text(
        re.sub(r"(?m)^TORCH_VERSION \?= .*$", "TORCH_VERSION ?= 1.13.1", makefile.read_text())
    )
    problems = deps.lock_problems(project_copy / "requirements.lock", project_copy)
    assert any("TORCH_VERSION 1.13.1" in problem for problem in problems)


def test_a_package_installed_at_another_version_is_named(project_copy: Path):
    lock = project_copy / "requirements.lock"
    lock.write_text(lock.read_text().replace("\ntqdm==", "\ntqdm==0.0.1\n# was "))
    problems = deps.environment_problems(lock)
    assert [problem for problem in problems if problem.startswith("tqdm ")] == [
        f"tqdm {deps._installed_version('tqdm')} is installed, the lock says 0.0.1"
    ]


def test_a_transitive_dependency_missing_from_the_lock_is_named(project_copy: Path):
    lock = project_copy / "requirements.lock"
    lines = [line for line in lock.read_text().splitlines() if not line.startswith("mpmath==")]
    lock.write_text("\n".join(lines) + "\n")
    problems = deps.environment_problems(lock)
    assert any(problem.startswith("mpmath ") and "does not pin it" in problem for problem in problems)


def test_the_start_up_check_recommends_the_locked_set():
    from atelier.engine.versions import TESTED

    pins = deps.read_lock(ROOT / "requirements.lock")
    locked = {name: pins[name].version for name in TESTED if name != "torch"}
    assert {name: version for name, version in TESTED.items() if name != "torch"} == locked
    assert TESTED["torch"] == deps.torch_version()
