"""The ControlNet section of the generate tabs in headless Chromium: model hint, live preview, generation, errors."""

from __future__ import annotations

import shutil

from PIL import Image, ImageDraw
from ui_helpers import png_bytes

SMALL = {"#g-width": "64", "#g-height": "64", "#g-steps": "2", "#g-seed": "5"}


def control_png() -> bytes:
    image = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 44, 44), fill="white")
    return png_bytes(image)


def test_controlnet_panel_previews_the_map_and_controls_the_generation(open_page, studio, tiny_models):
    page = open_page("txt2img")
    page.click("#controlnet-section summary")
    hint = page.locator("#cn-0-model-hint")
    assert "put ControlNet models in models/controlnet/" in hint.inner_text()

    folder = studio.server.studio.storage.local_path("models/controlnet")
    shutil.copytree(tiny_models("controlnet-sd15"), folder / "tiny-cn-sd15")
    # Opening the section again reads the model list again.
    page.click("#controlnet-section summary")
    page.click("#controlnet-section summary")
    page.wait_for_function("document.querySelector('#cn-0-model').value.startsWith('tiny-cn-sd15')")
    assert hint.inner_text() == ""
    unit = page.locator("#cn-unit-0")
    for name in (
        "Control image",
        "Preprocessor",
        "ControlNet model",
        "Weight",
        "Guidance start",
        "Guidance end",
        "Control mode",
        "Enable ControlNet",
    ):
        assert unit.get_by_label(name, exact=True).count() == 1, name

    page.select_option("#cn-0-module", "canny")
    page.set_input_files(
        "#cn-0-image", {"name": "edges.png", "mimeType": "image/png", "buffer": control_png()}
    )
    assert page.is_checked("#cn-0-enabled")
    preview = page.wait_for_selector("#cn-0-preview[src^='data:image/png']")
    assert page.evaluate("img => img.decode().then(() => img.naturalWidth)", preview) == 512
    assert "canny map" in page.inner_text("#cn-0-preview-status")

    # A weight beyond the ControlNet's range is refused by the API and shown at the weight field.
    page.fill("#g-prompt", "a bottle")
    for selector, value in SMALL.items():
        page.fill(selector, value)
    page.fill("#cn-0-weight", "9")
    page.click("#g-submit")
    error = page.wait_for_selector("[data-field='controlnet_units[0].weight'] .field-error")
    assert "weight" in error.inner_text()

    page.fill("#cn-0-weight", "0.8")
    page.select_option("#cn-0-control-mode", "ControlNet is more important")
    page.click("#g-submit")
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    job = studio.latest_job()
    assert job["state"] == "succeeded", job["error"]
    infotext = job["result"]["infotexts"][0]
    assert 'ControlNet 0: "Module: canny, Model: tiny-cn-sd15 [' in infotext
    assert "Weight: 0.8" in infotext and "Control Mode: ControlNet is more important" in infotext


def test_enabled_controlnet_without_an_image_says_so_at_the_image_field(open_page):
    page = open_page("img2img")
    page.click("#controlnet-section summary")
    page.check("#cn-0-enabled")
    page.set_input_files(
        "#g-init-file", {"name": "source.png", "mimeType": "image/png", "buffer": control_png()}
    )
    page.click("#g-submit")
    error = page.wait_for_selector("[data-field='controlnet_units[0].image'] .field-error")
    assert "control image" in error.inner_text()


def test_every_allowed_unit_has_its_own_map_preview_and_errors_land_on_their_unit(
    open_page, studio, tiny_models
):
    folder = studio.server.studio.storage.local_path("models/controlnet")
    if not (folder / "tiny-cn-sd15").exists():
        shutil.copytree(tiny_models("controlnet-sd15"), folder / "tiny-cn-sd15")
    page = open_page("txt2img")
    page.click("#controlnet-section summary")
    # As many units as the studio allows (max_controlnet_units, 3 by default).
    page.wait_for_selector("#cn-unit-2", state="attached")
    assert page.locator("#controlnet-section .cn-unit").count() == 3
    page.wait_for_function("document.querySelector('#cn-1-model').value.startsWith('tiny-cn-sd15')")
    page.click("#cn-unit-1 summary")
    page.select_option("#cn-1-module", "canny")
    page.set_input_files(
        "#cn-1-image", {"name": "edges.png", "mimeType": "image/png", "buffer": control_png()}
    )
    page.wait_for_selector("#cn-1-preview[src^='data:image/png']")
    assert page.is_hidden("#cn-0-preview")  # each unit previews its own map
    page.fill("#g-prompt", "a bottle")
    for selector, value in SMALL.items():
        page.fill(selector, value)
    # Only unit 2 is on, so it is the request's first unit: its error still shows on unit 2.
    page.fill("#cn-1-weight", "9")
    page.click("#g-submit")
    page.wait_for_selector("[data-field='controlnet_units[1].weight'] .field-error")
    assert page.locator("[data-field='controlnet_units[0].weight'] .field-error").count() == 0
