"""The security review's repros, each against a real server: nothing lost, nothing hangs, nobody else's data.

One test per finding, on SQLite and PostgreSQL where the database takes part in the answer.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import stat
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer

import httpx
import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, make_lora, running_worker, wait_for

from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"prompt": "a red bottle", "steps": 2, "width": 64, "height": 64, "seed": 7}
TINY_TRAINING = b"""
resolution = 64
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
train_batch_size = 2
network_dim = 4
network_alpha = 2.0
max_data_loader_n_workers = 0
seed = 1
num_repeats = 1
max_train_epochs = 1
"""


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)


def _serve(tmp_path, tiny_models, database_url=None, **overrides):
    config = fast_config(
        tmp_path / "data", database_url=database_url, **{"max_workers": 0, "port": 0, **overrides}
    )
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    return server, server.start()


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "orange").save(buffer, format="PNG")
    return buffer.getvalue()


def _training_zip(entries: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        default = {
            f"jacket/{i}.{ext}": (_png() if ext == "png" else b"a windbreaker")
            for i in range(2)
            for ext in ("png", "txt")
        }
        for name, data in (entries or default).items():
            archive.writestr(name, data)
    return buffer.getvalue()


# -- 1. data loss: a LoRA named like a checkpoint ------------------------------------------------------------


def test_a_lora_never_replaces_the_checkpoint_of_the_same_name(tmp_path, tiny_models):
    """(The name rule itself runs on SQLite and PostgreSQL in test_security.py; this is the whole story once.)"""
    from atelier.engine.convert import save_single_file

    checkpoint = save_single_file(tiny_models("sd15"), tmp_path / "windbreaker.safetensors", "sd15")
    lora = make_lora(tiny_models("sd15"), tmp_path / "lora" / "windbreaker.safetensors")
    server, url = _serve(tmp_path, tiny_models)
    try:
        with running_worker(server.studio), httpx.Client(base_url=url, timeout=120) as client:
            uploaded = client.put("/api/models/windbreaker.safetensors", content=checkpoint.read_bytes())
            assert uploaded.status_code == 201, uploaded.text
            sha = uploaded.json()["sha256"]
            # The same name as a LoRA: refused, with or without overwrite (names are unique across kinds).
            for query in ("", "?overwrite=true"):
                refused = client.put(f"/api/models/windbreaker.safetensors{query}", content=lora.read_bytes())
                assert refused.status_code == 409, refused.text
                assert refused.json()["field"] == "file"
            # Training from windbreaker.zip: the LoRA takes the next free name; the checkpoint stays.
            client.put("/api/training-data/windbreaker.toml", content=TINY_TRAINING)
            accepted = client.put("/api/training-data/windbreaker.zip", content=_training_zip())
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job"]["id"]
            done = wait_for(
                lambda: (job := client.get(f"/api/jobs/{job_id}").json())["finished_at"] and job, timeout=300
            )
            assert done["state"] == "succeeded", done["error"]
            assert done["result"]["model"]["name"] == "windbreaker-2"
            models = {(m["kind"], m["name"]): m for m in client.get("/api/models").json()["models"]}
            assert models[("checkpoint", "windbreaker")]["sha256"] == sha
            assert ("lora", "windbreaker-2") in models
            stored = server.studio.storage.local_path("models/windbreaker.safetensors")
            assert stored.read_bytes() == checkpoint.read_bytes()
    finally:
        server.stop()


def test_replacing_a_model_of_the_same_kind_needs_overwrite_and_an_admin(tmp_path, tiny_models):
    lora = make_lora(tiny_models("sd15"), tmp_path / "shoes.safetensors")
    server, url = _serve(tmp_path, tiny_models)
    admin = server.studio.keys.create("boss", role="admin")[1]
    user = server.studio.keys.create("alice")[1]
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            as_user = {"Authorization": f"Bearer {user}"}
            as_admin = {"Authorization": f"Bearer {admin}"}
            assert (
                client.put(
                    "/api/models/shoes.safetensors", content=lora.read_bytes(), headers=as_user
                ).status_code
                == 201
            )
            again = client.put("/api/models/shoes.safetensors", content=lora.read_bytes(), headers=as_user)
            assert again.status_code == 409 and "overwrite=true" in again.json()["detail"]
            forbidden = client.put(
                "/api/models/shoes.safetensors?overwrite=true", content=lora.read_bytes(), headers=as_user
            )
            assert forbidden.status_code == 403
            replaced = client.put(
                "/api/models/shoes.safetensors?overwrite=true", content=lora.read_bytes(), headers=as_admin
            )
            assert replaced.status_code == 201
            assert client.delete("/api/models/shoes?kind=lora", headers=as_user).status_code == 403
            assert client.delete("/api/models/shoes?kind=lora", headers=as_admin).status_code == 200
            assert not server.studio.storage.exists("models/shoes.safetensors")
    finally:
        server.stop()


# -- 2. a lone job whose worker dies -------------------------------------------------------------------------


def test_a_lone_job_whose_worker_is_killed_is_run_again_and_answered(
    tmp_path, tiny_models, database_url, monkeypatch
):
    """kill -9 of the only worker during a lone A1111 request: the server requeues the job itself, the
    supervisor starts a worker for it, and the waiting request gets its image."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    server, url = _serve(
        tmp_path,
        tiny_models,
        database_url,
        max_workers=1,
        lease_seconds=1.5,
        progress_seconds=0.1,
        request_timeout_seconds=240.0,
    )
    answer: dict = {}

    def request() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            response = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 80})
            answer["status"], answer["body"] = response.status_code, response.json()

    try:
        waiting = threading.Thread(target=request)
        waiting.start()
        running = wait_for(
            lambda: next(
                (job for job in server.studio.store.list(state="running") if job.progress_step), None
            ),
            timeout=120,
        )
        pid = server.supervisor.pid(running.worker_id)
        assert pid is not None
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        waiting.join(timeout=240)
        assert not waiting.is_alive(), "the A1111 request never answered"
        assert answer["status"] == 200, answer
        assert len(answer["body"]["images"]) == 1
        job = server.studio.store.get(running.id)
        assert (job.state, job.attempts) == ("succeeded", 2)
        assert time.monotonic() - killed_at < 200
    finally:
        server.stop()


def test_a_retry_goes_to_the_back_of_the_queue(tmp_path, database_url, clock):
    from atelier.service.job_store import SqlJobStore

    studio = Studio.open(fast_config(tmp_path / "data", database_url=database_url))
    store = SqlJobStore(studio.database, clock=clock)
    try:
        first = store.submit("generate", {"n": 1})
        clock.advance(1)
        second = store.submit("generate", {"n": 2})
        claimed = store.claim("crashing-worker", lease_seconds=1)
        assert claimed.id == first.id
        clock.advance(5)  # the worker died: its lease ran out
        assert store.requeue_expired() == 1
        # The job that met the crash waits behind the one that was already queued.
        assert store.claim("next-worker", lease_seconds=30).id == second.id
        assert store.queue_position(first.id) == 0
    finally:
        studio.close()


# -- 3. keys see and change only their own work --------------------------------------------------------------


def test_a_user_key_sees_and_stops_only_its_own_work(tmp_path, tiny_models, database_url):
    server, url = _serve(tmp_path, tiny_models, database_url)
    keys = server.studio.keys
    alice, bob = keys.create("alice")[1], keys.create("bob")[1]
    admin = keys.create("boss", role="admin")[1]

    def as_(key):
        return {"Authorization": f"Bearer {key}"}

    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/api/whoami", headers=as_(bob)).json() == {
                "name": "bob",
                "role": "user",
                "keys_required": True,
            }
            queued = client.post(
                "/api/generate", json={**SMALL, "prompt": "alice's secret product"}, headers=as_(alice)
            )
            job_id = queued.json()["id"]
            with running_worker(server.studio):
                wait_for(
                    lambda: (
                        client.get(f"/api/jobs/{job_id}", headers=as_(alice)).json()["state"] == "succeeded"
                    )
                )
            image_key = client.get(f"/api/jobs/{job_id}/results", headers=as_(alice)).json()["images"][0][
                "key"
            ]

            listed = client.get("/api/jobs", headers=as_(bob)).json()["jobs"]
            assert job_id not in {job["id"] for job in listed}
            assert "alice's secret product" not in json.dumps(listed)
            for path in (f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/results", f"/api/files/{image_key}"):
                assert client.get(path, headers=as_(bob)).status_code == 404, path
                assert client.get(path, headers=as_(alice)).status_code == 200, path
                assert client.get(path, headers=as_(admin)).status_code == 200, path
            assert client.post(f"/api/jobs/{job_id}/cancel", headers=as_(bob)).status_code == 404
            assert job_id in {job["id"] for job in client.get("/api/jobs", headers=as_(admin)).json()["jobs"]}

            # bob's interrupt stops bob's work only; a running job of alice's goes on.
            running = client.post("/api/generate", json={**SMALL, "steps": 200}, headers=as_(alice)).json()[
                "id"
            ]
            with running_worker(server.studio):
                wait_for(
                    lambda: (
                        client.get(f"/api/jobs/{running}", headers=as_(alice)).json()["state"] == "running"
                    )
                )
                assert client.post("/sdapi/v1/interrupt", headers=as_(bob)).status_code == 200
                assert client.get("/sdapi/v1/progress", headers=as_(bob)).json()["state"]["job"] == ""
                done = wait_for(
                    lambda: (
                        (job := client.get(f"/api/jobs/{running}", headers=as_(alice)).json())["finished_at"]
                        and job
                    ),
                    timeout=120,
                )
            assert done["state"] == "succeeded"

            # Studio-wide options are an admin's.
            assert (
                client.post(
                    "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, headers=as_(bob)
                ).status_code
                == 403
            )
            assert (
                client.post(
                    "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}, headers=as_(admin)
                ).status_code
                == 200
            )
    finally:
        server.stop()


# -- 4. SSRF through webhook_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1:6379/",
        "http://localhost:22/",
        "http://[::1]/",
        "http://0.0.0.0/",
        "http://2130706433/",  # 127.0.0.1 written as one decimal number
        "http://127.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://100.64.0.1/",
        "ftp://example.com/",
        "http://user:secret@example.com/",
    ],
)
def test_webhooks_to_private_addresses_are_refused_at_submission(tmp_path, tiny_models, target):
    server, url = _serve(tmp_path, tiny_models, webhook_allow_private=False)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = client.post("/api/generate", json={**SMALL, "webhook_url": target})
            assert response.status_code == 422, response.text
            assert response.json()["field"] == "webhook_url"
            assert server.studio.store.list() == []
    finally:
        server.stop()


def test_the_studios_own_interrupt_cannot_be_a_webhook(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models, webhook_allow_private=False)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            response = client.post(
                "/api/generate", json={**SMALL, "webhook_url": f"{url}/sdapi/v1/interrupt"}
            )
            assert response.status_code == 422
    finally:
        server.stop()


def test_a_host_name_resolving_to_a_private_address_is_refused_when_delivering(tmp_path, tiny_models):
    """The address is checked when the webhook is sent, so a name cannot be pointed elsewhere afterwards."""
    private_name = socket.gethostname()  # resolves to this machine (127.0.x.x or its private address)
    assert not all(
        __import__("ipaddress").ip_address(info[4][0]).is_global
        for info in socket.getaddrinfo(private_name, 80)
    )
    server, url = _serve(tmp_path, tiny_models, webhook_allow_private=False)
    try:
        with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
            job_id = client.post(
                "/api/generate", json={**SMALL, "webhook_url": f"http://{private_name}:9/hook"}
            ).json()["id"]
            delivery = wait_for(
                lambda: (found := server.studio.webhooks.get(job_id)) and found.state != "waiting" and found,
                timeout=60,
            )
        assert delivery.state == "failed" and delivery.attempts == 1  # refused once, not retried
        assert "private, loopback or link-local" in delivery.last_error
    finally:
        server.stop()


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(302 if self.path == "/redirect" else 200)
        self.send_header("Location", "http://169.254.169.254/")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_are_signed_as_standard_webhooks_and_redirects_are_not_followed(tmp_path, tiny_models):
    from standardwebhooks import Webhook

    _Receiver.received = []
    receiver = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    server, url = _serve(tmp_path, tiny_models, webhook_allow_private=True, webhook_attempts=1)
    try:
        with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
            base = f"http://127.0.0.1:{receiver.server_port}"
            signed = client.post("/api/generate", json={**SMALL, "webhook_url": f"{base}/hook"}).json()["id"]
            redirected = client.post(
                "/api/generate", json={**SMALL, "webhook_url": f"{base}/redirect"}
            ).json()["id"]
            wait_for(lambda: len(_Receiver.received) == 2, timeout=60)
            secret = client.get("/api/webhooks/secret").json()["secret"]
        headers, body = next(item for item in _Receiver.received if signed.encode() in item[1])
        payload = Webhook(secret).verify(body, {key.lower(): value for key, value in headers.items()})
        assert payload["job"]["id"] == signed and headers["webhook-id"] == f"msg_{signed}"
        tampered = body.replace(b"succeeded", b"failed!!!")
        with pytest.raises(Exception):  # noqa: B017 - the library's own verification error
            Webhook(secret).verify(tampered, {key.lower(): value for key, value in headers.items()})
        delivery = wait_for(
            lambda: (found := server.studio.webhooks.get(redirected)).state != "waiting" and found
        )
        assert (delivery.state, delivery.last_status) == ("failed", 302)
        assert len(_Receiver.received) == 2  # the redirect to the metadata address was not followed
    finally:
        receiver.shutdown()
        server.stop()


# -- 5. the keyless loopback studio and the browser ------------------------------------------------------------


def test_dns_rebinding_and_cross_site_requests_are_refused(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            rebound = client.get("/api/jobs", headers={"Host": "evil.example"})
            assert rebound.status_code == 400 and rebound.json()["field"] == "host"
            assert client.get("/api/jobs").status_code == 200
            assert client.get("/api/jobs", headers={"Host": "localhost"}).status_code == 200
            for headers in (
                {"Sec-Fetch-Site": "cross-site"},
                {"Origin": "https://evil.example"},
                {"Origin": "null"},
            ):
                refused = client.post("/sdapi/v1/interrupt", headers=headers)
                assert refused.status_code == 403 and refused.json()["field"] == "origin", headers
            # The studio's own page (same origin) and scripts (no browser headers) still work.
            same = {"Sec-Fetch-Site": "same-origin", "Origin": url}
            assert client.post("/sdapi/v1/interrupt", headers=same).status_code == 200
            assert client.post("/sdapi/v1/interrupt").status_code == 200
    finally:
        server.stop()


def test_allowed_hosts_are_configurable(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models, allowed_hosts=("studio.shop.internal",))
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/api/jobs", headers={"Host": "studio.shop.internal:7860"}).status_code == 200
            assert client.get("/api/jobs", headers={"Host": "evil.example"}).status_code == 400
    finally:
        server.stop()


# -- smaller findings -----------------------------------------------------------------------------------------


def _link_entry(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def _bad_zips() -> dict[str, bytes]:
    def zipped(write) -> bytes:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            write(archive)
        return buffer.getvalue()

    good = _training_zip()
    crc = bytearray(good)
    position = crc.find(b"IEND")  # inside the first PNG's data: its CRC no longer matches
    crc[position] ^= 0xFF
    return {
        "zip-slip": zipped(lambda a: (a.writestr("../evil.png", _png()), a.writestr("ok.png", _png()))),
        "absolute": zipped(lambda a: a.writestr("/etc/cron.d/evil.png", _png())),
        "symlink": zipped(
            lambda a: (
                a.writestr(_link_entry("link.png", "/etc/passwd"), "/etc/passwd"),
                a.writestr("ok.png", _png()),
            )
        ),
        "bomb": zipped(
            lambda a: (a.writestr("ok.png", _png()), a.writestr("big.txt", b"\0" * (300 * 1024**2)))
        ),
        "entries": zipped(lambda a: [a.writestr(f"{i}.txt", b"") for i in range(25_000)]),
        "crc": bytes(crc),
        "no-images": zipped(lambda a: a.writestr("notes.txt", "captions only")),
    }


def test_bad_training_zips_are_refused_at_the_door(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models, max_upload_bytes=64 * 1024**2)
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            for name, data in _bad_zips().items():
                response = client.put(f"/api/training-data/{name}.zip", content=data)
                assert response.status_code in (400, 422), (name, response.text)
                assert not server.studio.storage.exists(f"training-data/{name}.zip"), name
            assert server.studio.store.list() == []
            # A dataset_config that points out of the archive, given in the .toml beside it.
            assert (
                client.put(
                    "/api/training-data/passwd.toml", content=b'dataset_config = "/etc/passwd"\n'
                ).status_code
                == 201
            )
            response = client.put("/api/training-data/passwd.zip", content=_training_zip())
            assert response.status_code == 400 and response.json()["field"] == "dataset_config"
    finally:
        server.stop()


def test_a_bad_zip_dropped_in_the_bucket_is_a_failed_upload_with_its_reason(tmp_path, tiny_models):
    from atelier.service.watcher import BucketWatcher

    studio = Studio.open(fast_config(tmp_path / "data", settle_seconds=0))
    try:
        install_checkpoint(studio, tiny_models("sd15"), "tiny-sd15")
        studio.storage.put_bytes("training-data/slip.zip", _bad_zips()["zip-slip"])
        studio.storage.put_bytes("training-data/passwd.toml", b'dataset_config = "/etc/passwd"\n')
        studio.storage.put_bytes("training-data/passwd.zip", _training_zip())
        report = BucketWatcher(studio).scan()
        assert set(report.refused) == {"training-data/slip.zip", "training-data/passwd.zip"}
        assert "outside" in report.refused["training-data/slip.zip"]
        failed = {entry.key: entry for entry in studio.ledger.list(bucket="training-data", state="failed")}
        assert set(failed) == {"training-data/slip.zip", "training-data/passwd.zip"}
        assert studio.store.list() == []
    finally:
        studio.close()


def test_a_truncated_model_is_refused_at_upload(tmp_path, tiny_models):
    lora = make_lora(tiny_models("sd15"), tmp_path / "lora.safetensors").read_bytes()
    server, url = _serve(tmp_path, tiny_models)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for name, data in (("cut", lora[:-1000]), ("padded", lora + b"\0" * 64)):
                response = client.put(f"/api/models/{name}.safetensors", content=data)
                assert response.status_code == 422, response.text
                assert response.json()["detail"].startswith(
                    f"{name}.safetensors is a damaged .safetensors file"
                )
            assert [m["name"] for m in client.get("/api/models?kind=lora").json()["models"]] == []
    finally:
        server.stop()


def test_a_failed_training_run_leaves_no_cache_behind(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models)
    try:
        with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
            # Valid at the door (an archive with a .png), impossible in the worker: the "photo" is not an image.
            client.put("/api/training-data/broken.toml", content=TINY_TRAINING)
            broken = _training_zip({"jacket/0.png": b"this is not a png", "jacket/0.txt": b"a jacket"})
            job = client.put("/api/training-data/broken.zip", content=broken).json()["job"]
            done = wait_for(
                lambda: (found := client.get(f"/api/jobs/{job['id']}").json())["finished_at"] and found,
                timeout=120,
            )
        assert done["state"] == "failed" and done["attempts"] == 1
        assert not (server.config.cache_dir / "train" / job["id"]).exists()
    finally:
        server.stop()


def test_error_messages_name_no_server_paths(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            junk = client.put("/api/models/junk.safetensors", content=b"\0" * 128)
            flags = client.get("/sdapi/v1/cmd-flags").json()
        text = junk.text + json.dumps(flags)
        assert "junk.safetensors" in junk.json()["detail"]
        for secret in (str(tmp_path), str(server.config.cache_dir), ".tmp-"):
            assert secret not in text
    finally:
        server.stop()


def test_a_job_error_names_no_server_paths(tmp_path, tiny_models, monkeypatch):
    from atelier.engine.generate import Engine

    server, url = _serve(tmp_path, tiny_models)
    weights = server.config.data_dir / "models" / "tiny-sd15" / "unet" / "diffusion_pytorch_model.safetensors"

    def unreadable(self, request, **kwargs):
        raise PermissionError(13, "Permission denied", str(weights))

    monkeypatch.setattr(Engine, "generate", unreadable)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            job_id = client.post("/api/generate", json=SMALL).json()["id"]
            with running_worker(server.studio):
                done = wait_for(
                    lambda: (job := client.get(f"/api/jobs/{job_id}").json())["finished_at"] and job
                )
        assert done["state"] == "failed"
        assert (
            done["error"]
            == "PermissionError: [Errno 13] Permission denied: 'diffusion_pytorch_model.safetensors'"
        )
    finally:
        server.stop()


def test_error_bodies_are_what_the_schema_says(tmp_path, tiny_models):
    server, url = _serve(tmp_path, tiny_models)
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            spec = client.get("/openapi.json").json()
            body = client.post("/api/generate", json={"prompt": 3}).json()
        schema = spec["components"]["schemas"]["ErrorBody"]
        assert set(body) == set(schema["properties"]) and isinstance(body["detail"], str)
        for path, methods in spec["paths"].items():
            for method, operation in methods.items():
                assert {"400", "404", "422"} <= set(operation["responses"]), (method, path)
                assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }
    finally:
        server.stop()


def test_base64_results_stay_readable(tmp_path, tiny_models):
    """A sanity check that the A1111 answer is unchanged by the gate: an image comes back as base64 PNG."""
    server, url = _serve(tmp_path, tiny_models)
    try:
        with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
            answer = client.post("/sdapi/v1/txt2img", json=SMALL).json()
        assert Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).size == (64, 64)
    finally:
        server.stop()
