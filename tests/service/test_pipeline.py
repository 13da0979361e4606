"""The seed's event pipeline end to end: files land in the buckets, the studio reacts, nobody clicks anything."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest
from PIL import Image
from studio_helpers import TINY_TRAINING, fast_config, install_checkpoint, make_lora, running_worker, wait_for

from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture
def served(tmp_path, tiny_models):
    import torch

    torch.set_num_threads(1)
    config = fast_config(tmp_path / "data", max_workers=0, port=0)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=120) as client:
        yield server, client
    server.stop()


def _model_names(client: httpx.Client, kind: str) -> set[str]:
    return {model["name"] for model in client.get("/api/models", params={"kind": kind}).json()["models"]}


def _generate(client: httpx.Client, prompt: str) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_lora_copied_into_the_models_folder_is_usable_within_seconds(served, tiny_models, tmp_path):
    server, client = served
    lora = make_lora(tiny_models("sd15"), tmp_path / "raincoat.safetensors", seed=5)
    target = server.studio.storage.local_path("models/loras/raincoat.safetensors")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(lora.read_bytes())
    wait_for(lambda: "raincoat" in _model_names(client, "lora"), timeout=10)
    answer = _generate(client, "a raincoat <lora:raincoat:0.9>")
    assert "Lora hashes: " in json.loads(answer["info"])["infotexts"][0]


def _training_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["yellow", "orange", "gold", "khaki"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(f"windbreaker/{index}.png", image.getvalue())
            archive.writestr(f"windbreaker/{index}.txt", f"a {colour} windbreaker")
    return buffer.getvalue()


def test_a_training_zip_becomes_a_lora_that_is_usable_by_name(served):
    pytest.importorskip("atelier.training.recipe")
    server, client = served
    storage = server.studio.storage
    storage.put_bytes("training-data/windbreaker.toml", TINY_TRAINING)
    storage.put_bytes("training-data/windbreaker.zip", _training_zip())
    job = wait_for(lambda: client.get("/api/jobs", params={"kind": "train"}).json()["jobs"], timeout=15)[0]
    done = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job['id']}").json())["finished_at"] and found, timeout=240
    )
    assert done["state"] == "succeeded", done["error"]
    assert storage.exists("models/windbreaker.safetensors")
    models = {
        model["name"]: model for model in client.get("/api/models", params={"kind": "lora"}).json()["models"]
    }
    assert models["windbreaker"]["source"] == "training"
    assert models["windbreaker"]["details"]["base_model"] == "tiny-sd15"
    results = client.get(f"/api/jobs/{job['id']}/results").json()
    assert results["model"]["name"] == "windbreaker"
    answer = _generate(client, "a yellow windbreaker <lora:windbreaker:1>")
    assert len(answer["images"]) == 1
    # The watcher saw the new file too, but the ledger says training already registered it.
    entries = server.studio.ledger.list(bucket="models")
    assert [entry.key for entry in entries].count("models/windbreaker.safetensors") == 1
    # Training cleans up after itself: the worker's run folder is gone.
    assert not (server.config.cache_dir / "train" / job["id"]).exists()


def test_a_studio_spread_over_machines_on_postgresql_and_s3(
    tmp_path, postgres_url, s3_endpoint, s3_client, tiny_models
):
    """API and worker share only the database and the bucket; each has its own local folder, as on two machines."""
    s3_client.create_bucket(Bucket="studio-cluster")
    shared = {
        "database_url": postgres_url,
        "storage_url": "s3://studio-cluster/atelier",
        "storage_endpoint_url": s3_endpoint,
    }
    api_config = fast_config(tmp_path / "api-machine", max_workers=0, port=0, **shared)
    setup = Studio.open(api_config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(api_config, log_level="warning")
    url = server.start()
    worker_studio = Studio.open(fast_config(tmp_path / "gpu-machine", **shared))
    try:
        with running_worker(worker_studio), httpx.Client(base_url=url, timeout=120) as client:
            lora = make_lora(tiny_models("sd15"), tmp_path / "scarf.safetensors", seed=6)
            uploaded = client.put("/api/models/scarf.safetensors", content=lora.read_bytes())
            assert uploaded.status_code == 201, uploaded.text
            answer = _generate(client, "a scarf <lora:scarf:1>")
            job_id = json.loads(answer["info"])["job_id"]
        keys = s3_client.list_objects_v2(Bucket="studio-cluster", Prefix=f"atelier/outputs/{job_id}/")[
            "Contents"
        ]
        assert len([item for item in keys if item["Key"].endswith(".png")]) == 1
        assert (worker_studio.config.cache_dir / "loras" / "scarf.safetensors").is_file()
        assert not (api_config.cache_dir / "loras").exists()
    finally:
        server.stop()
        worker_studio.close()


def test_a_generation_submitted_while_a_lora_trains_finishes_first(tmp_path, tiny_models):
    """``serve`` as shipped: real worker processes, one generation lane (kept warm) and one training lane."""
    pytest.importorskip("atelier.training.recipe")
    config = fast_config(tmp_path / "data", port=0, min_workers=1, max_workers=1, max_train_workers=1)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            wait_for(lambda: client.get("/api/health/ready").status_code == 200, timeout=120)
            storage = server.studio.storage
            long_run = TINY_TRAINING.replace(b"max_train_epochs = 1", b"max_train_epochs = 400")
            storage.put_bytes("training-data/parka.toml", long_run)
            storage.put_bytes("training-data/parka.zip", _training_zip())
            run = wait_for(
                lambda: client.get("/api/jobs", params={"kind": "train"}).json()["jobs"], timeout=30
            )[0]
            wait_for(lambda: client.get(f"/api/jobs/{run['id']}").json()["step"], timeout=120)
            picture = client.post("/api/generate", json={**SMALL, "prompt": "a parka"}).json()
            done = wait_for(
                lambda: (found := client.get(f"/api/jobs/{picture['id']}").json())["finished_at"] and found,
                timeout=60,
            )
            assert done["state"] == "succeeded", done["error"]
            training = client.get(f"/api/jobs/{run['id']}").json()
            assert training["state"] == "running", training  # still training: the picture did not wait for it
            assert training["label"]["name"] == "parka"
            client.post(f"/api/jobs/{run['id']}/cancel")
    finally:
        server.stop()


def test_each_saved_epoch_is_a_lora_and_the_runs_warnings_are_shown(served):
    pytest.importorskip("atelier.training.recipe")
    server, client = served
    settings = TINY_TRAINING.replace(
        b"max_train_epochs = 1", b"max_train_epochs = 2\nsave_every_n_epochs = 1"
    )
    # 64 px pictures for a 128 px run: they are upscaled, which the run warns about.
    settings = settings.replace(b"resolution = 64", b"resolution = 128")
    storage = server.studio.storage
    storage.put_bytes("training-data/anorak.toml", settings)
    storage.put_bytes("training-data/anorak.zip", _training_zip())
    job = wait_for(lambda: client.get("/api/jobs", params={"kind": "train"}).json()["jobs"], timeout=15)[0]
    done = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job['id']}").json())["finished_at"] and found, timeout=240
    )
    assert done["state"] == "succeeded", done["error"]
    assert any("upscaled" in warning for warning in done["info"]["warnings"]), done["info"]
    results = client.get(f"/api/jobs/{job['id']}/results").json()
    assert [epoch["name"] for epoch in results["epochs"]] == ["anorak-000001"]
    assert {"anorak", "anorak-000001"} <= _model_names(client, "lora")
    answer = _generate(client, "an anorak <lora:anorak-000001:1>")
    assert "anorak-000001" in json.loads(answer["info"])["infotexts"][0]


def test_a_canceled_run_resumes_where_it_stopped_and_a_failed_job_can_be_retried(served):
    pytest.importorskip("atelier.training.recipe")
    server, client = served
    storage = server.studio.storage
    storage.put_bytes(
        "training-data/fleece.toml", TINY_TRAINING.replace(b"max_train_epochs = 1", b"max_train_epochs = 40")
    )
    storage.put_bytes("training-data/fleece.zip", _training_zip())
    job = wait_for(lambda: client.get("/api/jobs", params={"kind": "train"}).json()["jobs"], timeout=15)[0]
    wait_for(lambda: (client.get(f"/api/jobs/{job['id']}").json()["step"] or 0) >= 2, timeout=120)
    client.post(f"/api/jobs/{job['id']}/cancel")
    stopped = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job['id']}").json())["state"] == "canceled" and found,
        timeout=60,
    )
    state_dir = server.config.cache_dir / "train" / job["id"] / "run"
    assert state_dir.is_dir()  # kept, so the run can go on
    assert client.post(f"/api/jobs/{job['id']}/retry").status_code == 202
    assert stopped["step"] >= 2
    done = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job['id']}").json())["finished_at"] and found, timeout=240
    )
    assert done["state"] == "succeeded", done["error"]
    assert done["info"]["resumed"] is True  # went on from the saved state, not from step 0
    assert done["attempts"] == 1
    conflict = client.post(f"/api/jobs/{job['id']}/retry")
    assert conflict.status_code == 409 and conflict.json()["field"] == "job_id"


def _uncaptioned_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["yellow", "orange", "gold", "khaki"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(
                f"1_oue jacket/{index}.png", image.getvalue()
            )  # kohya's folder: class tokens only
    return buffer.getvalue()


def test_studio_training_captions_images_that_have_none(served, tiny_captioner):
    """The Training tab's "describe images without a caption": the studio's captioning model writes them."""
    import shutil

    server, client = served
    storage = server.studio.storage
    toml = TINY_TRAINING + b'caption_missing = "clip"\n'
    # Without a captioning model the upload is refused at once, naming the option.
    refused = client.put("/api/training-data/jacket.toml", content=toml)
    if refused.status_code < 400:  # the TOML alone is stored; the zip upload checks it
        refused = client.put("/api/training-data/jacket.zip", content=_uncaptioned_zip())
    assert (
        refused.status_code == 404
        and "caption_missing" in refused.text
        and "models/captioning" in refused.text
    )

    shutil.copytree(tiny_captioner, storage.local_path("models/captioning/tiny-blip"))
    assert client.put("/api/training-data/jacket.toml", content=toml).status_code < 300
    queued = client.put("/api/training-data/jacket.zip", content=_uncaptioned_zip())
    assert queued.status_code < 300, queued.text
    job_id = queued.json()["job"]["id"] if "job" in queued.json() else queued.json()["id"]
    done = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job_id}").json())["finished_at"] and found, timeout=240
    )
    assert done["state"] == "succeeded", done["error"]
    summary = json.loads(storage.get_bytes(f"outputs/{job_id}/training.json"))
    tags = summary["summary"]["dataset"]["tag_frequency"]["1_oue jacket"]
    # Every image got a caption: the class tokens (kohya counts comma-separated tags), then the model's words.
    assert tags.pop("oue jacket") == 4 and sum(tags.values()) >= 4
