"""External VAEs (``models/vae/``) chosen per request, as A1111's ``sd_vae`` setting chooses them.

Users swap the VAE to fix washed-out colours or to get sharper detail (``vae-ft-mse-840000``,
``sdxl-vae-fp16-fix``). A VAE is a ``<name>.safetensors`` file, in the original (LDM) layout most downloads use or
in diffusers' layout, or a diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

The VAE takes the checkpoint's own VAE config (its scaling factor differs between SD 1.5 and SDXL) and the
file's weights; a VAE of the wrong family fails to load with a one-line error rather than producing noise.
While a request runs, :func:`swapped_vae` puts it into the checkpoint's pipelines and puts the checkpoint's own
back afterwards, so the cached model is never left changed for the next request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from atelier.engine.library import FolderLibrary
from atelier.engine.models import LoadedModel
from atelier.engine.paths import read_safetensors_header
from atelier.errors import AtelierError

DIFFUSERS_VAE_FILE = "diffusion_pytorch_model.safetensors"
SHORT_HASH_LENGTH = 8  # A1111's "VAE hash": the first 8 characters of the file's sha256
# Loaded VAEs kept warm per library: a VAE is ~160 MB in fp16, and a studio rarely alternates more than two.
MAX_WARM_VAES = 2
_VAE_KEY_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


def is_vae_keys(keys: Sequence[str]) -> bool:
    """True when a safetensors file's tensor names are those of a VAE alone (either layout)."""
    names = [key.removeprefix("first_stage_model.") for key in keys]
    return (
        bool(names)
        and all(name.startswith(_VAE_KEY_PREFIXES) for name in names)
        and any(name.startswith("decoder.") for name in names)
    )


def vae_sha256(path: Path) -> str:
    """sha256 of a VAE file (of its weights file for a diffusers folder)."""
    weights = path / DIFFUSERS_VAE_FILE if path.is_dir() else path
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


class VaeLibrary(FolderLibrary):
    """The VAEs in a folder, by name (A1111 names them with the suffix: ``name.safetensors`` works too)."""

    field = "sd_vae"
    label = "VAE"

    def __init__(self, root: Any, *, also: Sequence[Any] = ()) -> None:
        super().__init__(root, also=also)
        self._warm: OrderedDict[tuple[str, float, str, str], Any] = OrderedDict()

    def name_of(self, path: Path) -> str | None:
        if path.is_file() and path.suffix == ".safetensors":
            return path.stem
        if path.is_dir() and (path / DIFFUSERS_VAE_FILE).is_file() and (path / "config.json").is_file():
            return path.name
        return None

    def candidates(self, root: Path, name: str) -> list[Path]:
        return [root / f"{name}.safetensors", root / name]

    def resolve(self, name: str) -> Path:
        return super().resolve(name.removesuffix(".safetensors"))

    def load(self, name: str, model: LoadedModel) -> tuple[Any, str]:
        """The VAE called ``name`` made for ``model`` (its config, device and dtype), and its short hash."""
        path = self.resolve(name)
        base_vae = model.pipeline.vae
        key = (str(path), path.stat().st_mtime, model.architecture, str(base_vae.dtype))
        if key not in self._warm:
            self._warm[key] = (load_vae(path, base_vae), vae_sha256(path)[:SHORT_HASH_LENGTH])
            while len(self._warm) > MAX_WARM_VAES:
                self._warm.popitem(last=False)
        self._warm.move_to_end(key)
        vae, short_hash = self._warm[key]
        return vae.to(_home_device(base_vae)), short_hash


def _home_device(vae: Any) -> Any:
    # A base VAE under sequential offload lives on the meta device: the swapped one waits in RAM instead.
    return "cpu" if vae.device.type == "meta" else vae.device


def load_vae(path: Path, like: Any) -> Any:
    """Load the VAE at ``path`` with the config, dtype and device of ``like`` (the checkpoint's own VAE)."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    if path.is_dir():
        vae = AutoencoderKL.from_pretrained(str(path), use_safetensors=True, local_files_only=True)
        return vae.to(device=_home_device(like), dtype=like.dtype).eval()
    header = read_safetensors_header(path)
    keys = [key for key in header if key != "__metadata__"]
    if not is_vae_keys(keys):
        raise AtelierError(f"{path.name} is not a VAE (no encoder/decoder weights alone)", field="sd_vae")
    try:
        if any(key.startswith("decoder.up_blocks.") for key in keys):  # diffusers' layout: load as is
            vae = AutoencoderKL.from_config(like.config)
            state = load_file(str(path))
            vae.load_state_dict(state, strict=True)
        else:  # the original layout: diffusers converts it, with the checkpoint's own config
            with tempfile.TemporaryDirectory(prefix="atelier-vae-") as config_dir:
                (Path(config_dir) / "config.json").write_text(json.dumps(dict(like.config)))
                vae = AutoencoderKL.from_single_file(str(path), config=config_dir, local_files_only=True)
    except (RuntimeError, ValueError, KeyError) as problem:
        first_line = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
        raise AtelierError(
            f"VAE {path.stem} does not fit this checkpoint's VAE ({first_line[:200]})", field="sd_vae"
        ) from None
    return vae.to(device=_home_device(like), dtype=like.dtype).eval()


@contextlib.contextmanager
def swapped_vae(model: LoadedModel, vae: Any | None) -> Iterator[None]:
    """While the block runs, the checkpoint's pipelines (and variants) decode and encode with ``vae``."""
    if vae is None:
        yield
        return
    pipelines = model.pipelines()
    originals = [pipeline.vae for pipeline in pipelines]
    for pipeline in pipelines:
        pipeline.vae = vae
    try:
        yield
    finally:
        for pipeline, original in zip(pipelines, originals, strict=True):
            pipeline.vae = original
