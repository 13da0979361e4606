"""Bucket watchers: models land in models/ and become usable; training zips start jobs; exactly once."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest
from studio_helpers import fast_config, install_checkpoint, make_lora

from atelier.service.studio import Studio
from atelier.service.submit import prepare_generation
from atelier.service.watcher import BucketWatcher


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def lora_file(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return make_lora(tiny_models("sd15"), tmp_path_factory.mktemp("lora") / "shoes.safetensors")


@pytest.fixture
def studio(tmp_path, database_url, tiny_models):
    studio = Studio.open(fast_config(tmp_path / "data", database_url=database_url, settle_seconds=2.0))
    install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
    yield studio
    studio.close()


def watcher_for(studio, clock=None):
    return BucketWatcher(studio, monotonic=clock or FakeTime())


def settled_scan(watcher, clock):
    watcher.scan()
    clock.now += 5
    return watcher.scan()


def test_a_lora_dropped_into_models_is_registered_and_usable_by_name(studio, lora_file):
    clock = FakeTime()
    watcher = watcher_for(studio, clock)
    studio.storage.put_file("models/summer/shoes.safetensors", lora_file)
    first = watcher.scan()
    assert "models/summer/shoes.safetensors" in first.waiting
    assert [record.name for record in studio.registry.list("lora")] == []
    clock.now += 5
    report = watcher.scan()
    assert report.registered == ["shoes"]
    record = studio.registry.get("shoes", "lora")
    assert (record.kind, record.family, record.source) == ("lora", "sd15", "upload")
    prepared = prepare_generation(
        studio, {"prompt": "a shoe <lora:shoes:0.7>", "steps": 2, "width": 64, "height": 64}
    )
    assert [lora.name for lora in prepared.loras] == ["shoes"]


def test_files_still_being_written_are_not_picked_up(studio, lora_file):
    clock = FakeTime()
    watcher = watcher_for(studio, clock)
    local = studio.storage.local_path("models/growing.safetensors")
    data = lora_file.read_bytes()
    local.write_bytes(data[: len(data) // 2])
    (local.parent / "other.safetensors.part").write_bytes(data)
    (local.parent / ".tmp-upload.safetensors").write_bytes(data)
    watcher.scan()
    clock.now += 1
    local.write_bytes(data)  # the copy finished: size and modification time changed
    clock.now += 1.5
    report = watcher.scan()
    assert report.registered == [] and report.refused == {}
    clock.now += 5
    report = watcher.scan()
    assert report.registered == ["growing"]
    assert [record.name for record in studio.registry.list("lora")] == ["growing"]


def test_each_object_version_is_processed_once_across_watchers_and_restarts(studio, lora_file):
    studio.storage.put_file("models/shoes.safetensors", lora_file)
    clock = FakeTime()
    first, second = watcher_for(studio, clock), watcher_for(studio, clock)
    first.scan(), second.scan()
    clock.now += 5
    reports = [first.scan(), second.scan()]
    assert sorted(len(report.registered) for report in reports) == [0, 1]
    restarted = watcher_for(studio)
    assert settled_scan(restarted, restarted._monotonic).registered == []
    entries = studio.ledger.list(bucket="models")
    assert [(entry.key, entry.state) for entry in entries if entry.key.endswith("shoes.safetensors")] == [
        ("models/shoes.safetensors", "done")
    ]
    # A new upload under the same key is a new version: processed again.
    studio.storage.put_file("models/shoes.safetensors", lora_file)
    assert settled_scan(restarted, restarted._monotonic).registered == ["shoes"]


def test_pickles_and_broken_files_are_refused_without_loading(studio, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    studio.storage.put_bytes("models/evil.ckpt", pickle.dumps(Exploit()))
    studio.storage.put_bytes("models/broken.safetensors", b"\x00" * 64)
    clock = FakeTime()
    report = settled_scan(watcher_for(studio, clock), clock)
    assert "pickle" in report.refused["models/evil.ckpt"]
    assert "models/broken.safetensors" in report.refused
    assert not marker.exists()
    assert [record.name for record in studio.registry.list()] == ["tiny-sd15"]
    failed = {entry.key for entry in studio.ledger.list(bucket="models", state="failed")}
    assert failed == {"models/evil.ckpt", "models/broken.safetensors"}


def test_deleted_models_are_unregistered(studio, lora_file):
    clock = FakeTime()
    watcher = watcher_for(studio, clock)
    studio.storage.put_file("models/shoes.safetensors", lora_file)
    settled_scan(watcher, clock)
    studio.storage.delete("models/shoes.safetensors")
    report = watcher.scan()
    assert report.unregistered == ["shoes"]
    assert studio.registry.list("lora") == []
    assert [record.name for record in studio.registry.list()] == ["tiny-sd15"]


def _training_zip() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["red", "blue"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(f"sample/{index}.png", image.getvalue())
            archive.writestr(f"sample/{index}.txt", f"a {colour} shoe")
    return buffer.getvalue()


def test_a_training_zip_starts_a_job_with_its_toml(studio):
    studio.storage.put_bytes(
        "training-data/shoes.toml", b'base = "tiny-sd15"\nnetwork_dim = 2\nmax_train_steps = 2\n'
    )
    studio.storage.put_bytes("training-data/shoes.zip", _training_zip())
    studio.storage.put_bytes("training-data/bags.zip", _training_zip())
    clock = FakeTime()
    report = settled_scan(watcher_for(studio, clock), clock)
    assert len(report.started_jobs) == 2
    jobs = {job.payload["training_data"]: job for job in studio.store.list(kind="train")}
    shoes = jobs["training-data/shoes.zip"].payload
    assert shoes["config"] == {"base": "tiny-sd15", "network_dim": 2, "max_train_steps": 2}
    assert shoes["config_key"] == "training-data/shoes.toml"
    assert (shoes["base"], shoes["output_name"], shoes["preset"]) == ("tiny-sd15", "shoes", "sd15-lora")
    bags = jobs["training-data/bags.zip"].payload
    assert (bags["config"], bags["base"], bags["output_name"]) == ({}, "tiny-sd15", "bags")


def test_a_bad_toml_is_reported_and_starts_nothing(studio):
    studio.storage.put_bytes("training-data/shoes.toml", b"netwrok_dim = 2\n")
    studio.storage.put_bytes("training-data/shoes.zip", _training_zip())
    clock = FakeTime()
    report = settled_scan(watcher_for(studio, clock), clock)
    assert "network_dim" in report.refused["training-data/shoes.zip"]
    assert studio.store.list(kind="train") == []
    assert studio.ledger.list(bucket="training-data")[0].state == "failed"


def test_watching_an_s3_bucket(tmp_path, s3_endpoint, s3_client, tiny_models, lora_file):
    s3_client.create_bucket(Bucket="studio-watch")
    config = fast_config(
        tmp_path / "data", storage_url="s3://studio-watch/atelier", storage_endpoint_url=s3_endpoint
    )
    studio = Studio.open(config)
    try:
        install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
        s3_client.upload_file(str(lora_file), "studio-watch", "atelier/models/shoes.safetensors")
        clock = FakeTime()
        report = settled_scan(watcher_for(studio, clock), clock)
        assert report.registered == ["shoes"]
        assert studio.registry.get("shoes", "lora").storage_key == "models/shoes.safetensors"
        assert studio.registry.get("tiny-sd15").source == "upload"
    finally:
        studio.close()


def test_a_diffusers_lora_folder_is_registered_under_the_folder_name(studio, lora_file):
    """diffusers' DreamBooth scripts and AutoTrain write <name>/pytorch_lora_weights.safetensors."""
    clock = FakeTime()
    watcher = watcher_for(studio, clock)
    studio.storage.put_file("models/oue-scooter/pytorch_lora_weights.safetensors", lora_file)
    report = settled_scan(watcher, clock)
    assert report.registered == ["oue-scooter"]
    record = studio.registry.get("oue-scooter", "lora")
    assert record.storage_key == "models/oue-scooter/pytorch_lora_weights.safetensors"
    prepared = prepare_generation(
        studio, {"prompt": "a scooter <lora:oue-scooter:0.8>", "steps": 2, "width": 64, "height": 64}
    )
    assert [lora.name for lora in prepared.loras] == ["oue-scooter"]
