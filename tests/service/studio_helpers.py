"""Helpers for the studio tests: fast settings, installing tiny models, in-process workers, waiting."""

from __future__ import annotations

import base64
import io
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from atelier.service.config import StudioConfig
from atelier.service.modelfiles import folder_version, upload_folder
from atelier.service.registry import ModelRecord, inspect_model
from atelier.service.studio import Studio
from atelier.service.worker import Worker
from polling import QUICK_TIMINGS
from polling import wait_for as wait_for  # re-exported: the studio tests import it from here

FAST = {
    **QUICK_TIMINGS,
    "scale_down_after_seconds": 0.5,
    "supervise_seconds": 0.1,
    "webhook_backoff_seconds": 0.05,
    "webhook_timeout_seconds": 2.0,
    # The tests' webhook receivers listen on 127.0.0.1; the SSRF tests turn this off again.
    "webhook_allow_private": True,
}


def fast_config(data_dir: Path, **overrides: Any) -> StudioConfig:
    return StudioConfig.for_data_dir(data_dir, **{**FAST, **overrides})


def install_checkpoint(studio: Studio, source: Path, name: str) -> ModelRecord:
    """Put a diffusers model folder into the models bucket and register it, as the watcher would."""
    key = f"models/{name}"
    local = studio.storage.local_path(key)
    if local is not None:
        shutil.copytree(source, local)
        objects = studio.storage.list(key)
    else:
        objects = upload_folder(studio.storage, source, key)
    version = folder_version(objects)
    studio.ledger.claim_object("models", key, version)
    record = studio.registry.register(
        name=name, storage_key=key, info=inspect_model(source), version=version, is_folder=True
    )
    studio.ledger.mark_done("models", key, version)
    return record


def make_lora(base_model: Path, destination: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA for a tiny SD 1.5 model, in diffusers' file layout, strong enough to change the picture."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    pipeline = StableDiffusionPipeline.from_pretrained(str(base_model))
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=rank, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    pipeline.unet.add_adapter(config, adapter_name="test")
    state = get_peft_model_state_dict(pipeline.unet, adapter_name="test")
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"unet.{key}": (value * 4).contiguous() for key, value in state.items()}, destination)
    return destination


def new_worker(studio: Studio, **kwargs: Any) -> Worker:
    return Worker(studio, **kwargs)


@contextmanager
def running_worker(studio: Studio, **kwargs: Any) -> Iterator[Worker]:
    """A worker processing jobs in a background thread for the duration of the block."""
    worker = new_worker(studio, **kwargs)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    # Warm-up loads the default model in that thread; diffusers' loading is not safe to run beside another
    # load in the same process (accelerate patches torch globally), which only tests ever do.
    worker.ready.wait(timeout=120)
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=60)


def png_base64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# Training settings for a run of a few seconds on the tiny SD 1.5 model installed as "tiny-sd15": four
# images, no repeats, batches of two, one epoch = two steps.
TINY_TRAINING = b"""
base = "tiny-sd15"
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
train_batch_size = 2
network_dim = 4
network_alpha = 2.0
learning_rate = 0.05
max_data_loader_n_workers = 0
seed = 1
num_repeats = 1
max_train_epochs = 1
"""
