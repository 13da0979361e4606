"""Training batches: seeded epoch order, one bucket per batch, per-batch captions and flips, latent caches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from atelier.training.data import EpochBatches, LatentCache, TrainingData, load_example, pixels_of
from atelier.training.dataset import scan_dataset
from atelier.training.dataset_config import from_folder


def _image(path: Path, size: tuple[int, int], caption: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 40, 40)).save(path)
    path.with_suffix(".txt").write_text(caption, encoding="utf-8")


@pytest.fixture
def data(tmp_path: Path) -> TrainingData:
    for index, size in enumerate([(64, 64), (64, 64), (128, 64), (64, 128), (128, 64)]):
        _image(tmp_path / "3_oue car" / f"{index}.png", size, f"oue car, tag{index}, red, studio")
    [dataset] = from_folder(
        tmp_path,
        64,
        2,
        min_bucket_reso=32,
        max_bucket_reso=128,
        bucket_reso_steps=32,
        shuffle_caption=True,
        keep_tokens=1,
        flip_aug=True,
    )
    return TrainingData([dataset], [scan_dataset(dataset)], seed=11)


def test_each_batch_holds_one_bucket_and_every_image_its_repeats(data: TrainingData) -> None:
    batches = data.epoch_batches(0)
    assert len(batches) == data.num_batches
    assert all(len({example.bucket for example in batch}) == 1 for batch in batches)
    seen = [example.item.path.name for batch in batches for example in batch]
    assert sorted(seen) == sorted([f"{i}.png" for i in range(5)] * 3)


def test_epoch_order_is_seeded_and_changes_between_epochs(data: TrainingData) -> None:
    def order(epoch: int) -> list[list[str]]:
        return [[example.item.path.name for example in batch] for batch in data.epoch_batches(epoch)]

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_processes_get_equal_shares(data: TrainingData) -> None:
    shares = [data.epoch_batches(0, index, 3) for index in range(3)]
    assert len({len(share) for share in shares}) == 1
    assert sum(len(share) for share in shares) >= data.num_batches


def test_captions_and_flips_depend_only_on_seed_epoch_and_batch(data: TrainingData) -> None:
    batches = data.epoch_batches(0)
    whole = EpochBatches(batches, seed=11, epoch=0, start=0, load_pixels=False)
    resumed = EpochBatches(batches, seed=11, epoch=0, start=3, load_pixels=False)
    assert len(resumed) == len(batches) - 3
    assert resumed[0] == whole[3]
    captions = [caption for index in range(len(whole)) for caption in whole[index]["captions"]]
    # keep_tokens=1 keeps "oue car" first while the other tags are shuffled.
    assert all(caption.startswith("oue car, ") for caption in captions)
    assert len(set(captions)) > 5
    flips = [flip for index in range(len(whole)) for flip in whole[index]["flips"]]
    assert any(flips) and not all(flips)


def test_pixels_are_cut_to_the_bucket_in_vae_range(data: TrainingData) -> None:
    torch.set_num_threads(1)
    example = next(example for example in data.examples if example.bucket != (64, 64))
    pixels, original_size, crop = load_example(example, flip=False)
    width, height = example.bucket
    assert pixels.shape == (3, height, width)
    assert pixels.min() >= -1 and pixels.max() <= 1
    assert original_size == (example.item.size[1], example.item.size[0])
    mirrored, _, _ = load_example(example, flip=True)
    assert torch.equal(mirrored, pixels.flip(-1))
    assert torch.equal(
        pixels_of(Image.new("RGB", (2, 2), (255, 0, 0)))[:, 0, 0], torch.tensor([1.0, -1.0, -1.0])
    )


class _FakeVae:
    """Stands in for AutoencoderKL: a deterministic 'encoding' (8x mean pooling) with its config."""

    device = torch.device("cpu")
    dtype = torch.float32
    config = {"scaling_factor": 0.5, "latent_channels": 3, "block_out_channels": [8]}

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, pixels: torch.Tensor):
        self.calls += 1
        pooled = torch.nn.functional.avg_pool2d(pixels, 8)

        class _Dist:
            def sample(self, generator=None):
                return pooled

        class _Out:
            latent_dist = _Dist()

        return _Out()


class _Config(dict):
    def __getattr__(self, name):
        return self.get(name)


def test_latent_cache_in_memory_and_on_disk_gives_the_same_latents(
    data: TrainingData, tmp_path: Path
) -> None:
    vae = _FakeVae()
    vae.config = _Config(vae.config)
    examples = data.examples
    memory = LatentCache()
    memory.build(examples, vae, seed=0)
    encoded_in_memory = vae.calls
    assert encoded_in_memory == 2 * len(examples)  # flip_aug caches the mirror image too

    disk = LatentCache(tmp_path / "cache")
    disk.build(examples, vae, seed=0)
    again = LatentCache(tmp_path / "cache")
    again.build(examples, vae, seed=0)
    assert vae.calls == 2 * encoded_in_memory  # the second disk cache reused the files
    for example in examples:
        for flip in (False, True):
            latents, size, crop = memory.get(example, flip)
            disk_latents, disk_size, disk_crop = again.get(example, flip)
            torch.testing.assert_close(latents, disk_latents)
            assert (size, crop) == (disk_size, disk_crop)
            assert latents.shape[-2:] == (example.bucket[1] // 8, example.bucket[0] // 8)
