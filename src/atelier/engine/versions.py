"""Do the installed torch, diffusers, transformers and peft work together? Checked once, before any work.

A set that does not fit fails deep inside a library, and only when that path runs. For example, transformers
5.24 refuses peft 0.21 the first time a LoRA loads, and its advice ("use peft >= 0.22") named a version that
was never released. Checking at start-up turns that into one line that names the conflict and the tested set.

The rules:
- each library is inside the range Atelier declares for it (its own package metadata);
- transformers' and diffusers' own minimum versions of peft (and diffusers' minimum transformers), read from
  the libraries themselves, so a new release's new minimum is seen without a change here.

``TESTED`` is the set in ``requirements.lock`` (a test keeps the two equal); it is what the message recommends.
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

from atelier.errors import AtelierError

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "accelerate")
TESTED = {
    "torch": "2.13.0",
    "diffusers": "0.42.1",
    "transformers": "5.23.0",
    "peft": "0.21.2",
    "accelerate": "1.16.0",
}

# (library, module, constant, library whose version the constant names): minimums the libraries enforce
# themselves at run time, without declaring them in their package metadata.
_RUNTIME_MINIMUMS = (
    ("transformers", "transformers.integrations.peft", "MIN_PEFT_VERSION", "peft"),
    ("diffusers", "diffusers.utils.constants", "MIN_PEFT_VERSION", "peft"),
    ("diffusers", "diffusers.utils.constants", "MIN_TRANSFORMERS_VERSION", "transformers"),
)


def installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def declared_ranges() -> dict[str, Requirement]:
    """Atelier's own requirement for each library, from its installed metadata (empty when run unpackaged)."""
    try:
        texts = metadata.requires("atelier") or []
    except metadata.PackageNotFoundError:
        return {}
    ranges = {}
    for text in texts:
        requirement = Requirement(text)
        if requirement.name in LIBRARIES and requirement.marker is None:
            ranges[requirement.name] = requirement
    return ranges


def runtime_minimums() -> list[tuple[str, str, str]]:
    """``(library, needed library, minimum version)`` as the installed libraries enforce them."""
    found = []
    for library, module, constant, needed in _RUNTIME_MINIMUMS:
        try:
            value = getattr(importlib.import_module(module), constant)
        except (ImportError, AttributeError):
            continue  # the library moved or dropped the constant: nothing to compare
        found.append((library, needed, str(value)))
    return found


def _older(installed: str, minimum: str) -> bool:
    try:
        return Version(installed) < Version(minimum)
    except InvalidVersion:
        return False


def library_problems(
    versions: dict[str, str | None],
    ranges: dict[str, Requirement],
    minimums: list[tuple[str, str, str]],
) -> list[str]:
    """Each way in which ``versions`` do not fit together, as short phrases (empty when they do)."""
    problems = []
    for name in LIBRARIES:
        installed = versions.get(name)
        if installed is None:
            problems.append(f"{name} is not installed")
        elif name in ranges and not ranges[name].specifier.contains(installed, prereleases=True):
            problems.append(f"{name} {installed} is outside Atelier's range {ranges[name].specifier}")
    for library, needed, minimum in minimums:
        have, need = versions.get(library), versions.get(needed)
        if have is not None and need is not None and _older(need, minimum):
            problems.append(f"{library} {have} needs {needed} >= {minimum} but {needed} {need} is installed")
    return problems


def describe_problems(problems: list[str]) -> str:
    tested = ", ".join(f"{name} {version}" for name, version in TESTED.items())
    return (
        f"incompatible libraries: {'; '.join(problems)}. Atelier is tested with {tested}; install that set "
        "from the lock with `make install` (pip install -c requirements.lock -e .)"
    )


@functools.cache
def _checked_problems() -> tuple[str, ...]:
    versions = installed_versions()
    minimums = runtime_minimums() if all(versions.values()) else []
    return tuple(library_problems(versions, declared_ranges(), minimums))


def check_libraries() -> None:
    """Raise :class:`AtelierError` (one line) when the installed libraries do not work together."""
    problems = list(_checked_problems())
    if problems:
        raise AtelierError(describe_problems(problems), field="libraries")
