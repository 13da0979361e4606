"""POST /api/ads on a real server: ads composed from generated images, stored in the outputs bucket."""

from __future__ import annotations

import io

import httpx
import pytest
from PIL import Image
from studio_helpers import fast_config, install_checkpoint, png_base64, running_worker, wait_for

from atelier.service.server import StudioServer
from atelier.service.studio import Studio


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(tmp_path_factory.mktemp("ads") / "data", max_workers=0, port=0)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    with running_worker(server.studio), httpx.Client(base_url=url, timeout=60) as client:
        yield client
    server.stop()


@pytest.fixture(scope="module")
def generated_key(served):
    small = {"prompt": "a yellow windbreaker in a forest", "steps": 2, "width": 64, "height": 64, "seed": 3}
    job_id = served.post("/api/generate", json=small).json()["id"]
    job = wait_for(lambda: (body := served.get(f"/api/jobs/{job_id}").json())["finished_at"] and body)
    assert job["state"] == "succeeded", job
    return served.get(f"/api/jobs/{job_id}/results").json()["images"][0]["key"]


def download_image(client, url):
    response = client.get(url)
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def test_an_ad_from_a_generated_image_has_exact_channel_sizes_and_an_animated_gif(served, generated_key):
    uploaded = png_base64(Image.new("RGB", (80, 60), (30, 90, 160)))
    spec = {
        "materials": [generated_key, "data:image/png;base64," + uploaded],
        "headline": "Rain-ready. Trail-ready.",
        "body": "The Aurora windbreaker sheds a downpour.",
        "cta": "Shop now",
        "channels": ["square", "banner", "320x200"],
        "brand": {"primary": "#F2C230", "background": "#14241C"},
        "animation": {"seconds_per_material": 0.4, "crossfade_seconds": 0.2, "gif_max_side": 128},
    }
    response = served.post("/api/ads", json=spec)
    assert response.status_code == 201, response.text
    answer = response.json()
    files = {entry["name"]: entry for entry in answer["files"]}
    assert {"square.png", "banner.png", "320x200.png", "ad.gif"} <= set(files)
    for name, size in (
        ("square.png", (1080, 1080)),
        ("banner.png", (1200, 628)),
        ("320x200.png", (320, 200)),
    ):
        assert files[name]["key"] == f"outputs/ads/{answer['id']}/{name}"
        image = download_image(served, files[name]["url"])
        assert image.size == size
        assert generated_key in image.text["atelier:ad"]
    gif = download_image(served, files["ad.gif"]["url"])
    assert gif.format == "GIF"
    assert gif.n_frames > 1
    # The ad's own outputs are materials too: they live in the outputs bucket.
    again = served.post("/api/ads", json={"materials": [files["320x200.png"]["url"]], "headline": "Again"})
    assert again.status_code == 201, again.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"headlnie": "typo"}, "headlnie"),
        ({"brand": {"primary": "not-a-colour"}}, "brand.primary"),
        ({"channels": ["billboard"]}, "channels"),
        ({"materials": ["outputs/nothing/here.png"]}, "materials[0]"),
        ({"materials": ["/etc/passwd"]}, "materials[0]"),
        ({"materials": ["outputs/../models/x.png"]}, "materials[0]"),
        ({"logo": "models/secret.png"}, "logo"),
        ({"template": "../../etc/x.toml"}, "template"),
        ({"font": "/usr/share/fonts/x.ttf"}, "font"),
    ],
)
def test_a_bad_spec_is_a_4xx_naming_the_field(served, generated_key, change, field):
    spec = {"materials": [generated_key], "headline": "Hello", **change}
    response = served.post("/api/ads", json=spec)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["field"] == field
