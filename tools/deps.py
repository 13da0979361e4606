"""Atelier's dependency lock: make it, check it, and find out what an upgrade would break.

``requirements.lock`` pins every package that installing Atelier with its test extra brings, down to the last
transitive dependency, resolved by uv for every platform and Python >= 3.11 (``--universal``, one version per
package where possible). Two things are left out on purpose:

- torch, and the CUDA packages a torch build brings (``nvidia-*``, ``cuda-*``, ``triton``). The install step
  picks torch at ``TORCH_VERSION`` (Makefile): the CPU wheel, or a CUDA build a GPU user installed first.
- nothing else: a package that is missing from the lock would be resolved freshly on each install, which is the
  drift the lock exists to stop. ``check`` fails on it.

``requirements-holds.txt`` keeps a package below a release that is known to break (each line says why); it is
an input of the lock like ``pyproject.toml``. The lock records a digest of its inputs, so a changed dependency
range without a new lock fails the tests.

Commands (the Makefile has a target for each):

    python tools/deps.py lock             # after editing pyproject.toml: re-resolve, keeping every pin that fits
    python tools/deps.py check            # the lock agrees with its inputs; this environment is the lock
    python tools/deps.py upgrade-check    # newest versions in a scratch venv, the tests there, a report
    python tools/deps.py upgrade-check --write   # ... and replace the lock when every test passed

Lock making needs uv and the package index; checking needs neither.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK_FILE = ROOT / "requirements.lock"
HOLDS_FILE = ROOT / "requirements-holds.txt"
PYPROJECT = ROOT / "pyproject.toml"
MAKEFILE = ROOT / "Makefile"
EXTRAS = ("test",)
PYTHON_FLOOR = "3.11"

# Chosen by the install step, not the lock: a CPU wheel here, a CUDA build for GPU users.
_TORCH_FAMILY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
_DIGEST_LINE = re.compile(r"^# inputs-sha256: ([0-9a-f]{64})$", re.MULTILINE)


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: Marker | None

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        return self.marker is None or self.marker.evaluate(environment)


def is_torch_family(name: str) -> bool:
    return bool(_TORCH_FAMILY.match(canonicalize_name(name)))


def torch_version(makefile: Path = MAKEFILE) -> str:
    found = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)\s*$", makefile.read_text(encoding="utf-8"), re.MULTILINE)
    if not found:
        raise SystemExit(f"{makefile}: no 'TORCH_VERSION ?= X' line")
    return found.group(1)


def project_requirements(pyproject: Path = PYPROJECT) -> list[Requirement]:
    """The direct requirements the lock must satisfy: dependencies plus the locked extras."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(text) for text in texts]


def _hold_lines(holds: Path = HOLDS_FILE) -> list[str]:
    if not holds.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in holds.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def inputs_digest(root: Path = ROOT) -> str:
    """A digest of everything the lock is resolved from; recorded in the lock, recomputed by ``check``."""
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    inputs = {
        "requires-python": project.get("requires-python"),
        "dependencies": sorted(project["dependencies"]),
        "extras": {
            extra: sorted(project.get("optional-dependencies", {}).get(extra, [])) for extra in EXTRAS
        },
        "holds": sorted(_hold_lines(root / "requirements-holds.txt")),
        "torch": torch_version(root / "Makefile"),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def read_lock(lock: Path = LOCK_FILE) -> dict[str, Pin]:
    """``name -> Pin`` for every ``name==version [; marker]`` line of a lock file."""
    pins: dict[str, Pin] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        if not line or line[0] in "# -":
            continue
        requirement, _, marker = line.partition(";")
        name, separator, version = requirement.strip().partition("==")
        if not separator:
            raise SystemExit(f"{lock}: not an exact pin: {line!r}")
        key = canonicalize_name(name.split("[", 1)[0])
        if key in pins:
            raise SystemExit(f"{lock}: {key} is pinned twice")
        pins[key] = Pin(key, version.strip(), Marker(marker.strip()) if marker.strip() else None)
    return pins


def lock_problems(lock: Path = LOCK_FILE, root: Path = ROOT) -> list[str]:
    """Ways in which the lock disagrees with pyproject.toml and the holds (empty when it agrees)."""
    text = lock.read_text(encoding="utf-8")
    problems = []
    recorded = _DIGEST_LINE.search(text)
    if recorded is None or recorded.group(1) != inputs_digest(root):
        problems.append(
            "pyproject.toml dependencies, requirements-holds.txt or TORCH_VERSION changed since the lock was "
            "made: run `make lock`"
        )
    pins = read_lock(lock)
    wanted = project_requirements(root / "pyproject.toml") + [
        Requirement(h) for h in _hold_lines(root / "requirements-holds.txt")
    ]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if is_torch_family(name):
            continue
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{requirement.name} is required ({requirement}) but not pinned in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"the lock pins {name}=={pin.version}, outside {requirement}")
    for name in pins:
        if is_torch_family(name):
            problems.append(
                f"the lock pins {name}; torch and its CUDA packages are the install step's choice"
            )
    torch_pin = torch_version(root / "Makefile")
    torch_req = next(
        r for r in project_requirements(root / "pyproject.toml") if canonicalize_name(r.name) == "torch"
    )
    if not torch_req.specifier.contains(torch_pin):
        problems.append(f"TORCH_VERSION {torch_pin} (Makefile) is outside pyproject's {torch_req}")
    return problems


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment_problems(lock: Path = LOCK_FILE, *, distribution: str = "atelier") -> list[str]:
    """Ways in which the running environment is not the lock: wrong versions, or packages the lock lacks.

    Walks the requirement graph from Atelier (with its locked extras) through the installed metadata, so a
    dependency that some package brings but the lock does not pin is found too.
    """
    pins = read_lock(lock)
    problems = []
    checked: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    pending = [(Requirement(f"{distribution}[{','.join(EXTRAS)}]"), "")]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        if (name, frozenset(requirement.extras)) in walked:
            continue
        walked.add((name, frozenset(requirement.extras)))
        installed = _installed_version(name)
        if name not in checked and name != distribution and not is_torch_family(name):
            checked.add(name)
            pin = pins.get(name)
            if pin is None:
                problems.append(f"{name} {installed} is installed and required, but the lock does not pin it")
            elif installed is None:
                problems.append(f"{name}=={pin.version} is locked but not installed")
            elif Version(installed) != Version(pin.version):
                problems.append(f"{name} {installed} is installed, the lock says {pin.version}")
        if installed is None:
            continue
        for text in metadata.requires(name) or []:
            child = Requirement(text)
            for child_extra in sorted(requirement.extras) or [""]:
                pending.append((child, child_extra))
    return problems


# -- making the lock ---------------------------------------------------------------------------------------------


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise SystemExit("uv is needed to resolve the lock: pip install -c requirements.lock uv")
    return found


def _drop_torch_family(compiled: str) -> str:
    """Remove the torch family's entries (with their '# via' lines) from uv's output."""
    kept: list[str] = []
    skipping = False
    for line in compiled.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0]
            skipping = is_torch_family(name)
        elif line.startswith("#"):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


LOCK_HEADER = """\
# Atelier's lock: the version of every package that was tested. Installing from it (`make install`,
# `make install-test`) gives every machine the same set. Do not edit by hand:
#   make lock            after changing a range in pyproject.toml or requirements-holds.txt
#   make upgrade-check   resolve the newest versions, test them in a scratch venv, report what broke
#   make upgrade         the same, and write the new lock when every test passed
# torch (and the CUDA packages of a torch build) is chosen by the install step: TORCH_VERSION in the Makefile.
# inputs-sha256: {digest}
"""


def compile_lock(out: Path, *, upgrade: bool, previous: Path | None = LOCK_FILE) -> None:
    """Resolve pyproject.toml (+ extras, holds, torch) into ``out``; keep ``previous`` pins unless upgrading."""
    with tempfile.TemporaryDirectory(prefix="atelier-lock-") as scratch:
        work = Path(scratch)
        torch_pin = work / "torch.txt"
        torch_pin.write_text(f"torch=={torch_version()}\n", encoding="utf-8")
        target = work / "lock.txt"
        if previous is not None and previous.is_file() and not upgrade:
            shutil.copyfile(previous, target)  # uv keeps the pins it finds in its output file
        command = [
            _uv(),
            "pip",
            "compile",
            str(PYPROJECT),
            "--quiet",
            "--no-header",
            "--universal",
            "--fork-strategy",
            "fewest",
            "--python-version",
            PYTHON_FLOOR,
            "-c",
            str(torch_pin),
            "-o",
            str(target),
        ]
        for extra in EXTRAS:
            command += ["--extra", extra]
        if HOLDS_FILE.is_file():
            command += ["-c", str(HOLDS_FILE)]
        if upgrade:
            command.append("--upgrade")
        subprocess.run(command, check=True, cwd=ROOT)
        body = _drop_torch_family(target.read_text(encoding="utf-8"))
        body = body.replace(str(work) + "/", "").replace(str(ROOT) + "/", "")
        text = LOCK_HEADER.format(digest=inputs_digest()) + body
        partial = out.with_name(f".{out.name}.tmp")
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, out)


# -- upgrade check -----------------------------------------------------------------------------------------------


def _pin_changes(old: dict[str, Pin], new: dict[str, Pin]) -> list[str]:
    rows = []
    for name in sorted(set(old) | set(new)):
        before = old[name].version if name in old else "-"
        after = new[name].version if name in new else "-"
        if before != after:
            rows.append(f"  {name:32} {before:>16} -> {after}")
    return rows


def _failed_tests(junit: Path) -> tuple[int, list[str]]:
    if not junit.is_file():
        return 0, ["(the test run wrote no report)"]
    root = ET.parse(junit).getroot()
    total = 0
    failed = []
    for case in root.iter("testcase"):
        total += 1
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").strip().splitlines()
            first = message[0][:160] if message else ""
            failed.append(f"  {case.get('classname')}::{case.get('name')}: {first}")
    return total, failed


def upgrade_check(*, write: bool, keep: bool, pytest_args: list[str]) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="atelier-upgrade-"))
    new_lock = scratch / "requirements.lock"
    print(f"resolving the newest versions into {new_lock}")
    compile_lock(new_lock, upgrade=True, previous=None)
    changes = _pin_changes(read_lock(), read_lock(new_lock))
    print(f"{len(changes)} package(s) would change:" if changes else "the lock is already the newest set")
    print("\n".join(changes))
    holds = _hold_lines()
    if holds:
        print("held back on purpose (requirements-holds.txt): " + ", ".join(holds))
    venv = scratch / "venv"
    python = venv / "bin" / "python"
    print(f"installing into a scratch venv {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "-c", str(new_lock)]
    subprocess.run([*pip, f"torch=={torch_version()}"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{','.join(EXTRAS)}]"], check=True)
    junit = scratch / "junit.xml"
    env = {**os.environ, "ATELIER_LOCK_FILE": str(new_lock), "VIRTUAL_ENV": str(venv)}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    run = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args],
        cwd=ROOT,
        env=env,
    )
    total, failed = _failed_tests(junit)
    print()
    print(f"upgrade check: {total - len(failed)} of {total} tests passed with the newest versions")
    if failed:
        print("what broke:")
        print("\n".join(failed))
    if write and run.returncode == 0:
        shutil.copyfile(new_lock, LOCK_FILE)
        print(f"wrote {LOCK_FILE.name}; commit it with the changes the upgrade needed")
    elif write:
        print("the lock was not changed: fix what broke, or hold the package back in requirements-holds.txt")
    if keep:
        print(f"scratch environment kept in {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return run.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/deps.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "lock", help="re-resolve the lock after pyproject.toml changed, keeping pins that fit"
    )
    check = commands.add_parser(
        "check", help="the lock agrees with pyproject.toml; this environment is the lock"
    )
    check.add_argument(
        "--no-env", action="store_true", help="check the files only, not the installed packages"
    )
    upgrade = commands.add_parser("upgrade-check", help="test the newest versions in a scratch venv")
    upgrade.add_argument("--write", action="store_true", help="replace the lock when every test passed")
    upgrade.add_argument("--keep", action="store_true", help="keep the scratch venv for a closer look")
    upgrade.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    if args.command == "lock":
        compile_lock(LOCK_FILE, upgrade=False)
        problems = lock_problems()
        print("\n".join(problems) or f"{LOCK_FILE.name} is up to date")
        return 1 if problems else 0
    if args.command == "check":
        problems = lock_problems() + ([] if args.no_env else environment_problems())
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return upgrade_check(write=args.write, keep=args.keep, pytest_args=args.pytest_args)


if __name__ == "__main__":
    sys.exit(main())
