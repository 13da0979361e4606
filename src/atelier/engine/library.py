"""A folder of models, looked up by name: ``<root>/<name>/`` (diffusers) or ``<root>/<name>.safetensors``.

Names never leave the folder: path separators, ``..`` and absolute paths are refused, so a name typed into a
prompt or an API request cannot reach other files.

LoRAs may share the folder (as in the studio's ``models/`` bucket); they are never listed as checkpoints.
Atelier never downloads a model: a Hugging Face id (``runwayml/stable-diffusion-v1-5``) is looked up in the
local Hugging Face cache only, and otherwise answered with how to bring the model in.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atelier.engine.architectures import DEMO_LABEL
from atelier.engine.paths import PICKLE_SUFFIXES, check_name, refuse_pickle
from atelier.engine.tiny import create_tiny_model
from atelier.errors import AtelierError, NotFoundError

DEMO_MODEL_NAME = "atelier-demo-sd15"
# owner/name, as the hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    is_demo: bool

    @property
    def label(self) -> str:
        return f"{self.name} ({DEMO_LABEL})" if self.is_demo else self.name


class FolderLibrary(ABC):
    """Models of one kind in one or more folders, by name: the base of the checkpoint, LoRA and ControlNet
    libraries, which differ only in what a model looks like on disk (:meth:`name_of`, :meth:`candidates`).

    Names never leave the folders (:func:`check_name`); a pickle under the name is refused, not loaded; an
    unknown name is an error that lists the known ones. The first folder wins when two hold a name.
    """

    #: the error field, and the kind of model in messages
    field = "model"
    label = "model"

    def __init__(self, root: str | os.PathLike[str], *, also: Sequence[str | os.PathLike[str]] = ()) -> None:
        self.root = Path(root)
        self.roots = [self.root, *(Path(folder) for folder in also)]

    @abstractmethod
    def name_of(self, path: Path) -> str | None:
        """The name ``path`` (an entry of a library folder) is known by, or None if it is no model of this kind."""

    @abstractmethod
    def candidates(self, root: Path, name: str) -> list[Path]:
        """Where a model called ``name`` would be in ``root``, in the order they are tried."""

    def paths(self) -> dict[str, Path]:
        """Every model by name, in name order."""
        found: dict[str, Path] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in sorted(root.iterdir(), key=lambda item: item.name.lower()):
                name = None if path.name.startswith(".") else self.name_of(path)
                if name is not None:
                    found.setdefault(name, path)
        return dict(sorted(found.items(), key=lambda item: item[0].lower()))

    def names(self) -> list[str]:
        return list(self.paths())

    def resolve(self, name: str) -> Path:
        """The model called ``name``; :class:`NotFoundError` naming the available ones."""
        check_name(name, what=self.field)
        for root in self.roots:
            for path in self.candidates(root, name):
                if path.exists():
                    return path
        for root in self.roots:
            for suffix in PICKLE_SUFFIXES:
                if (root / f"{name}{suffix}").is_file():
                    refuse_pickle(root / f"{name}{suffix}")
        raise NotFoundError(self.unknown_message(name), field=self.field)

    def unknown_message(self, name: str) -> str:
        available = ", ".join(self.names()) or "none"
        return f"unknown {self.label} {name!r}; available: {available}"


class ModelLibrary(FolderLibrary):
    """Checkpoints by name: diffusers folders and single files (a LoRA in the folder is not one)."""

    def name_of(self, path: Path) -> str | None:
        from atelier.engine.models import safetensors_kind

        if path.is_dir() and (path / "model_index.json").is_file():
            return path.name
        if path.is_file() and path.suffix == ".safetensors":
            try:
                return path.stem if safetensors_kind(path) == "checkpoint" else None
            except AtelierError:
                return None  # damaged or foreign: using it by name gives the full error
        return None

    def candidates(self, root: Path, name: str) -> list[Path]:
        return [root / name, root / f"{name}.safetensors"]

    def list(self) -> list[ModelEntry]:
        from atelier.engine.models import is_demo_model

        return [ModelEntry(name, path, is_demo_model(path)) for name, path in self.paths().items()]

    def resolve(self, name_or_path: str) -> Path:
        """A path that exists is used as given (CLI use); otherwise a name inside the library.

        A Hugging Face id is looked up in the local Hugging Face cache, never downloaded.
        """
        candidate = Path(name_or_path).expanduser()
        if ("/" in name_or_path or os.sep in name_or_path) and candidate.exists():
            return candidate
        if _HUB_ID.match(name_or_path) and not candidate.exists():
            return self._from_hub_cache(name_or_path)
        return super().resolve(name_or_path.removesuffix(".safetensors"))

    def _from_hub_cache(self, repo_id: str) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            snapshot = Path(snapshot_download(repo_id, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            snapshot = None
        if snapshot is not None and (snapshot / "model_index.json").is_file():
            return snapshot
        raise NotFoundError(
            f"{repo_id!r} looks like a Hugging Face model id, and Atelier never downloads models: copy the "
            f"model's single .safetensors file into {self.root}, or give the path of a local Hugging Face cache "
            f"snapshot (.../models--{repo_id.replace('/', '--')}/snapshots/<revision>)",
            field="model",
        )

    def ensure_demo(self) -> Path:
        """Create the tiny random-weight demo model if the library has no model at all."""
        path = self.root / DEMO_MODEL_NAME
        if not path.exists():
            create_tiny_model("sd15", path)
        return path

    def default(self) -> Path:
        entries = self.list()
        real = [entry for entry in entries if not entry.is_demo]
        if real:
            return real[0].path
        if entries:
            return entries[0].path
        raise AtelierError(
            f"no model in {self.root}; add one or run 'atelier models create-tiny'", field="model"
        )
