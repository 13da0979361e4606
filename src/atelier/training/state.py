"""Resumable training state in one ``.safetensors`` file: no pickles, written atomically.

accelerate's ``save_state`` pickles the optimizer and RNG states, and unpickling a file can run code; a run folder
may come back from storage or another user, so Atelier stores tensors (LoRA weights, optimizer moments, the noise
generator's state) as safetensors and everything else (step, epoch, LR-scheduler state, optimizer hyper-parameters,
the loss curve) as JSON in the file's metadata. One file, renamed into place, means a crash while saving leaves
the previous state intact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from atelier.errors import AtelierError
from atelier.files import write_atomic

STATE_FILE = "state.safetensors"
_INFO_KEY = "atelier_train_state"
_FORMAT_VERSION = 1


@dataclass
class TrainState:
    """Where a run stands: enough to continue with the same step, epoch, batch order, LR and noise."""

    step: int
    epoch: int  # the epoch in progress, counted from 0
    batches_done: int  # batches of that epoch already trained on
    seed: int
    elapsed_seconds: float = 0.0
    loss_curve: list[list[float]] = field(default_factory=list)  # [step, loss] pairs
    epoch_files: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)  # settings that must not change on resume
    started_at: float = 0.0


@dataclass
class SavedState:
    state: TrainState
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    lr_scheduler: dict[str, Any]
    noise_generator: torch.Tensor
    grad_scaler: dict[str, Any] | None


def _split_optimizer(optimizer_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optimizer_state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": optimizer_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in info["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for group in info["param_groups"]:
        # JSON has no tuples; torch's Adam family expects betas as a pair.
        groups.append({**group, "betas": tuple(group["betas"])} if "betas" in group else dict(group))
    return {"state": state, "param_groups": groups}


def save_training_state(
    path: str | os.PathLike[str],
    *,
    state: TrainState,
    lora: Mapping[str, torch.Tensor],
    optimizer: dict[str, Any],
    lr_scheduler: dict[str, Any],
    noise_generator: torch.Tensor,
    grad_scaler: dict[str, Any] | None = None,
) -> Path:
    """Write the state file atomically (temporary file in the same folder, then rename)."""
    target = Path(path)
    optimizer_tensors, optimizer_info = _split_optimizer(optimizer)
    tensors = {f"lora.{name}": value.detach().to("cpu").contiguous() for name, value in lora.items()}
    tensors.update(optimizer_tensors)
    tensors["rng.noise"] = noise_generator.to("cpu").contiguous()
    info = {
        "version": _FORMAT_VERSION,
        "state": asdict(state),
        "optimizer": optimizer_info,
        "lr_scheduler": lr_scheduler,
        "grad_scaler": grad_scaler,
    }
    return write_atomic(
        target, lambda temp: save_file(tensors, str(temp), metadata={_INFO_KEY: json.dumps(info)})
    )


def load_training_state(path: str | os.PathLike[str]) -> SavedState:
    """Read a state file written by :func:`save_training_state`; AtelierError if it is missing or damaged."""
    source = Path(path)
    if not source.is_file():
        raise AtelierError(
            f"no saved training state in {source.parent} (expected {source.name})", field="resume"
        )
    try:
        with safe_open(str(source), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        info = json.loads(metadata[_INFO_KEY])
        noise_generator = tensors["rng.noise"]
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise AtelierError(
            f"training state {source} is damaged ({exc}); start a new run", field="resume"
        ) from None
    if info.get("version") != _FORMAT_VERSION:
        raise AtelierError(f"training state {source} has an unknown format version", field="resume")
    lora = {key.removeprefix("lora."): value for key, value in tensors.items() if key.startswith("lora.")}
    optimizer_tensors = {key: value for key, value in tensors.items() if key.startswith("optimizer.")}
    return SavedState(
        state=TrainState(**info["state"]),
        lora=lora,
        optimizer=_join_optimizer(optimizer_tensors, info["optimizer"]),
        lr_scheduler=info["lr_scheduler"],
        noise_generator=noise_generator,
        grad_scaler=info["grad_scaler"],
    )
