"""Product shots through the studio: a real server, a worker, a cut-out PNG or a SAM model, exact products."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, running_worker, wait_for

from atelier.engine import COMPOSITE, source_type_of
from atelier.service.server import StudioServer
from atelier.service.studio import Studio
from product_helpers import cutout_photo, opaque_photo, write_tiny_sam

FAST = {"steps": 2, "width": 64, "height": 64, "seed": 11}


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(tmp_path_factory.mktemp("product") / "data", max_workers=0, port=0)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=120) as client:
        yield server, client
    server.stop()


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _finished(client: httpx.Client, job_id: str) -> dict:
    job = wait_for(
        lambda: (found := client.get(f"/api/jobs/{job_id}").json())["finished_at"] and found, timeout=120
    )
    assert job["state"] == "succeeded", job["error"]
    return client.get(f"/api/jobs/{job_id}/results").json()


def _image(client: httpx.Client, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_a_cutout_png_becomes_shots_in_every_channel_with_the_product_exact(served):
    server, client = served
    photo, alpha = cutout_photo((96, 80), soft_edge=False)
    scenes = {scene["name"] for scene in client.get("/api/product/scenes").json()["scenes"]}
    assert {"studio", "marble"} <= scenes
    queued = client.post(
        "/api/product-shots",
        json={
            "photo": _b64(photo),
            "scene": "marble",
            "product": "a bottle",
            "count": 2,
            "channels": ["96x160"],
            "upscale_by": 2,
            **FAST,
        },
    )
    assert queued.status_code == 202, queued.text
    results = _finished(client, queued.json()["id"])
    kinds = [image["kind"] for image in results["images"]]
    assert kinds == ["shot", "shot", "channel", "channel", "upscale", "upscale"]
    assert [image["seed"] for image in results["images"][:2]] == [11, 12]
    mask = _image(client, results["mask_url"])
    assert np.array_equal(np.asarray(mask), np.asarray(alpha))
    cutout = _image(client, results["cutout_url"])
    left, top, right, bottom = alpha.getbbox()
    assert cutout.mode == "RGBA" and cutout.size == (right - left, bottom - top)
    for image in results["images"]:
        picture = _image(client, image["url"])
        assert picture.size == (image["width"], image["height"])
        assert "parameters" in picture.info  # A1111's PNG Info reads every shot
        assert source_type_of(picture) == COMPOSITE  # a real photo kept: composite with AI-made parts
    channel = _image(client, results["images"][2]["url"])
    assert channel.size == (96, 160)
    assert results["images"][0]["infotext"].startswith("a bottle, ")


def test_every_stored_output_keeps_the_products_pixels_exactly(served):
    """Where the product lies in an output (its box), the stored PNG holds the photo's product pixels as the
    product-shot library lays them: nothing between the flow and the file (encoding, disclosure) changes them."""
    from atelier.campaign.product import cut_out, product_mask
    from atelier.campaign.product.placement import product_layer

    server, client = served
    photo, _alpha = cutout_photo((64, 64), soft_edge=False)
    queued = client.post(
        "/api/product-shots",
        json={
            "photo": _b64(photo),
            "shadow": {"opacity": 0.8, "direction": 45},
            "channels": ["banner"],
            "upscale_by": 1.5,
            "width": 128,
            "height": 128,
            "steps": 2,
            "seed": 3,
        },
    )
    results = _finished(client, queued.json()["id"])
    cutout = cut_out(photo, product_mask(photo))
    assert len(results["images"]) == 3
    for image in results["images"]:
        picture = np.asarray(_image(client, image["url"]).convert("RGB"))
        layer, mask = product_layer(cutout, tuple(image["box"]), (image["width"], image["height"]))
        solid = np.asarray(mask) == 255
        assert solid.sum() > 100, image["kind"]
        assert np.array_equal(picture[solid], np.asarray(layer.convert("RGB"))[solid]), image["kind"]
        # The scene is generated: outside the product the picture is not the grey canvas.
        assert picture[~solid].std() > 1


def test_an_opaque_photo_needs_a_segmentation_model_then_sam_cuts_it_out(served, tmp_path):
    server, client = served
    photo, _true_mask = opaque_photo((120, 80))
    refused = client.post("/api/product-shots", json={"photo": _b64(photo), **FAST})
    assert refused.status_code == 422
    assert refused.json()["field"] == "photo" and "models/segmentation/" in refused.json()["detail"]

    folder = write_tiny_sam(tmp_path / "tiny-sam", license_note='license = "apache-2.0"\n')
    shutil.copytree(folder, server.studio.storage.local_path("models/segmentation/tiny-sam"))
    listed = client.get("/api/product/segmentation-models").json()["models"]
    assert [model["name"] for model in listed] == ["tiny-sam"]
    queued = client.post("/api/product-shots", json={"photo": _b64(photo), "cutout_only": True, **FAST})
    assert queued.status_code == 202, queued.text
    results = _finished(client, queued.json()["id"])
    assert results["images"] == []
    assert results["segmentation_model"]["name"] == "tiny-sam"
    assert results["segmentation_model"]["license"] == "apache-2.0"
    mask = np.asarray(_image(client, results["mask_url"]))
    assert mask.shape == (80, 120) and mask.max() == 255


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scene": "moon-base"}, "scene"),
        ({"channels": ["tiktok-ish"]}, "channels"),
        ({"shadow": {"opacity": 3}}, "opacity"),
        ({"shadow": {"blur": 3}}, "shadow"),
        ({"width": 100}, "width"),
        ({"model": "nope"}, "model"),
    ],
)
def test_bad_requests_name_the_field(served, change, field):
    server, client = served
    photo, _alpha = cutout_photo((64, 64))
    answer = client.post("/api/product-shots", json={"photo": _b64(photo), **FAST, **change})
    assert 400 <= answer.status_code < 500, answer.text
    assert answer.json()["field"] == field


def test_an_empty_cutout_is_no_product(served):
    server, client = served
    empty = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    answer = client.post("/api/product-shots", json={"photo": _b64(empty), **FAST})
    assert answer.status_code == 422
    assert answer.json()["field"] == "photo" and "no product found" in answer.json()["detail"]


def test_expand_a_picture_to_other_channels_keeps_its_pixels(served):
    """Expand as a step of its own: any picture (here a photo without transparency), its pixels kept exactly."""
    server, client = served
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    answer = client.post(
        "/api/product-shots",
        json={"photo": _b64(picture), "expand_only": True, "channels": ["64x128", "128x64"], **FAST},
    )
    assert answer.status_code == 202, answer.text
    results = _finished(client, answer.json()["id"])
    assert [image["channel"] for image in results["images"]] == ["64x128", "128x64"]
    tall = np.asarray(_image(client, results["images"][0]["url"]).convert("RGB"))
    assert tall.shape == (128, 64, 3)
    assert np.array_equal(tall[32:96], np.asarray(picture))  # centred, untouched
    assert tall[:32].std() > 1  # the new area is generated
    assert results["mask_url"] is None

    refused = client.post("/api/product-shots", json={"photo": _b64(picture), "expand_only": True, **FAST})
    assert refused.status_code == 422 and refused.json()["field"] == "channels"


def test_an_unknown_lora_in_the_scene_prompt_is_refused_at_the_door(served):
    server, client = served
    photo, _alpha = cutout_photo((64, 64))
    answer = client.post(
        "/api/product-shots", json={"photo": _b64(photo), "prompt": "a beach <lora:nope:0.8>", **FAST}
    )
    assert answer.status_code == 404 and answer.json()["field"] == "lora"


def test_a_commercial_studio_refuses_a_product_shot_on_a_model_of_unknown_licence(tmp_path, tiny_models):
    from atelier.errors import AtelierError
    from atelier.service.product import submit_product

    studio = Studio.open(fast_config(tmp_path / "data", commercial_use=True))
    try:
        install_checkpoint(studio, tiny_models("sd15"), "no-licence")
        photo, _alpha = cutout_photo((64, 64))
        options = {"scene": "studio", "count": 1, "seed": 1, "width": 64, "height": 64, "steps": 2}
        options |= {"sampler": "Euler", "schedule_type": None, "cfg_scale": 7.0, "shadow": {}, "channels": []}
        with pytest.raises(AtelierError, match="no-licence") as refused:
            submit_product(studio, photo, options, model="no-licence")
        assert refused.value.field == "model" and "licence" in str(refused.value)
        assert studio.store.list(kind="product") == []  # refused before anything was queued or stored
    finally:
        studio.close()
