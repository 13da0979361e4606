"""Licences, training rights and the audit trail on a real server set for commercial work, with API keys."""

from __future__ import annotations

import io
import json
import zipfile

import httpx
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from studio_helpers import TINY_TRAINING, fast_config, install_checkpoint, make_lora, running_worker, wait_for

from atelier.cli import main
from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 5}
CONSENTED = """
owner = "Acme Retail GmbH"
depicts_people = true

[[consent]]
person = "Jane Doe"
reference = "MR-2026-014"
date = 2026-02-02
"""
WITHOUT_CONSENT = 'owner = "Acme Retail GmbH"\ndepicts_people = true\n'


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(
        tmp_path_factory.mktemp("rights") / "data", max_workers=0, port=0, commercial_use=True
    )
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    install_checkpoint(setup, tiny_models("sd15"), "unlabelled")  # no licence anywhere: unknown
    _key, admin_key = setup.keys.create("legal", role="admin")
    _key, user_key = setup.keys.create("marketing")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    admin = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {admin_key}"})
    user = httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {user_key}"})
    with running_worker(server.studio), admin, user:
        # The demo-sized checkpoint gets the licence Stable Diffusion 1.5 has, recorded by an admin.
        patched = admin.patch("/api/models/tiny-sd15", json={"license": "creativeml-openrail-m"})
        assert patched.status_code == 200, patched.text
        assert patched.json()["license"]["use"] == "commercial"
        yield server, admin, user
    server.stop()


def _lora_bytes(tiny_models, tmp_path, name, metadata=None, seed=0):
    path = make_lora(tiny_models("sd15"), tmp_path / f"{name}.safetensors", seed=seed)
    if metadata:
        save_file(load_file(path), path, metadata=metadata)
    return path.read_bytes()


def _models(client, kind):
    return {item["name"]: item for item in client.get("/api/models", params={"kind": kind}).json()["models"]}


def _refused(response, status, field, *words):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["field"] == field
    for word in words:
        assert word in body["detail"]
    return body


def _training_zip(rights: str | None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, colour in enumerate(["navy", "teal", "olive", "maroon"]):
            image = io.BytesIO()
            Image.new("RGB", (64, 64), colour).save(image, format="PNG")
            archive.writestr(f"parka/{index}.png", image.getvalue())
            archive.writestr(f"parka/{index}.txt", f"a {colour} parka")
        if rights is not None:
            archive.writestr("parka/rights.toml", rights)
    return buffer.getvalue()


def test_a_lora_upload_records_the_licence_its_metadata_names(served, tiny_models, tmp_path):
    _server, admin, user = served
    data = _lora_bytes(tiny_models, tmp_path, "nc-style", {"modelspec.license": "cc-by-nc-4.0"}, seed=1)
    uploaded = user.put("/api/models/nc-style.safetensors", content=data)
    assert uploaded.status_code == 201, uploaded.text
    expected = {"name": "cc-by-nc-4.0", "use": "non-commercial", "source": "modelspec.license"}
    assert uploaded.json()["license"] == expected
    assert _models(user, "lora")["nc-style"]["license"] == expected
    listed = {item["name"]: item for item in user.get("/sdapi/v1/loras").json()}
    assert listed["nc-style"]["metadata"]["modelspec.license"] == "cc-by-nc-4.0"
    # The file names its licence: an uploader cannot record another one, an admin can.
    relabel = user.put("/api/models/nc-style-copy.safetensors", params={"license": "mit"}, content=data)
    _refused(relabel, 422, "license", "cc-by-nc-4.0", "admin")
    by_admin = admin.put("/api/models/nc-style-copy.safetensors", params={"license": "mit"}, content=data)
    assert by_admin.json()["license"] == {
        "name": "mit",
        "use": "commercial",
        "source": "admin",
        "declared_by": "legal",
    }


def test_the_uploader_gives_the_licence_of_a_file_that_names_none(served, tiny_models, tmp_path):
    _server, admin, user = served
    data = _lora_bytes(tiny_models, tmp_path, "plain", seed=2)
    uploaded = user.put(
        "/api/models/plain.safetensors", params={"license": "CreativeML Open RAIL-M"}, content=data
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["license"] == {
        "name": "CreativeML Open RAIL-M",
        "use": "commercial",
        "source": "uploader",
        "declared_by": "marketing",
    }
    _refused(user.put("/api/models/bad.safetensors", params={"license": " "}, content=data), 422, "license")
    # Changing a record is an admin's job.
    _refused(
        user.patch("/api/models/plain", params={"kind": "lora"}, json={"license": "mit"}),
        403,
        "authorization",
    )
    bad_use = admin.patch(
        "/api/models/plain", params={"kind": "lora"}, json={"license": "x", "use": "sometimes"}
    )
    assert bad_use.status_code == 422


def test_a_commercial_studio_refuses_models_without_a_commercial_licence(served, tiny_models, tmp_path):
    _server, admin, user = served
    if "nc-style" not in _models(user, "lora"):
        data = _lora_bytes(tiny_models, tmp_path, "nc-style", {"modelspec.license": "cc-by-nc-4.0"}, seed=1)
        assert user.put("/api/models/nc-style.safetensors", content=data).status_code == 201
    native = user.post("/api/generate", json={**SMALL, "prompt": "a parka", "model": "unlabelled"})
    _refused(native, 403, "model", "'unlabelled'", "none recorded", "unknown")
    a1111 = user.post(
        "/sdapi/v1/txt2img",
        json={**SMALL, "prompt": "a parka", "override_settings": {"sd_model_checkpoint": "unlabelled"}},
    )
    _refused(a1111, 403, "sd_model_checkpoint", "'unlabelled'", "none recorded")
    lora_native = user.post("/api/generate", json={**SMALL, "prompt": "a parka <lora:nc-style:1>"})
    _refused(lora_native, 403, "lora", "LoRA 'nc-style'", "cc-by-nc-4.0", "non-commercial")
    lora_a1111 = user.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a parka <lora:nc-style:1>"})
    _refused(lora_a1111, 403, "prompt", "cc-by-nc-4.0")
    # Training on a base without a commercial licence is refused too.
    stored = user.put(
        "/api/training-data/base-check.zip", params={"start": "false"}, content=_training_zip(None)
    )
    assert stored.status_code == 201, stored.text
    train = user.post("/api/train", json={"training_data": "base-check.zip", "base": "unlabelled"})
    _refused(train, 403, "base", "'unlabelled'")
    # Once an admin records a licence that allows commercial work, the same request is accepted.
    admin.patch("/api/models/unlabelled", json={"license": "stabilityai-ai-community", "use": "commercial"})
    accepted = user.post("/api/generate", json={**SMALL, "prompt": "a parka", "model": "unlabelled"})
    assert accepted.status_code == 202, accepted.text


def test_training_people_without_consent_is_refused(served):
    _server, _admin, user = served
    upload = user.put("/api/training-data/no-consent.zip", content=_training_zip(WITHOUT_CONSENT))
    _refused(upload, 422, "rights.consent", "consent")
    assert _server.studio.storage.exists("training-data/no-consent.zip") is False
    stored = user.put("/api/training-data/photos.zip", params={"start": "false"}, content=_training_zip(None))
    assert stored.status_code == 201, stored.text
    body = {
        "training_data": "photos.zip",
        "base": "tiny-sd15",
        "rights": {
            "owner": "Acme",
            "depicts_people": True,
            "consent": [{"person": "J. Doe", "reference": "R1"}],
        },
    }
    _refused(user.post("/api/train", json=body), 422, "rights.consent[0].date")


def test_a_rights_record_travels_with_the_lora_and_answers_the_audit(served, tmp_path, capsys):
    pytest.importorskip("atelier.training.recipe")
    server, _admin, user = served
    assert user.put("/api/training-data/parka.toml", content=TINY_TRAINING).status_code == 201
    upload = user.put("/api/training-data/parka.zip", content=_training_zip(CONSENTED))
    assert upload.status_code == 202, upload.text
    job_id = upload.json()["job"]["id"]
    done = wait_for(
        lambda: (job := user.get(f"/api/jobs/{job_id}").json())["finished_at"] and job, timeout=300
    )
    assert done["state"] == "succeeded", done["error"]

    expected = {
        "owner": "Acme Retail GmbH",
        "depicts_people": True,
        "consent": [{"person": "Jane Doe", "reference": "MR-2026-014", "date": "2026-02-02"}],
        "source": "rights.toml in parka.zip",
    }
    lora = _models(user, "lora")["parka"]
    assert lora["rights"] == expected
    # A LoRA is a derivative of its base: it carries the base's licence.
    assert lora["license"] == {
        "name": "creativeml-openrail-m",
        "use": "commercial",
        "source": "base model tiny-sd15",
    }
    with safe_open(
        str(server.studio.storage.local_path("models/parka.safetensors")), framework="pt"
    ) as handle:
        assert json.loads(handle.metadata()["atelier.rights"]) == expected
    listed = {item["name"]: item for item in user.get("/sdapi/v1/loras").json()}
    assert json.loads(listed["parka"]["metadata"]["atelier.rights"]) == expected

    generated = user.post("/api/generate", json={**SMALL, "prompt": "a navy parka <lora:parka:1>"})
    assert generated.status_code == 202, generated.text
    gen_id = generated.json()["id"]
    finished = wait_for(lambda: (job := user.get(f"/api/jobs/{gen_id}").json())["finished_at"] and job)
    assert finished["state"] == "succeeded", finished["error"]
    image = user.get(f"/api/jobs/{gen_id}/results").json()["images"][0]

    audit = user.get(f"/api/provenance/{image['key']}").json()
    assert audit["asked_by"] == "marketing" and audit["job"]["id"] == gen_id
    assert audit["models"]["checkpoint"]["license"] == {"name": "creativeml-openrail-m", "use": "commercial"}
    (used,) = audit["loras"]
    assert (used["name"], used["rights"], used["rights_from"]) == ("parka", expected, "registry")
    assert used["license"]["use"] == "commercial"
    assert audit["settings"]["steps"] == 2 and audit["settings"]["seed"] == 5
    assert "Lora hashes" in audit["infotext"] and set(audit["found_in"]) >= {"sidecar", "xmp", "infotext"}

    sidecar = user.get(image["sidecar_url"]).json()
    assert sidecar["owner"] == "marketing"
    # The picture's own record names no person: their names stay with the LoRA and the studio.
    carried = sidecar["provenance"]["generation"]["loras"][0]["training"]["rights"]
    assert carried == {
        "owner": "Acme Retail GmbH",
        "depicts_people": True,
        "consent": [{"reference": "MR-2026-014", "date": "2026-02-02"}],
    }

    # The same answer on the command line, from the downloaded file and its sidecar.
    picture = tmp_path / "download.png"
    picture.write_bytes(user.get(image["url"]).content)
    (tmp_path / "download.json").write_text(json.dumps(sidecar))
    assert main(["provenance", str(picture), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["asked_by"] == "marketing" and answer["loras"][0]["rights"] == carried
    assert main(["provenance", str(picture)]) == 0
    text = capsys.readouterr().out
    assert "asked by: marketing" in text and "owner Acme Retail GmbH" in text and "MR-2026-014" in text


def test_the_audit_is_visible_only_to_the_owner_and_admins(served):
    server, admin, user = served
    _key, other_key = server.studio.keys.create("someone-else")
    job = admin.post("/api/generate", json={**SMALL, "prompt": "a parka"}).json()
    done = wait_for(lambda: (found := admin.get(f"/api/jobs/{job['id']}").json())["finished_at"] and found)
    key = admin.get(f"/api/jobs/{done['id']}/results").json()["images"][0]["key"]
    assert admin.get(f"/api/provenance/{key}").json()["asked_by"] == "legal"
    other = httpx.Client(base_url=str(user.base_url), headers={"Authorization": f"Bearer {other_key}"})
    with other:
        assert wait_for(lambda: other.get(f"/api/provenance/{key}").status_code == 404, timeout=5)
    assert user.get("/api/provenance/outputs/nope/1.png").status_code == 404
