"""A studio with a signing certificate: every output disclosed and signed; JPEG/WebP downloads; credentials."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, png_base64, running_worker, wait_for

from atelier.engine import read_credentials, read_infotext
from atelier.errors import AtelierError
from atelier.service.server import StudioServer
from atelier.service.studio import Studio
from c2pa_helpers import COMPOSITE, GENERATED, make_test_ca, strict_source_type, xmp_of


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    ca = make_test_ca()
    return ca.write(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory, keys):
    import torch

    torch.set_num_threads(1)
    chain, key, ca_file = keys
    config = fast_config(
        tmp_path_factory.mktemp("signed") / "data",
        max_workers=0,
        port=0,
        c2pa_cert=chain,
        c2pa_key=key,
        c2pa_trust_anchors=ca_file,
    )
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
        yield client
    server.stop()


SMALL = {"prompt": "a yellow windbreaker", "steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture(scope="module")
def generated(served):
    job_id = served.post("/api/generate", json=SMALL).json()["id"]
    job = wait_for(lambda: (body := served.get(f"/api/jobs/{job_id}").json())["finished_at"] and body)
    assert job["state"] == "succeeded", job
    return served.get(f"/api/jobs/{job_id}/results").json()["images"][0]


def test_a_stored_generation_is_disclosed_signed_and_shows_its_credentials(served, generated, keys):
    data = served.get(generated["url"]).content
    assert strict_source_type(xmp_of(data)) == GENERATED
    assert Image.open(io.BytesIO(data)).info["parameters"] == generated["infotext"]
    assert read_credentials(data, trust_anchors=keys[2].read_text()).trusted

    answer = served.get(f"/api/credentials/{generated['key']}").json()
    assert answer["digital_source_type"] == GENERATED
    summary = answer["credentials"]
    assert (summary["state"], summary["actions"]) == ("Trusted", ["c2pa.created"])
    assert summary["generation"]["checkpoint"]["name"].startswith("tiny-sd15")
    sidecar = served.get(generated["sidecar_url"]).json()
    assert sidecar["provenance"]["digital_source_type"] == GENERATED
    assert sidecar["provenance"]["signed"] is True
    assert served.get("/api/credentials/outputs/nope/1.png").status_code == 404


@pytest.mark.parametrize(("output_format", "mime"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_an_output_downloads_as_jpeg_or_webp_with_its_disclosure(
    served, generated, keys, output_format, mime
):
    response = served.get(generated["url"], params={"format": output_format, "quality": 85})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == mime
    assert response.headers["content-disposition"].endswith('.jpg"' if output_format == "jpeg" else '.webp"')
    assert strict_source_type(xmp_of(response.content)) == GENERATED
    assert read_infotext(Image.open(io.BytesIO(response.content))) == generated["infotext"]
    summary = read_credentials(response.content, trust_anchors=keys[2].read_text()).summary()
    assert summary["trusted"] and summary["actions"] == ["c2pa.opened", "c2pa.transcoded"]
    # The copy's parent is the signed PNG: its generation record is still reachable.
    assert summary["ingredients"][0]["credentials"] is True
    assert summary["generation"]["checkpoint"]["name"].startswith("tiny-sd15")


@pytest.mark.parametrize(
    ("params", "field"), [({"format": "gif"}, "format"), ({"format": "jpeg", "quality": 0}, "quality")]
)
def test_a_bad_download_format_is_a_4xx_naming_the_field(served, generated, params, field):
    response = served.get(generated["url"], params=params)
    assert 400 <= response.status_code < 500
    assert response.json()["field"] == field


def test_img2img_through_the_a1111_api_is_a_composite_naming_its_photo(served, keys):
    photo = png_base64(Image.new("RGB", (64, 64), (200, 30, 30)))
    body = {**SMALL, "init_images": [photo], "denoising_strength": 0.5}
    response = served.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["images"][0])
    assert strict_source_type(xmp_of(data)) == COMPOSITE
    summary = read_credentials(data, trust_anchors=keys[2].read_text()).summary()
    assert summary["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert summary["ingredients"][0]["relationship"] == "parentOf"


def test_an_upscale_keeps_what_its_source_declares(served, generated, keys):
    source = base64.b64encode(served.get(generated["url"]).content).decode("ascii")
    response = served.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaling_resize": 2})
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["image"])
    assert strict_source_type(xmp_of(data)) == GENERATED
    summary = read_credentials(data, trust_anchors=keys[2].read_text()).summary()
    assert summary["actions"] == ["c2pa.opened", "c2pa.resized"]
    # A plain picture resized by a classical filter gets no AI claim.
    plain = png_base64(Image.new("RGB", (16, 16), (1, 2, 3)))
    response = served.post("/sdapi/v1/extra-single-image", json={"image": plain, "upscaling_resize": 2})
    answer = Image.open(io.BytesIO(base64.b64decode(response.json()["image"])))
    assert "xmp" not in answer.info and "XML:com.adobe.xmp" not in answer.info


def test_an_ad_from_an_output_and_an_upload_is_a_signed_ai_composite(served, generated, keys):
    upload = "data:image/png;base64," + png_base64(Image.new("RGB", (80, 60), (30, 90, 160)))
    spec = {"materials": [generated["key"], upload], "headline": "Rain-ready.", "channels": ["320x200"]}
    response = served.post("/api/ads", json=spec)
    assert response.status_code == 201, response.text
    files = {entry["name"]: entry for entry in response.json()["files"]}
    data = served.get(files["320x200.png"]["url"]).content
    assert strict_source_type(xmp_of(data)) == COMPOSITE
    assert (
        json.loads(Image.open(io.BytesIO(data)).text["atelier:ad"])["materials"][1] == "upload:materials[1]"
    )
    summary = read_credentials(data, trust_anchors=keys[2].read_text()).summary()
    assert summary["trusted"]
    # The generated material keeps its own credentials inside the ad's.
    assert [item["credentials"] for item in summary["ingredients"]] == [True, False]


def test_signing_settings_that_cannot_work_stop_the_studio_at_start(tmp_path, keys):
    chain, _, _ = keys
    with pytest.raises(AtelierError) as caught:
        Studio.open(fast_config(tmp_path / "data", c2pa_cert=chain))
    assert caught.value.field == "c2pa_key"


def test_local_workers_get_the_signing_settings_in_their_environment(tmp_path, keys):
    from atelier.service.supervisor import worker_environment

    chain, key, _ = keys
    environment = worker_environment(fast_config(tmp_path / "data", c2pa_cert=chain, c2pa_key=key))
    assert (environment["ATELIER_C2PA_CERT"], environment["ATELIER_C2PA_KEY"]) == (str(chain), str(key))
