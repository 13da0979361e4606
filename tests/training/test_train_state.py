"""Resumable state: a safetensors file that restores optimizer, schedule and RNG exactly, and no pickles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.optimization import get_scheduler

from atelier.errors import AtelierError
from atelier.training.state import TrainState, load_training_state, save_training_state


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([{"params": [weight], "lr": 0.1}])
    scheduler = get_scheduler("cosine_with_restarts", optimizer, num_warmup_steps=2, num_training_steps=10)
    return weight, optimizer, scheduler


def _step(weight, optimizer, scheduler, generator) -> None:
    loss = (weight * torch.randn(weight.shape, generator=generator)).sum() ** 2
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def test_state_round_trip_continues_exactly(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    weight, optimizer, scheduler = _setup()
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        _step(weight, optimizer, scheduler, generator)
    state = TrainState(step=3, epoch=1, batches_done=2, seed=5, loss_curve=[[1, 0.5], [2, 0.4], [3, 0.3]])
    path = save_training_state(
        tmp_path / "state.safetensors",
        state=state,
        lora={"unet.weight": weight},
        optimizer=optimizer.state_dict(),
        lr_scheduler=scheduler.state_dict(),
        noise_generator=generator.get_state(),
    )
    for _ in range(3):
        _step(weight, optimizer, scheduler, generator)
    expected = weight.detach().clone()

    saved = load_training_state(path)
    resumed_weight, resumed_optimizer, resumed_scheduler = _setup(seed=1)
    with torch.no_grad():
        resumed_weight.copy_(saved.lora["unet.weight"])
    resumed_optimizer.load_state_dict(saved.optimizer)
    resumed_scheduler.load_state_dict(saved.lr_scheduler)
    resumed_generator = torch.Generator()
    resumed_generator.set_state(saved.noise_generator)
    assert saved.state == state
    for _ in range(3):
        _step(resumed_weight, resumed_optimizer, resumed_scheduler, resumed_generator)
    torch.testing.assert_close(resumed_weight.detach(), expected, rtol=0, atol=0)
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()
    assert [p.name for p in tmp_path.iterdir()] == ["state.safetensors"]


def test_missing_and_damaged_state_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AtelierError, match="no saved training state"):
        load_training_state(tmp_path / "state.safetensors")
    (tmp_path / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(AtelierError, match="is damaged"):
        load_training_state(tmp_path / "state.safetensors")
