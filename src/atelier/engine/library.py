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
from dataclasses import dataclass
from pathlib import Path

from atelier.engine.architectures import DEMO_LABEL
from atelier.errors import AtelierError, NotFoundError, UnsafeFileError

DEMO_MODEL_NAME = "atelier-demo-sd15"
_SAFE_NAME = re.compile(r"^[^/\\\x00]+$")
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


def check_name(name: str, *, what: str = "model") -> str:
    if not name or not _SAFE_NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise UnsafeFileError(f"invalid {what} name {name!r}: use a plain name without folders", field=what)
    return name


class ModelLibrary:
    """Checkpoints in one folder, by name."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def list(self) -> list[ModelEntry]:
        """The checkpoints: diffusers folders and single files (a LoRA in the folder is not one)."""
        from atelier.engine.models import is_demo_model, safetensors_kind

        if not self.root.is_dir():
            return []
        entries = []
        for path in sorted(self.root.iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir() and (path / "model_index.json").is_file():
                entries.append(ModelEntry(path.name, path, is_demo_model(path)))
            elif path.is_file() and path.suffix == ".safetensors":
                try:
                    if safetensors_kind(path) == "checkpoint":
                        entries.append(ModelEntry(path.stem, path, False))
                except AtelierError:
                    continue  # damaged or foreign: using it by name gives the full error
        return entries

    def resolve(self, name_or_path: str) -> Path:
        """A path that exists is used as given (CLI use); otherwise a name inside the library.

        A Hugging Face id is looked up in the local Hugging Face cache, never downloaded.
        """
        candidate = Path(name_or_path).expanduser()
        if ("/" in name_or_path or os.sep in name_or_path) and candidate.exists():
            return candidate
        if _HUB_ID.match(name_or_path) and not candidate.exists():
            return self._from_hub_cache(name_or_path)
        name = check_name(name_or_path.removesuffix(".safetensors"))
        for path in (self.root / name, self.root / f"{name}.safetensors"):
            if path.exists():
                return path
        available = ", ".join(entry.name for entry in self.list()) or "none"
        raise NotFoundError(f"unknown model {name_or_path!r}; available: {available}", field="model")

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
        from atelier.engine.tiny import create_tiny_model

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
