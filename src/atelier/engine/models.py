"""Finding, validating and loading Stable Diffusion checkpoints, and keeping them warm.

Two on-disk forms are accepted: a diffusers folder, and a single-file ``.safetensors`` checkpoint (the A1111 /
ComfyUI / Civitai form). Single files are converted by diffusers' own ``from_single_file`` using the architecture
configs shipped in ``engine/configs`` so no hub access is needed. Pickle formats are refused: loading them runs
arbitrary code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atelier.engine.architectures import (
    ARCHITECTURES,
    DEMO_LABEL,
    DEMO_MARKER,
    config_dir,
    from_diffusers_model_type,
)
from atelier.engine.cache import CacheKey, WarmCache
from atelier.engine.convert import write_embedded_configs
from atelier.engine.paths import PICKLE_SUFFIXES, read_safetensors_header, refuse_pickle
from atelier.engine.tokenizer import tokenizers_for_single_file
from atelier.errors import AtelierError, NotFoundError

_PIPELINE_CLASSES = {
    "sd15": "StableDiffusionPipeline",
    "sd15-inpaint": "StableDiffusionInpaintPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
}


_LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora.down", "lora.up")


def safetensors_kind(path: Path, header: dict[str, Any] | None = None) -> str:
    """ "checkpoint", "lora", "embedding" or "vae" for a ``.safetensors`` file, from its header alone.

    The one rule every place uses (the CLI's model and LoRA folders, the studio's registry), so that no two of
    them can disagree about a file: UNet weights under ``model.diffusion_model.`` (or Atelier's own
    architecture note) make a checkpoint; ``lora_down``/``lora_up`` or PEFT ``lora_A``/``lora_B`` weights a
    LoRA. Anything else is refused with a one-line error.
    """
    header = read_safetensors_header(path) if header is None else header
    stored = (header.get("__metadata__") or {}).get("atelier_architecture")
    keys = [key for key in header if key != "__metadata__"]
    if stored in ARCHITECTURES or any(key.startswith("model.diffusion_model.") for key in keys):
        return "checkpoint"
    if any(marker in key for key in keys for marker in _LORA_MARKERS):
        return "lora"
    from atelier.engine.embeddings import embedding_keys_kind
    from atelier.engine.vae import is_vae_keys

    if keys and embedding_keys_kind(keys, [header[key]["shape"] for key in keys]):
        return "embedding"
    if is_vae_keys(keys):
        return "vae"
    raise AtelierError(
        f"{path.name} is neither a Stable Diffusion checkpoint (no UNet weights), a LoRA "
        "(no lora_down/lora_up or lora_A/lora_B weights), a textual inversion embedding nor a VAE",
        field="file",
    )


def hf_cache_snapshot(path: Path) -> Path:
    """A Hugging Face cache folder of a model (``models--org--name``) means its current snapshot folder."""
    snapshots = path / "snapshots"
    if not snapshots.is_dir():
        return path
    ref = path / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    found = sorted(item for item in snapshots.iterdir() if item.is_dir())
    if len(found) == 1:
        return found[0]
    raise AtelierError(
        f"{path} is a Hugging Face cache folder with {len(found)} snapshots and no refs/main; "
        "give the snapshot folder itself (snapshots/<revision>)",
        field="model",
    )


def validate_safetensors(path: Path) -> None:
    """Refuse a damaged ``.safetensors`` file before it is registered, with a one-line reason.

    The safetensors library checks what matters, without reading the weights: every tensor's dtype, shape and
    byte range agree, the ranges cover the data with no gap or overlap, and the file is exactly that long (a
    truncated upload, or bytes appended to it, is caught).
    """
    from safetensors import SafetensorError, safe_open

    refuse_pickle(path)
    read_safetensors_header(path)
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        raise AtelierError(f"{path.name} is a damaged .safetensors file ({reason})", field="file") from None


class _ShapeOnly:
    """Stands in for a tensor where only ``.shape`` is read (architecture detection)."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = tuple(shape)


def detect_architecture(path: str | os.PathLike[str]) -> str:
    """Return one of ARCHITECTURES for a diffusers folder or single-file checkpoint, or raise AtelierError."""
    path = Path(path)
    if path.is_dir():
        return _detect_folder_architecture(hf_cache_snapshot(path))
    header = read_safetensors_header(path)
    if path.suffix.lower() != ".safetensors":
        raise AtelierError(f"{path.name}: expected a .safetensors checkpoint or a diffusers folder")
    stored = header.get("__metadata__", {}).get("atelier_architecture")
    if stored in ARCHITECTURES:
        return stored
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    shapes = {key: _ShapeOnly(info["shape"]) for key, info in header.items() if key != "__metadata__"}
    if not any(key.startswith("model.diffusion_model.") for key in shapes):
        raise AtelierError(
            f"{path.name} is not a Stable Diffusion checkpoint (no UNet weights); if it is a LoRA, put it in the "
            "LoRA folder"
        )
    arch = from_diffusers_model_type(infer_diffusers_model_type(shapes))
    if arch is None:
        raise AtelierError(
            f"{path.name}: unsupported architecture ({infer_diffusers_model_type(shapes)}); Atelier supports "
            "SD 1.5, SD 1.5 inpainting, SDXL base and SDXL refiner"
        )
    return arch


def _detect_folder_architecture(path: Path) -> str:
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise AtelierError(f"{path} is not a diffusers model folder (no model_index.json)")
    unet_config_file = path / "unet" / "config.json"
    if not unet_config_file.is_file():
        raise AtelierError(f"{path} has no unet/config.json")
    unet = json.loads(unet_config_file.read_text())
    has_te1 = (path / "text_encoder" / "config.json").is_file()
    if unet.get("addition_embed_type") == "text_time":
        return "sdxl" if has_te1 else "sdxl-refiner"
    if unet.get("in_channels") == 9:
        return "sd15-inpaint"
    if unet.get("cross_attention_dim") == 1024:
        raise AtelierError(f"{path}: Stable Diffusion 2.x is not supported; use SD 1.5 or SDXL models")
    return "sd15"


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors",)]
    pickles = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles and not files:
        refuse_pickle(pickles[0])
    return sorted(files)


def file_sha256(path: Path, *, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: str | os.PathLike[str]) -> str:
    """A1111's hash for a single file (sha256 of the file). For a folder: sha256 over its weight files' hashes."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for weight in _weight_files(path):
        digest.update(weight.relative_to(path).as_posix().encode())
        digest.update(file_sha256(weight).encode())
    return digest.hexdigest()


def is_demo_model(path: str | os.PathLike[str]) -> bool:
    path = Path(path)
    return path.is_dir() and (path / DEMO_MARKER).is_file()


def display_name(path: str | os.PathLike[str]) -> str:
    path = Path(path)
    name = path.stem if path.is_file() else path.name
    return f"{name} ({DEMO_LABEL})" if is_demo_model(path) else name


@dataclass
class LoadedModel:
    """A loaded base pipeline plus what the rest of Atelier needs to know about it."""

    path: Path
    name: str
    architecture: str
    pipeline: Any  # the diffusers pipeline of this architecture, on its device and dtype
    sha256: str
    is_demo: bool
    # As loaded: samplers are built from this, never from whatever scheduler the last request installed.
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    # LoRA adapters loaded into this pipeline: adapter name -> (file path, mtime).
    loaded_loras: dict[str, tuple[str, float]] = field(default_factory=dict)
    # What engine/acceleration.py did to this model (SDPA, channels-last, compile), set on first use.
    acceleration: Any = None
    _variants: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def short_hash(self) -> str:
        """The 10-character hash A1111 shows as "Model hash"."""
        return self.sha256[:10]

    def pipelines(self) -> list[Any]:
        """The base pipeline and every variant built so far (they share the same components)."""
        return [self.pipeline, *(v for v in self._variants.values() if v is not self.pipeline)]

    def variant(self, pipeline_class_name: str) -> Any:
        """The same components wrapped in another pipeline class (img2img, inpaint), built once."""
        if type(self.pipeline).__name__ == pipeline_class_name:
            return self.pipeline
        if pipeline_class_name not in self._variants:
            import diffusers

            cls = getattr(diffusers, pipeline_class_name)
            variant = cls.from_pipe(self.pipeline)
            variant.set_progress_bar_config(disable=True)
            self._variants[pipeline_class_name] = variant
        return self._variants[pipeline_class_name]


def _tokenizer_for_single_file(path: Path, arch: str, tokenizer_dir: Path | None) -> dict[str, Any]:
    """Tokenizers are not stored in single files: a given folder, one beside the file, or the bundled ones."""
    beside = path.with_name(path.stem + ".tokenizer")
    candidates = [tokenizer_dir] if tokenizer_dir else []
    candidates.append(beside)
    found = next((c for c in candidates if c is not None and c.is_dir()), None)
    return tokenizers_for_single_file(arch, found)


def load_model(
    path: str | os.PathLike[str],
    *,
    device: str = "cpu",
    dtype: Any = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a checkpoint (diffusers folder or single .safetensors file) as a diffusers pipeline."""
    import diffusers
    import torch

    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"model not found: {path}")
    refuse_pickle(path)
    if path.is_dir():
        path = hf_cache_snapshot(path)
    arch = detect_architecture(path)
    dtype = dtype or torch.float32
    cls = getattr(diffusers, _PIPELINE_CLASSES[arch])
    common: dict[str, Any] = {"dtype": dtype}
    if arch in ("sd15", "sd15-inpaint"):
        common.update(safety_checker=None, requires_safety_checker=False)
    if path.is_dir():
        if not _weight_files(path):
            raise AtelierError(f"{path} holds no .safetensors weights (pickle weights are refused)")
        pipeline = cls.from_pretrained(str(path), use_safetensors=True, local_files_only=True, **common)
    else:
        components = _tokenizer_for_single_file(path, arch, Path(tokenizer_dir) if tokenizer_dir else None)
        with tempfile.TemporaryDirectory(prefix="atelier-config-") as embedded:
            metadata = read_safetensors_header(path).get("__metadata__", {})
            config = embedded if write_embedded_configs(metadata, Path(embedded)) else str(config_dir(arch))
            pipeline = cls.from_single_file(
                str(path), config=config, local_files_only=True, **components, **common
            )
    pipeline.set_progress_bar_config(disable=True)
    if device != "cpu":
        pipeline.to(device)
    return LoadedModel(
        path=path,
        name=display_name(path),
        architecture=arch,
        pipeline=pipeline,
        sha256=model_sha256(path),
        is_demo=is_demo_model(path),
        scheduler_config=dict(pipeline.scheduler.config),
    )


def model_bytes(model: LoadedModel) -> int:
    """Memory a loaded checkpoint takes: every weight and buffer of its pipeline's modules."""
    import torch

    total = 0
    for component in model.pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            total += sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    return total


def default_memory_budget() -> int:
    """Half of this machine's memory: what loaded checkpoints may take in RAM together."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


class ModelCache(WarmCache[LoadedModel]):
    """Checkpoints kept loaded between generations, within a memory budget.

    - On the GPU, ``max_models`` checkpoints stay on the device. One pushed out is moved to CPU RAM instead of
      being dropped, as long as the models kept there fit ``memory_budget`` bytes: switching back to it is a
      copy to the GPU (about a second for SDXL) instead of a read from disk and a new pipeline (tens of
      seconds). This is A1111's "checkpoints to cache in RAM", sized in bytes rather than in models because
      an SDXL checkpoint is three times an SD 1.5 one.
    - On the CPU the loaded models are already in RAM: they are kept while they fit ``memory_budget``
      (the most recently used one always stays), so two SDXL models in fp32 do not exhaust a 16 GB machine.
    """

    def __init__(
        self,
        *,
        max_models: int = 2,
        memory_budget: int | None = None,
        tokenizer_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(load_model, max_models=max_models, tokenizer_dir=tokenizer_dir)
        self.memory_budget = default_memory_budget() if memory_budget is None else memory_budget
        self._in_ram: OrderedDict[tuple[str, str], tuple[int, LoadedModel]] = OrderedDict()
        self._sizes: dict[CacheKey, int] = {}

    def _trim(self) -> None:
        super()._trim()
        # On the CPU the device tier is RAM: keep it within the budget too.
        while len(self._items) > 1:
            on_cpu = [key for key in self._items if key[1] == "cpu"]
            if sum(self._size(key) for key in on_cpu) <= self.memory_budget or not on_cpu:
                break
            oldest = on_cpu[0]
            if oldest == next(reversed(self._items)):
                break
            del self._items[oldest]
            self._sizes.pop(oldest, None)

    def _size(self, key: CacheKey) -> int:
        if key not in self._sizes:
            self._sizes[key] = model_bytes(self._items[key])
        return self._sizes[key]

    def _evicted(self, key: CacheKey, loaded: LoadedModel) -> None:
        size = self._sizes.pop(key, None) or model_bytes(loaded)
        path, device, dtype = key
        if device == "cpu" or size > self.memory_budget:
            return
        # Not pipeline.to(): an offloaded pipeline's hooks must be removed first (engine/memory.py).
        from atelier.engine.memory import reset

        reset(loaded.pipelines(), "cpu")
        self._in_ram[(path, dtype)] = (size, loaded)
        while sum(kept for kept, _model in self._in_ram.values()) > self.memory_budget:
            self._in_ram.popitem(last=False)

    def _reuse(self, key: CacheKey, device: str) -> LoadedModel | None:
        path, _device, dtype = key
        kept = self._in_ram.pop((path, dtype), None)
        if kept is None:
            return None
        kept[1].pipeline.to(device)
        return kept[1]

    def in_ram(self) -> list[str]:
        """Paths of the checkpoints moved off the device and kept in RAM, least recently used first."""
        with self._lock:
            return [path for path, _dtype in self._in_ram]

    def get(self, path: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None) -> LoadedModel:
        import torch

        # float32 is what load_model uses for None: one key for both spellings.
        return super().get(path, device=device, dtype=dtype or torch.float32)
