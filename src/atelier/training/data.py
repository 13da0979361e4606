"""From scanned images to training batches: epoch plans, per-batch captions and flips, pixels, cached latents.

Every random choice is derived from the run's seed and the position in training (epoch, batch index), never from
a shared random stream. That makes the data order independent of how many loader workers run and lets a resumed
run see exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from atelier.files import write_atomic
from atelier.training.buckets import BucketManager, bucket_info, make_batches, resize_and_crop
from atelier.training.dataset import ImageItem, load_image, process_caption
from atelier.training.dataset_config import DatasetConfig

Size = tuple[int, int]


@dataclass(frozen=True)
class Example:
    """One image of a batch, with the bucket ``(width, height)`` it is trained at."""

    item: ImageItem
    bucket: Size


class TrainingData:
    """The images of every dataset assigned to buckets, and the batches of each epoch."""

    def __init__(
        self, datasets: Sequence[DatasetConfig], items: Sequence[Sequence[ImageItem]], seed: int
    ) -> None:
        self.datasets = list(datasets)
        self.seed = seed
        self.assigned = [
            BucketManager.from_config(ds).assign(ds_items)
            for ds, ds_items in zip(datasets, items, strict=True)
        ]
        self.num_batches = len(self.epoch_batches(0))

    @property
    def examples(self) -> list[Example]:
        """Every (image, bucket) pair once, in dataset order."""
        return [Example(item, bucket) for assigned in self.assigned for item, bucket in assigned]

    def epoch_batches(
        self, epoch: int, process_index: int = 0, num_processes: int = 1
    ) -> list[list[Example]]:
        """This process's batches of ``epoch``: each image ``repeats`` times, one bucket per batch, shuffled."""
        rng = random.Random(f"atelier-epoch-{self.seed}-{epoch}")
        batches: list[list[Example]] = []
        for dataset, assigned in zip(self.datasets, self.assigned, strict=True):
            bucket_of = {id(item): bucket for item, bucket in assigned}
            for batch in make_batches(assigned, dataset.batch_size, rng):
                batches.append([Example(item, bucket_of[id(item)]) for item in batch])
        # Interleave datasets (kohya's DataLoader shuffles the batches of all datasets together).
        rng.shuffle(batches)
        if num_processes == 1:
            return batches
        # Every process must run the same number of steps; the last few batches are reused to even them out.
        per_process = math.ceil(len(batches) / num_processes)
        padded = (batches * num_processes)[: per_process * num_processes]
        return padded[process_index::num_processes]

    def bucket_info(self) -> dict[str, Any]:
        return bucket_info([pair for assigned in self.assigned for pair in assigned])


def pixels_of(image: Image.Image) -> torch.Tensor:
    """An RGB image as a ``(3, height, width)`` tensor in ``[-1, 1]``, the VAE's input range."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_example(example: Example, flip: bool) -> tuple[torch.Tensor, Size, Size]:
    """Pixels of an image cut to its bucket, optionally mirrored, with SDXL's ``(h, w)`` size and crop."""
    cropped = resize_and_crop(load_image(example.item.path), example.bucket)
    image = cropped.image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else cropped.image
    # The crop offset is kept for the mirrored image: with centre crops the two differ by at most a pixel.
    return pixels_of(image), cropped.original_size, cropped.crop_top_left


class EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches from ``start`` on, with captions processed and (optionally) pixels loaded.

    Runs inside DataLoader workers: everything random comes from an RNG seeded by (seed, epoch, batch index).
    """

    def __init__(
        self, batches: Sequence[list[Example]], *, seed: int, epoch: int, start: int, load_pixels: bool
    ) -> None:
        self.batches = batches
        self.seed = seed
        self.epoch = epoch
        self.start = start
        self.load_pixels = load_pixels

    def __len__(self) -> int:
        return len(self.batches) - self.start

    def __getitem__(self, position: int) -> dict[str, Any]:
        index = self.start + position
        batch = self.batches[index]
        rng = random.Random(f"atelier-batch-{self.seed}-{self.epoch}-{index}")
        captions, flips = [], []
        for example in batch:
            subset = example.item.subset
            flips.append(subset.flip_aug and rng.random() < 0.5)
            captions.append(
                process_caption(
                    example.item.caption,
                    shuffle=subset.shuffle_caption,
                    keep_tokens=subset.keep_tokens,
                    dropout_rate=subset.caption_dropout_rate,
                    rng=rng,
                )
            )
        result: dict[str, Any] = {
            "index": index,
            "captions": captions,
            "flips": flips,
            "is_reg": [example.item.is_reg for example in batch],
        }
        if self.load_pixels:
            loaded = [load_example(example, flip) for example, flip in zip(batch, flips, strict=True)]
            result["pixels"] = torch.stack([pixels for pixels, _, _ in loaded])
            result["original_sizes"] = [size for _, size, _ in loaded]
            result["crops"] = [crop for _, _, crop in loaded]
        return result


def encode_latents(vae: Any, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """VAE latents of ``pixels`` (sampled from the posterior, as kohya and diffusers train), scaled."""
    posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    latents = posterior.sample(generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


class LatentCache:
    """Latents of every (image, bucket, flip) computed once, kept in memory or in a folder of safetensors files."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self.entries: dict[tuple[str, Size, bool], tuple[torch.Tensor, Size, Size]] = {}
        self.files: dict[tuple[str, Size, bool], Path] = {}

    @staticmethod
    def _file_name(path: Path, bucket: Size, flip: bool, vae_config: dict[str, Any]) -> str:
        stat = path.stat()
        # The file's size and mtime stand in for its content: an edited image gets a new cache entry.
        identity = json.dumps(
            [str(path), stat.st_size, stat.st_mtime_ns, bucket, flip, vae_config], default=str
        )
        return hashlib.sha256(identity.encode()).hexdigest()[:32] + ".safetensors"

    def build(
        self,
        examples: Sequence[Example],
        vae: Any,
        *,
        seed: int,
        write: bool = True,
    ) -> None:
        """Encode every example (and its mirror image where its subset flips); reuses files from earlier runs.

        With a folder, only the process with ``write`` encodes missing entries; the others just index them.
        """
        generator = torch.Generator(vae.device).manual_seed(seed)
        todo = []
        for example in examples:
            todo.append((example, False))
            if example.item.subset.flip_aug:
                todo.append((example, True))
        vae_config = {
            key: vae.config[key] for key in ("scaling_factor", "latent_channels", "block_out_channels")
        }
        for example, flip in todo:
            key = (str(example.item.path), example.bucket, flip)
            if key in self.entries or key in self.files:
                continue
            if self.folder is not None:
                path = self.folder / self._file_name(example.item.path, example.bucket, flip, vae_config)
                self.files[key] = path
                if path.is_file() or not write:
                    continue
            pixels, original_size, crop = load_example(example, flip)
            with torch.no_grad():
                latents = encode_latents(vae, pixels[None], generator)[0].float().cpu()
            if self.folder is None:
                self.entries[key] = (latents, original_size, crop)
            else:
                tensors = {"latents": latents.contiguous()}
                metadata = {"original_size": json.dumps(original_size), "crop": json.dumps(crop)}
                write_atomic(path, functools.partial(_save_latents, tensors, metadata))

    def get(self, example: Example, flip: bool) -> tuple[torch.Tensor, Size, Size]:
        key = (str(example.item.path), example.bucket, flip)
        if key in self.entries:
            return self.entries[key]
        with safe_open(str(self.files[key]), framework="pt") as handle:
            metadata = handle.metadata()
            latents = handle.get_tensor("latents")
        return latents, tuple(json.loads(metadata["original_size"])), tuple(json.loads(metadata["crop"]))

    def move_to(self, device: Any) -> None:
        """Keep in-memory latents on the training device so a step does no host-to-device copy."""
        self.entries = {
            key: (latents.to(device), size, crop) for key, (latents, size, crop) in self.entries.items()
        }


def _save_latents(tensors: dict[str, torch.Tensor], metadata: dict[str, str], temp: Path) -> None:
    save_file(tensors, str(temp), metadata=metadata)
