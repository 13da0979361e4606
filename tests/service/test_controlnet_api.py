"""ControlNet through the studio: the native API, sd-webui-controlnet's API through `webuiapi`, bad input."""

from __future__ import annotations

import base64
import io
import shutil

import httpx
import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageChops, ImageDraw
from studio_helpers import fast_config, install_checkpoint, png_base64, running_worker, wait_for

from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 11}


def square(size: int = 64, *, left: int = 16) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle((left, 16, left + 24, 40), fill="white")
    return image


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(tmp_path_factory.mktemp("controlnet") / "data", max_workers=0, port=0)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    controlnet_folder = setup.storage.local_path("models/controlnet")
    shutil.copytree(tiny_models("controlnet-sd15"), controlnet_folder / "tiny-cn-sd15")
    shutil.copytree(tiny_models("controlnet-sdxl"), controlnet_folder / "tiny-cn-sdxl")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    port = int(url.rsplit(":", 1)[1])
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2), client
    server.stop()


@pytest.fixture
def api(served):
    return served[0]


@pytest.fixture
def http(served):
    return served[1]


def test_model_and_module_lists_answer_like_the_extension(api, http):
    models = api.controlnet_model_list()
    assert [name.split(" [")[0] for name in models] == ["tiny-cn-sd15", "tiny-cn-sdxl"]
    assert all(name.endswith("]") for name in models)
    modules = api.controlnet_module_list()
    assert {"none", "canny", "invert"} <= set(modules)
    native = http.get("/api/controlnet/models").json()
    assert native["models"] == models
    names = [module["name"] for module in http.get("/api/controlnet/modules").json()["modules"]]
    assert names == modules


def test_control_types_and_settings_answer_like_the_extension(api, http):
    types = http.get("/controlnet/control_types").json()["control_types"]
    assert set(types) >= {"All", "Canny", "Depth", "Lineart", "SoftEdge"}
    assert types["Canny"]["default_option"] == "canny" and "canny" in types["Canny"]["module_list"]
    assert types["All"]["model_list"] == ["None", *api.controlnet_model_list()]
    # Models are grouped by the type their name says, as the extension does: these tiny ones say none.
    assert types["Canny"]["model_list"] == ["None"] and types["Canny"]["default_model"] == "None"
    assert http.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_webuiapi_controlnet_unit_round_trip(api):
    def generate(control: Image.Image, weight: float = 1.0) -> webuiapi.WebUIApiResult:
        unit = webuiapi.ControlNetUnit(
            image=control, module="canny", model="tiny-cn-sd15", weight=weight, control_mode=1
        )
        return api.txt2img(prompt="a bottle", controlnet_units=[unit], **SMALL)

    left, right = generate(square(left=8)), generate(square(left=32))
    infotext = left.info["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: tiny-cn-sd15 [' in infotext
    assert "Control Mode: My prompt is more important" in infotext
    assert ImageChops.difference(left.image.convert("RGB"), right.image.convert("RGB")).getbbox() is not None
    # A fresh dict: webuiapi's default alwayson_scripts is shared between calls and keeps the last unit.
    plain = api.txt2img(prompt="a bottle", alwayson_scripts={}, **SMALL)
    unweighted = generate(square(left=8), weight=0.0)

    def mean_difference(result: webuiapi.WebUIApiResult) -> float:
        pixels = np.asarray(result.image.convert("RGB"), dtype=float)
        return float(np.abs(pixels - np.asarray(plain.image.convert("RGB"))).mean())

    assert mean_difference(unweighted) == 0.0 < mean_difference(left)


def test_native_generate_takes_control_units(http):
    unit = {"image": png_base64(square()), "module": "invert", "model": "tiny-cn-sd15", "weight": 0.8}
    response = http.post("/api/generate", json={"prompt": "a bottle", **SMALL, "controlnet_units": [unit]})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    job = wait_for(lambda: (found := http.get(f"/api/jobs/{job_id}").json())["finished_at"] and found)
    assert job["state"] == "succeeded", job
    assert 'ControlNet 0: "Module: invert, Model: tiny-cn-sd15 [' in job["result"]["infotexts"][0]


def test_native_preview_returns_the_preprocessed_map(http):
    photo = square()
    body = {"image": png_base64(photo), "module": "invert", "width": 64, "height": 64, "resize_mode": 0}
    response = http.post("/api/controlnet/preview", json=body)
    assert response.status_code == 200, response.text
    inverted = np.asarray(decoded(response.json()["image"]).convert("RGB"))
    assert np.array_equal(inverted, 255 - np.asarray(photo))
    body["module"] = "canny"
    edges = np.asarray(decoded(http.post("/api/controlnet/preview", json=body).json()["image"]).convert("L"))
    assert set(np.unique(edges)) == {0, 255}
    assert edges[30, 30] == 0 and edges[:, 16].any()  # inside the square: no edge; its border: edges


def test_detect_runs_a_module_on_images(http):
    body = {"controlnet_module": "invert", "controlnet_input_images": [png_base64(square())]}
    images = http.post("/controlnet/detect", json=body).json()["images"]
    assert np.array_equal(np.asarray(decoded(images[0]).convert("RGB")), 255 - np.asarray(square()))


GOOD_UNIT = {"module": "canny", "model": "tiny-cn-sd15"}
BAD_UNITS = [
    ("unknown module", [{**GOOD_UNIT, "module": "sketchify"}], "controlnet_units[0].module", 422),
    ("unknown model", [{**GOOD_UNIT, "model": "nope"}], "controlnet_units[0].model", 404),
    ("undecodable image", [{**GOOD_UNIT, "image": "bm90IGFuIGltYWdl"}], "controlnet_units[0].image", 422),
    ("wrong base", [{**GOOD_UNIT, "model": "tiny-cn-sdxl"}], "controlnet_units[0].model", 422),
    ("weight out of range", [{**GOOD_UNIT, "weight": 3.5}], "controlnet_units[0].weight", 422),
    ("too many units", [GOOD_UNIT] * 4, "controlnet_units", 422),
]


@pytest.mark.parametrize(("case", "units", "field", "status"), BAD_UNITS, ids=[case[0] for case in BAD_UNITS])
def test_bad_units_get_a_4xx_naming_the_field(http, case, units, field, status):
    with_images = [{"image": png_base64(square()), **unit} for unit in units]
    native = http.post("/api/generate", json={"prompt": "x", **SMALL, "controlnet_units": with_images})
    assert native.status_code == status, native.text
    assert native.json()["field"] == field
    a1111_units = [{"input_image": unit.pop("image"), **unit} for unit in with_images]
    body = {"prompt": "x", **SMALL, "alwayson_scripts": {"controlnet": {"args": a1111_units}}}
    a1111 = http.post("/sdapi/v1/txt2img", json=body)
    assert a1111.status_code == status, a1111.text
    assert field in a1111.text


def test_preview_names_its_own_fields(http):
    response = http.post(
        "/api/controlnet/preview", json={"image": png_base64(square()), "module": "sketchify"}
    )
    assert response.status_code == 422
    assert response.json()["field"] == "module"
