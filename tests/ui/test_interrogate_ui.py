"""img2img's "Caption into prompt" (A1111's Interrogate) in headless Chromium, with a tiny BLIP."""

from __future__ import annotations

import shutil

from PIL import Image
from ui_helpers import b64, png_bytes


def _source() -> bytes:
    image = Image.new("RGB", (64, 48), (200, 40, 40))
    image.paste((255, 255, 255), (16, 12, 32, 24))
    return png_bytes(image)


def test_the_source_images_caption_becomes_the_prompt(open_page, studio, tiny_captioner):
    folder = studio.server.studio.storage.local_path("models/captioning")
    shutil.copytree(tiny_captioner, folder / "tiny-blip")
    try:
        page = open_page("img2img")
        page.fill("#g-prompt", "old prompt")
        page.set_input_files(
            "#g-init-file", {"name": "bag.png", "mimeType": "image/png", "buffer": _source()}
        )
        page.click("#g-interrogate")
        page.wait_for_function("document.querySelector('#g-prompt').value !== 'old prompt'")
        answer = studio.client.post("/sdapi/v1/interrogate", json={"image": b64(_source())}).json()
        assert page.input_value("#g-prompt") == answer["caption"] != ""
    finally:
        shutil.rmtree(folder)


def test_without_a_source_image_or_a_model_the_page_says_what_is_missing(open_page):
    page = open_page("img2img")
    page.click("#g-interrogate")
    error = page.wait_for_selector("[data-field='init_image'] .field-error")
    assert "Choose an image first" in error.inner_text()

    page.set_input_files("#g-init-file", {"name": "bag.png", "mimeType": "image/png", "buffer": _source()})
    page.click("#g-interrogate")
    error = page.wait_for_selector("[data-field='init_image'] .field-error:has-text('captioning')")
    message = error.inner_text()
    assert "no captioning model in models/captioning/" in message
