"""Model files: detection, single-file loading, pickle refusal, hashes, the warm cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from atelier.engine.models import ModelCache, detect_architecture, load_model, read_safetensors_header
from atelier.engine.request import GenerationRequest
from atelier.errors import AtelierError, UnsafeFileError

ARCHS = ["sd15", "sd15-inpaint", "sdxl", "sdxl-refiner"]


@pytest.fixture(scope="module")
def single_files(tiny_models, tmp_path_factory):
    """Each tiny model as an A1111-style single .safetensors file, with its tokenizer folder beside it."""
    from atelier.engine.convert import save_single_file

    root = tmp_path_factory.mktemp("single")
    files = {}
    for arch in ARCHS:
        folder = tiny_models(arch)
        path = save_single_file(folder, root / f"{arch}.safetensors", arch)
        tokenizer_dir = root / f"{arch}.tokenizer"
        if arch != "sdxl-refiner":
            shutil.copytree(folder / "tokenizer", tokenizer_dir)
        if arch in ("sdxl", "sdxl-refiner"):
            shutil.copytree(folder / "tokenizer_2", tokenizer_dir / "tokenizer_2")
        files[arch] = path
    return files


@pytest.mark.parametrize("arch", ARCHS)
def test_detects_architecture_of_folders_and_single_files(tiny_models, single_files, arch):
    assert detect_architecture(tiny_models(arch)) == arch
    assert detect_architecture(single_files[arch]) == arch


@pytest.mark.parametrize("arch", ARCHS)
def test_single_file_detection_uses_weights_not_our_metadata(single_files, tmp_path, arch):
    from safetensors.torch import load_file, save_file

    stripped = tmp_path / "downloaded.safetensors"
    save_file(load_file(single_files[arch]), stripped)  # no atelier metadata, like a Civitai download
    assert "atelier_architecture" not in read_safetensors_header(stripped).get("__metadata__", {})
    assert detect_architecture(stripped) == arch


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_single_file_generates_the_same_picture_as_its_folder(tiny_models, single_files, engine, arch):
    def make(model):
        request = GenerationRequest(
            prompt="a red shoe", model=str(model), steps=3, width=64, height=64, seed=5
        )
        return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)

    assert np.abs(make(tiny_models(arch)) - make(single_files[arch])).max() <= 2


def test_single_file_hash_is_sha256_of_the_file(single_files):
    import hashlib

    model = load_model(single_files["sd15"])
    assert model.sha256 == hashlib.sha256(single_files["sd15"].read_bytes()).hexdigest()
    assert model.short_hash == model.sha256[:10]


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """No Hugging Face cache and no network: what a checkpoint from the wild meets on an offline studio."""
    import huggingface_hub.constants

    cache = tmp_path / "empty-hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("arch", ARCHS)
def test_a_lone_single_file_loads_offline_with_the_bundled_tokenizers(
    tiny_models, single_files, tmp_path, empty_hub_cache, arch
):
    lonely = tmp_path / "lonely.safetensors"
    shutil.copy(single_files[arch], lonely)  # no lonely.tokenizer/ beside it, nothing in the cache
    model = load_model(lonely)
    folder = load_model(tiny_models(arch))
    prompt = "a product photo of a (yellow windbreaker:1.3), café, 👟"
    for name in ("tokenizer", "tokenizer_2"):
        loaded, reference = getattr(model.pipeline, name, None), getattr(folder.pipeline, name, None)
        assert (loaded is None) == (reference is None)
        if loaded is not None:
            assert len(loaded) == 49408
            assert (
                loaded.pad_token == reference.pad_token == ("!" if name == "tokenizer_2" else "<|endoftext|>")
            )
            assert loaded(prompt).input_ids == reference(prompt).input_ids


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_lone_single_file_generates_the_picture_of_its_folder(
    tiny_models, single_files, tmp_path, empty_hub_cache, engine, arch
):
    lonely = tmp_path / f"lonely-{arch}.safetensors"
    shutil.copy(single_files[arch], lonely)

    def make(model):
        request = GenerationRequest(
            prompt="a red shoe", model=str(model), steps=3, width=64, height=64, seed=5
        )
        return np.asarray(engine.generate(request).images[0].image, dtype=np.int16)

    assert np.abs(make(tiny_models(arch)) - make(lonely)).max() <= 2


def _tokenizer_with_an_extra_token(folder):
    from atelier.engine.tokenizer import clip_tokenizer

    tokenizer = clip_tokenizer("clip-l")
    tokenizer.add_tokens(["<oue-scooter>"])
    tokenizer.save_pretrained(str(folder))


def test_a_tokenizer_folder_beside_the_file_still_wins(single_files, tmp_path, empty_hub_cache):
    lonely = tmp_path / "own.safetensors"
    shutil.copy(single_files["sd15"], lonely)
    _tokenizer_with_an_extra_token(tmp_path / "own.tokenizer")
    assert len(load_model(lonely).pipeline.tokenizer) == 49409


def test_the_hugging_face_cache_still_wins_over_the_bundled_tokenizer(
    single_files, tmp_path, empty_hub_cache
):
    repo = empty_hub_cache / "models--openai--clip-vit-large-patch14"
    _tokenizer_with_an_extra_token(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    lonely = tmp_path / "cached.safetensors"
    shutil.copy(single_files["sd15"], lonely)
    assert len(load_model(lonely).pipeline.tokenizer) == 49409


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".pth"])
def test_pickle_checkpoints_are_refused_without_being_opened(tmp_path, monkeypatch, suffix):
    import torch

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must never be called on a user's file")

    monkeypatch.setattr(torch, "load", forbidden)
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x80\x04\x95 pickle payload")
    with pytest.raises(UnsafeFileError, match="arbitrary code"):
        load_model(path)
    with pytest.raises(UnsafeFileError):
        detect_architecture(path)


def test_folder_with_only_pickle_weights_is_refused(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_models("sd15"), folder)
    for weights in folder.rglob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UnsafeFileError, match="arbitrary code"):
        load_model(folder)


def test_corrupt_safetensors_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(AtelierError, match="not a valid .safetensors file"):
        detect_architecture(path)


def test_lora_file_is_not_mistaken_for_a_checkpoint(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, path)
    with pytest.raises(AtelierError, match="not a Stable Diffusion checkpoint"):
        detect_architecture(path)


def test_cache_is_keyed_by_model_and_dtype(tiny_models):
    import torch

    cache = ModelCache(max_models=3)
    first = cache.get(tiny_models("sd15"))
    assert cache.get(tiny_models("sd15")) is first
    half = cache.get(tiny_models("sd15"), dtype=torch.bfloat16)
    assert half is not first and half.pipeline.unet.dtype == torch.bfloat16
    assert cache.loads == 2


def test_loaded_models_on_the_cpu_stay_within_the_memory_budget(tiny_models):
    from atelier.engine.models import model_bytes

    probe = ModelCache(max_models=3)
    size = model_bytes(probe.get(tiny_models("sd15")))
    assert size > 0
    roomy = ModelCache(max_models=3, memory_budget=3 * size)
    for model in ("sd15", "sd15-inpaint", "sd15"):
        roomy.get(tiny_models(model))
    assert (roomy.loads, len(roomy.loaded_paths())) == (2, 2)  # both fit: switching back reads nothing
    tight = ModelCache(max_models=3, memory_budget=size + size // 2)
    for model in ("sd15", "sd15-inpaint", "sd15"):
        tight.get(tiny_models(model))
    # Only one fits: the other is dropped, the most recent one always stays.
    assert tight.loads == 3
    assert tight.loaded_paths() == [str(tiny_models("sd15").resolve())]


class _FakePipeline:
    """Stands in for a pipeline on a GPU this machine does not have: records where it is moved."""

    def __init__(self, megabytes: int) -> None:
        import torch

        self.components = {"unet": torch.nn.Linear(megabytes * 1024, 64, bias=False)}
        self.moves: list[str] = []

    def to(self, device: str) -> _FakePipeline:
        self.moves.append(device)
        return self


def test_a_model_switched_away_from_on_the_gpu_waits_in_ram_within_the_budget(tmp_path):
    from atelier.engine.models import LoadedModel

    def fake_load(path, *, device, dtype, **_options):
        return LoadedModel(
            path=path,
            name=path.name,
            architecture="sd15",
            pipeline=_FakePipeline(1),
            sha256="0" * 64,
            is_demo=False,
        )

    one_model = 1024 * 64 * 4  # bytes of one fake model's weights
    cache = ModelCache(max_models=1, memory_budget=one_model)
    cache._load = fake_load
    first = cache.get(tmp_path / "a", device="cuda:0")
    cache.get(tmp_path / "b", device="cuda:0")
    assert first.pipeline.moves == ["cpu"]  # moved to RAM, not dropped
    assert cache.in_ram() == [str((tmp_path / "a").resolve())]
    again = cache.get(tmp_path / "a", device="cuda:0")
    assert again is first and first.pipeline.moves == ["cpu", "cuda:0"]
    assert (cache.loads, cache.reuses) == (2, 1)  # switching back read nothing from disk
    # "b" went to RAM in turn; with room for one model only, nothing else is kept there.
    cache.get(tmp_path / "c", device="cuda:0")
    assert cache.in_ram() == [str((tmp_path / "a").resolve())]
    cache.get(tmp_path / "b", device="cuda:0")
    assert cache.loads == 4  # "b" was dropped from RAM to make room, so it is read again
