"""The native HTTP API on a real server (uvicorn on a loopback port) with a worker behind it."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, make_lora, png_base64, running_worker, wait_for

from atelier.errors import AtelierError
from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"prompt": "a red bottle", "steps": 2, "width": 64, "height": 64, "seed": 7}


def start_server(data_dir, tiny_models, **overrides):
    config = fast_config(data_dir, max_workers=0, port=0, **overrides)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    return server, server.start()


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    server, url = start_server(
        tmp_path_factory.mktemp("api") / "data", tiny_models, max_request_bytes=300_000
    )
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
        yield server, client
    server.stop()


@pytest.fixture
def client(served):
    return served[1]


def finished(client, job_id):
    return wait_for(lambda: (job := client.get(f"/api/jobs/{job_id}").json())["finished_at"] and job)


def test_generate_returns_202_and_the_job_can_be_followed_to_its_images(client):
    response = client.post("/api/generate", json=SMALL)
    assert response.status_code == 202
    accepted = response.json()
    assert accepted["state"] == "queued"
    assert accepted["links"]["events"] == f"/api/jobs/{accepted['id']}/events"
    job = finished(client, accepted["id"])
    assert job["state"] == "succeeded"
    assert job["progress"] == 1.0
    results = client.get(f"/api/jobs/{job['id']}/results").json()
    assert [image["seed"] for image in results["images"]] == [7]
    png = client.get(results["images"][0]["url"])
    assert png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert "Seed: 7" in image.info["parameters"]
    sidecar = client.get(results["images"][0]["sidecar_url"]).json()
    assert sidecar["job_id"] == job["id"]


def test_progress_streams_as_server_sent_events(client):
    job_id = client.post("/api/generate", json={**SMALL, "steps": 30}).json()["id"]
    events = []
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    assert events[-1][1]["state"] == "succeeded"
    assert kinds.count("progress") >= 1
    steps = [data["step"] for kind, data in events if kind == "progress" and data["step"] is not None]
    assert steps == sorted(steps)


def test_jobs_can_be_listed_and_canceled(client):
    job_id = client.post("/api/generate", json={**SMALL, "steps": 400}).json()["id"]
    wait_for(lambda: (client.get(f"/api/jobs/{job_id}").json()["step"] or 0) >= 1)
    assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    assert finished(client, job_id)["state"] == "canceled"
    listed = client.get("/api/jobs", params={"state": "canceled"}).json()["jobs"]
    assert job_id in [job["id"] for job in listed]


def _image(color: str, size: tuple[int, int] = (64, 64)) -> str:
    return png_base64(Image.new("RGB", size, color))


BAD_REQUESTS = [
    ("malformed JSON", b'{"prompt": "a red bottle", "steps": ', "body", 422),
    ("not an object", [1, 2, 3], "body", 422),
    ("missing prompt", {"steps": 2}, "prompt", 422),
    ("wrong type", {**SMALL, "steps": "many"}, "steps", 422),
    ("zero steps", {**SMALL, "steps": 0}, "steps", 422),
    ("negative steps", {**SMALL, "steps": -3}, "steps", 422),
    ("width not a multiple of 8", {**SMALL, "width": 65}, "width", 422),
    ("huge size", {**SMALL, "width": 100_000}, "width", 422),
    ("huge batch", {**SMALL, "width": 4096, "height": 4096, "batch_size": 64}, "batch_size", 422),
    ("unknown field", {**SMALL, "stepz": 3}, "stepz", 422),
    ("unknown model", {**SMALL, "model": "nope"}, "model", 404),
    ("model escaping the folder", {**SMALL, "model": "../../etc/passwd"}, "model", 404),
    ("unknown sampler", {**SMALL, "sampler": "Nope 3000"}, "sampler", 422),
    ("unknown LoRA", {**SMALL, "prompt": "shoes <lora:missing:1>"}, "lora", 404),
    ("non-image base64", {**SMALL, "init_image": base64.b64encode(b"hello").decode()}, "init_image", 422),
    ("not base64", {**SMALL, "init_image": "%%%"}, "init_image", 422),
    (
        "mask size mismatch",
        {**SMALL, "init_image": _image("red"), "mask": _image("white", (32, 32))},
        "mask",
        422,
    ),
    (
        "bad inpainting fill",
        {**SMALL, "init_image": _image("red"), "inpainting_fill": 9},
        "inpainting_fill",
        422,
    ),
    ("bad webhook", {**SMALL, "webhook_url": "ftp://example.com"}, "webhook_url", 422),
    ("body over the limit", {**SMALL, "negative_prompt": "x" * 400_000}, "body", 413),
]


@pytest.mark.parametrize(
    ("case", "body", "field", "status"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS]
)
def test_bad_input_gets_a_4xx_naming_the_field(client, case, body, field, status):
    before = client.get("/api/jobs", params={"limit": 1000}).json()["jobs"]
    if isinstance(body, bytes):
        response = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/api/generate", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field
    assert error["detail"]
    assert len(client.get("/api/jobs", params={"limit": 1000}).json()["jobs"]) == len(before)


def test_unknown_job_ids_are_404(client):
    for path in ("/api/jobs/nope", "/api/jobs/nope/results", "/api/jobs/nope/events"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["field"] == "job_id"
    assert client.post("/api/jobs/nope/cancel").status_code == 404


def test_the_service_keeps_working_after_bad_input(client):
    client.post("/api/generate", content=b"{{{", headers={"content-type": "application/json"})
    client.post("/api/generate", json={**SMALL, "steps": 0})
    job_id = client.post("/api/generate", json=SMALL).json()["id"]
    assert finished(client, job_id)["state"] == "succeeded"


def test_models_can_be_uploaded_listed_and_used_by_name(client, tiny_models, tmp_path):
    import torch

    torch.set_num_threads(1)
    lora = make_lora(tiny_models("sd15"), tmp_path / "upload.safetensors", seed=3)
    response = client.put("/api/models/boots.safetensors", content=lora.read_bytes())
    assert response.status_code == 201, response.text
    assert (response.json()["kind"], response.json()["name"]) == ("lora", "boots")
    names = {(model["kind"], model["name"]) for model in client.get("/api/models").json()["models"]}
    assert ("lora", "boots") in names and ("checkpoint", "tiny-sd15") in names
    job_id = client.post("/api/generate", json={**SMALL, "prompt": "boots <lora:boots:0.8>"}).json()["id"]
    assert finished(client, job_id)["state"] == "succeeded"


@pytest.mark.parametrize(
    ("filename", "content", "status", "field"),
    [
        ("evil.ckpt", b"\x80\x04K\x01.", 400, "file"),
        ("junk.safetensors", b"\x00" * 100, 422, "file"),
        ("notes.txt", b"hello", 422, "file"),
        (".hidden.safetensors", b"\x00", 400, "file"),
    ],
)
def test_bad_model_uploads_are_refused(client, filename, content, status, field):
    response = client.put(f"/api/models/{filename}", content=content)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert filename.split(".")[0] not in {
        model["name"] for model in client.get("/api/models").json()["models"]
    }


def test_training_configs_are_checked_on_upload(client):
    response = client.put("/api/training-data/shoes.toml", content=b"netwrok_dim = 8\n")
    assert response.status_code == 422
    assert response.json()["field"] == "netwrok_dim"
    assert "network_dim" in response.json()["detail"]
    assert client.put("/api/training-data/shoes.toml", content=b"network_dim = 8\n").status_code == 201
    assert client.put("/api/training-data/shoes.zip", content=b"not a zip").json()["field"] == "file"


def test_a_zip_uploaded_with_start_false_is_not_trained_by_the_watcher(served):
    import io
    import zipfile

    server, client = served
    buffer = io.BytesIO()
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(image, format="PNG")
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", image.getvalue())  # a zip without images is refused at the door
        archive.writestr("a.txt", "oue car")
    response = client.put("/api/training-data/held.zip?start=false", content=buffer.getvalue())
    assert response.status_code == 201 and response.json()["job"] is None

    uploads = client.get("/api/uploads", params={"bucket": "training-data"}).json()["uploads"]
    assert any(entry["key"] == "training-data/held.zip" and entry["state"] == "done" for entry in uploads)
    assert not [
        job
        for job in client.get("/api/jobs", params={"kind": "train"}).json()["jobs"]
        if job.get("result") is None and "held.zip" in json.dumps(job)
    ]


class _Receiver(BaseHTTPRequestHandler):
    received: list = []
    failures_left = 0

    def do_POST(self):  # noqa: N802 - the http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        if cls.failures_left > 0:
            cls.failures_left -= 1
            self.send_response(503)
        else:
            cls.received.append((dict(self.headers), body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_are_called_once_with_retries(client):
    _Receiver.received, _Receiver.failures_left = [], 2
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_port}/hook"
        job_id = client.post("/api/generate", json={**SMALL, "webhook_url": url}).json()["id"]
        wait_for(lambda: _Receiver.received, timeout=30)
        headers, body = _Receiver.received[0]
        assert body["event"] == "job.finished"
        assert body["job"]["id"] == job_id
        assert body["job"]["state"] == "succeeded"
        assert body["job"]["result"]["seeds"] == [7]
        assert headers["X-Atelier-Job"] == job_id
        assert _Receiver.failures_left == 0
    finally:
        receiver.shutdown()
    assert len(_Receiver.received) == 1


def test_metrics_show_queue_depth_and_latency(client):
    job_id = client.post("/api/generate", json=SMALL).json()["id"]
    finished(client, job_id)
    text = client.get("/metrics").text
    assert 'atelier_queue_depth{kind="generate"}' in text
    assert 'atelier_jobs{kind="generate",state="succeeded"}' in text
    assert 'atelier_job_latency_seconds_count{kind="generate",state="succeeded"}' in text


def test_metrics_show_the_vram_of_workers_with_a_gpu_and_none_for_cpu_workers(served, monkeypatch):
    from types import SimpleNamespace

    from prometheus_client.parser import text_string_to_metric_families

    import atelier.engine as engine
    from atelier.service.worker import Worker

    server, client = served
    gib = 1024**3
    vram = {"used": 5 * gib, "total": 8 * gib, "free": 3 * gib, "peak": 4 * gib, "reserved": 4 * gib + 512}
    # A worker on a GPU (no GPU here: a stand-in). The worker reads vram_stats through the engine's public
    # surface, a lazily resolved name: patch it there.
    monkeypatch.setattr(engine, "vram_stats", lambda device: vram if device == "cuda:0" else None)
    gpu_worker = Worker(server.studio, worker_id="gpu-worker", kinds=["generate"])
    gpu_worker._engine = SimpleNamespace(device="cuda:0", models=None)
    gpu_worker.report("ready")
    try:
        samples = {
            (sample.name, sample.labels.get("worker")): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples
            if sample.name.startswith("atelier_worker_vram_")
        }
    finally:
        gpu_worker.report("stopped")
    assert samples == {
        (f"atelier_worker_vram_{key}_bytes", "gpu-worker"): value for key, value in vram.items()
    }
    # The fixture's own worker runs on the CPU: it is live, and has no VRAM to show.
    cpu_workers = [record for record in server.studio.workers.live() if record.id != "gpu-worker"]
    assert cpu_workers and all(record.vram is None for record in cpu_workers)


def test_hires_fix_through_the_native_api(client):
    body = {**SMALL, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.5}
    job = finished(client, client.post("/api/generate", json=body).json()["id"])
    assert job["state"] == "succeeded", job["error"]
    (image,) = job["result"]["images"]
    assert (image["width"], image["height"]) == (96, 96)
    assert "Hires upscale: 1.5" in image["infotext"] and "Hires upscaler: Lanczos" in image["infotext"]
    assert job["total"] == 2 + 1  # both passes count: 2 steps, then int(2 * 0.5)
    refused = client.post("/api/generate", json={**SMALL, "enable_hr": True, "hr_scale": 40})
    assert refused.status_code == 422 and refused.json()["field"] == "hr_scale"


def test_openapi_docs_are_served_with_their_scripts_from_this_machine(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        scripts = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html.text)
        assert scripts, page
        for script in scripts:
            # No CDN: an offline studio's docs page would be blank.
            assert script.startswith("/docs-assets/"), script
            asset = client.get(script)
            assert asset.status_code == 200 and len(asset.content) > 10_000, script
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/generate" in paths and "/sdapi/v1/txt2img" in paths


def test_readiness_waits_for_a_generation_worker_with_its_model_loaded(tiny_models, tmp_path):
    server, url = start_server(tmp_path / "data", tiny_models)
    try:
        with httpx.Client(base_url=url) as anonymous:
            assert anonymous.get("/api/health").status_code == 200  # alive at once...
            not_ready = anonymous.get("/api/health/ready")
            assert not_ready.status_code == 503 and not_ready.json()["ready"] is False  # ...ready later
            with running_worker(server.studio, kinds=["generate"]):
                ready = wait_for(lambda: (r := anonymous.get("/api/health/ready")).status_code == 200 and r)
                assert ready.json()["models_loaded"] == ["tiny-sd15"]
                for _ in range(2):
                    job = anonymous.post("/api/generate", json=SMALL).json()
                    wait_for(lambda job=job: anonymous.get(f"/api/jobs/{job['id']}").json()["finished_at"])
                metrics = anonymous.get("/metrics").text
            # Two generations, one model load: the warm worker never read the checkpoint again.
            assert "atelier_model_loads_total 1.0" in metrics
            assert 'atelier_workers_live{kind="generate"} 1.0' in metrics
            assert anonymous.get("/api/health/ready").status_code == 503  # its only worker stopped
    finally:
        server.stop()


def test_a_waiting_generation_says_what_it_waits_for_and_what_it_is(tiny_models, tmp_path):
    server, url = start_server(tmp_path / "data", tiny_models)
    store = server.studio.store
    try:
        with httpx.Client(base_url=url) as client:
            run = store.submit("train", {"output_name": "oue-windbreaker", "base": "tiny-sd15"}, priority=-1)
            store.claim("trainer", kinds=["train"])
            store.heartbeat(run.id, "trainer", step=10, total=100)
            waiting = store.submit("train", {"output_name": "oue-parka", "base": "tiny-sd15"}, priority=-1)
            shown = client.get(f"/api/jobs/{waiting.id}").json()
            assert shown["queue_position"] == 0
            reason = shown["waiting_for"]["reason"]
            assert reason.startswith("training oue-windbreaker, ~") and reason.endswith(" left"), reason
            assert shown["waiting_for"]["eta_seconds"] >= 0
            assert shown["label"] == {"name": "oue-parka", "base": "tiny-sd15"}
            picture = client.post("/api/generate", json={**SMALL, "prompt": "a parka " * 20}).json()
            shown = client.get(f"/api/jobs/{picture['id']}").json()
            # No generation worker runs here and the training run is in another lane: nothing ahead of it.
            assert (shown["queue_position"], shown["waiting_for"]) == (0, None)
            label = shown["label"]
            assert (
                label["model"] == "tiny-sd15" and label["prompt"].endswith("…") and len(label["prompt"]) == 80
            )
    finally:
        server.stop()


def test_api_keys_are_required_once_one_exists(tiny_models, tmp_path):
    server, url = start_server(tmp_path / "data", tiny_models)
    try:
        with httpx.Client(base_url=url) as anonymous:
            assert anonymous.get("/api/models").status_code == 200
            _key, secret = server.studio.keys.create("marketing")
            stored = server.studio.keys.list()[0]
            assert secret not in json.dumps(stored.to_dict()) and stored.key_hash != secret
            refused = wait_for(
                lambda: (r := anonymous.get("/api/models")).status_code == 401 and r, timeout=5
            )
            assert refused.json()["field"] == "authorization"
            assert anonymous.get("/api/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert (
                anonymous.get("/api/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
            )
            assert anonymous.get("/api/models", headers={"X-API-Key": secret}).status_code == 200
            assert anonymous.get("/sdapi/v1/sd-models", auth=("anyone", secret)).status_code == 200
            assert anonymous.get("/api/health").status_code == 200
            submitted = anonymous.post(
                "/api/generate", json=SMALL, headers={"Authorization": f"Bearer {secret}"}
            )
            assert submitted.json()["owner"] == "marketing"
            listed = anonymous.get("/api/jobs", headers={"Authorization": f"Bearer {secret}"}).json()["jobs"]
            assert {job["owner"] for job in listed} == {"marketing"}
            server.studio.keys.revoke("marketing")
            wait_for(lambda: anonymous.get("/api/models").status_code == 200, timeout=5)
    finally:
        server.stop()


def test_a_non_loopback_bind_needs_a_key_first(tiny_models, tmp_path):
    with pytest.raises(AtelierError) as refused:
        start_server(tmp_path / "data", tiny_models, host="0.0.0.0")
    assert refused.value.field == "host"


def test_serve_makes_the_buckets_and_the_demo_model_beside_a_controlnet(tmp_path, tiny_models):
    """A first start with only a ControlNet in models/controlnet/: the buckets appear and the demo is made."""
    import shutil

    from atelier.service.server import StudioServer

    data = tmp_path / "fresh"
    shutil.copytree(tiny_models("controlnet-sd15"), data / "models" / "controlnet" / "canny-tiny")
    server = StudioServer(fast_config(data, max_workers=0, port=0), log_level="warning")
    try:
        assert {path.name for path in data.iterdir() if path.is_dir()} >= {
            "training-data",
            "models",
            "outputs",
        }
        assert [record.name for record in server.studio.registry.list("checkpoint")] == ["atelier-demo-sd15"]
    finally:
        server.studio.close()


def test_a_fast_draft_is_labelled_in_its_picture_and_a_bad_fast_mode_is_refused(client):
    """The "fast" setting (engine/fast.py) through the native API: the picture's infotext says which shortcut
    made it, and an unknown one is a 4xx naming the field before anything is queued."""
    refused = client.post("/api/generate", json={**SMALL, "fast": "turbo"})
    assert refused.status_code in (400, 422)
    assert "fast" in refused.text
    job = finished(client, client.post("/api/generate", json={**SMALL, "fast": "deepcache"}).json()["id"])
    assert job["state"] == "succeeded"
    results = client.get(f"/api/jobs/{job['id']}/results").json()
    image = Image.open(io.BytesIO(client.get(results["images"][0]["url"]).content))
    assert "Fast: DeepCache N=3" in image.info["parameters"]
