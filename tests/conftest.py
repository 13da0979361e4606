"""Shared fixtures: tiny random-weight models, built once per test session."""

from __future__ import annotations

import os

import pytest

# Thread count changes floating-point results; pin it so "bit-identical" means something.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _pin_torch_threads():
    try:
        import torch
    except ImportError:  # the prompt-only tests run without torch
        yield
        return
    torch.set_num_threads(2)
    yield


class TinyModels:
    """Lazily creates tiny models of each architecture in one session folder."""

    def __init__(self, root) -> None:
        self.root = root
        self._paths = {}

    def __call__(self, arch: str):
        if arch not in self._paths:
            from atelier.engine.tiny import create_tiny_model

            self._paths[arch] = create_tiny_model(arch, self.root / arch)
        return self._paths[arch]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def engine():
    from atelier.engine.generate import Engine

    return Engine(device="cpu")


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory):
    """A tiny random-weight BLIP captioning model (transformers folder); copy it into a models/captioning/."""
    from atelier.engine.tiny import create_tiny_captioning_model

    return create_tiny_captioning_model(tmp_path_factory.mktemp("tiny-captioner") / "tiny-blip")
