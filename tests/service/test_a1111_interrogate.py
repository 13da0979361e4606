"""A1111's /sdapi/v1/interrogate: captions from models/captioning/, run as caption jobs by a worker.

Driven by the `webuiapi` client, as a real peer; the captioning model is a tiny random-weight BLIP.
"""

from __future__ import annotations

import shutil

import httpx
import pytest
import webuiapi
from PIL import Image
from studio_helpers import fast_config, png_base64, running_worker

from atelier.service.captioning import local_captioning_model, stored_captioning_models
from atelier.service.modelfiles import upload_folder
from atelier.service.server import StudioServer
from atelier.service.watcher import BucketWatcher


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(
        tmp_path_factory.mktemp("interrogate") / "data",
        max_workers=0,
        port=0,
        settle_seconds=0.0,
        watch=False,
    )
    server = StudioServer(config, log_level="warning")
    url = server.start()
    port = int(url.rsplit(":", 1)[1])
    # A worker of the generation lane's kinds would load a checkpoint first; this studio has none.
    with running_worker(server.studio, kinds=["caption"]):
        yield server, webuiapi.WebUIApi(host="127.0.0.1", port=port), url
    server.stop()


@pytest.fixture
def studio(served):
    return served[0].studio


@pytest.fixture
def api(served):
    return served[1]


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served[2], timeout=60) as client:
        yield client


@pytest.fixture
def captioning_model(studio, tiny_captioner):
    """The tiny BLIP in the models bucket as models/captioning/tiny-blip/ for one test."""
    folder = studio.storage.local_path("models/captioning/tiny-blip")
    shutil.copytree(tiny_captioner, folder)
    yield folder
    shutil.rmtree(folder.parent)


def _photo(color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (80, 64), color)
    image.paste((255, 255, 255), (20, 16, 40, 32))
    return image


def test_interrogate_answers_like_a1111_with_the_captioning_model(api, http, studio, captioning_model):
    result = api.interrogate(_photo((200, 30, 30)))
    caption = result.info
    assert isinstance(caption, str) and caption and caption == caption.strip()
    assert result.json == {"caption": caption}
    # Greedy decoding: the same picture gets the same caption, another picture another one.
    assert api.interrogate(_photo((200, 30, 30))).info == caption
    assert api.interrogate(_photo((10, 40, 220))).info != caption
    # The model may also be named; the answer is the same.
    assert api.interrogate(_photo((200, 30, 30)), model="tiny-blip").info == caption

    # It ran as a caption job, visible in the queue like any other.
    job = studio.store.list(kind="caption", limit=1)[0]
    assert (
        job.state == "succeeded" and job.payload["model"] == "tiny-blip" and job.payload["origin"] == "a1111"
    )
    results = http.get(f"/api/jobs/{job.id}/results").json()
    assert results["kind"] == "caption" and isinstance(results["caption"], str)
    listed = http.get(f"/api/jobs/{job.id}").json()
    assert listed["label"]["model"] == "tiny-blip"


def test_without_a_captioning_model_the_answer_says_where_to_put_one(http):
    response = http.post(
        "/sdapi/v1/interrogate", json={"image": png_base64(_photo((1, 2, 3))), "model": "clip"}
    )
    assert response.status_code == 404
    body = response.json()
    assert body["field"] == "model" and "\n" not in body["detail"]
    assert "no captioning model in models/captioning/" in body["detail"]
    assert "config.json" in body["detail"] and "blip-image-captioning-large" in body["detail"]


def test_deepdanbooru_and_unknown_models_are_refused(http, captioning_model):
    image = png_base64(_photo((1, 2, 3)))
    response = http.post("/sdapi/v1/interrogate", json={"image": image, "model": "deepdanbooru"})
    assert response.status_code == 404 and "no booru tagger" in response.json()["detail"]
    response = http.post("/sdapi/v1/interrogate", json={"image": image, "model": "wd14"})
    assert response.status_code == 404
    assert "models/captioning/: tiny-blip" in response.json()["detail"]


@pytest.mark.parametrize("image", ["", "not base64!", "aGVsbG8="])
def test_a_bad_image_is_refused_naming_the_field(http, captioning_model, image):
    response = http.post("/sdapi/v1/interrogate", json={"image": image})
    assert response.status_code == 422 and response.json()["field"] == "image"


def test_an_image_over_the_pixel_limit_is_refused(http, studio, captioning_model):
    side = int(studio.config.max_image_pixels**0.5) + 2
    response = http.post("/sdapi/v1/interrogate", json={"image": png_base64(Image.new("L", (side, side)))})
    assert response.status_code == 422 and response.json()["field"] == "image"


def test_a_model_with_pickle_weights_fails_as_the_requests_error(http, captioning_model):
    (captioning_model / "model.safetensors").rename(captioning_model / "pytorch_model.bin")
    response = http.post("/sdapi/v1/interrogate", json={"image": png_base64(_photo((1, 2, 3)))})
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "model" and "refusing pytorch_model.bin" in body["detail"]
    assert str(captioning_model) not in body["detail"]  # no server paths in answers


def test_the_watcher_leaves_captioning_models_alone(studio, captioning_model):
    report = BucketWatcher(studio, settle_seconds=0.0).scan()
    assert not [key for key in [*report.registered, *report.refused] if "captioning" in key]
    assert not [record for record in studio.registry.list() if "captioning" in record.storage_key]


def test_captioning_models_are_listed_and_mirrored_from_any_storage(storage, tiny_captioner, tmp_path):
    assert stored_captioning_models(storage) == []
    upload_folder(storage, tiny_captioner, "models/captioning/tiny-blip")
    storage.put_bytes("models/captioning/notes.txt", b"not a model")
    assert stored_captioning_models(storage) == ["tiny-blip"]
    folder = local_captioning_model(storage, tmp_path / "cache", "tiny-blip")
    assert (folder / "config.json").read_bytes() == (tiny_captioner / "config.json").read_bytes()
    assert (folder / "model.safetensors").is_file()
