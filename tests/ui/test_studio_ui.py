"""The studio page in headless Chromium against a real studio: what a user clicks, and what the API then holds."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
from PIL import Image
from ui_helpers import b64, png_bytes, wait_for

TABS = ("txt2img", "img2img", "inpaint", "history", "models", "training", "ads", "queue")
# The tiny demo model at its smallest size: each image takes a fraction of a second on one CPU thread.
SMALL = {"#g-width": "64", "#g-height": "64", "#g-steps": "2", "#g-seed": "7"}


def fill(page, values: dict[str, str]) -> None:
    for selector, value in values.items():
        page.fill(selector, value)


def photo(size: tuple[int, int] = (64, 64)) -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def file_payload(name: str, data: bytes, mime: str = "image/png") -> dict:
    return {"name": name, "mimeType": mime, "buffer": data}


def result_image(studio, job: dict) -> Image.Image:
    key = job["result"]["images"][0]["key"]
    return Image.open(io.BytesIO(studio.download(key))).convert("RGB")


def wait_for_gallery(page, studio) -> dict:
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    job = studio.latest_job()
    assert job["state"] == "succeeded", job["error"]
    return job


def test_txt2img_shows_the_image_with_its_infotext_and_actions(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a product photo of a red bottle")
    fill(page, SMALL)
    page.press("#g-prompt", "Control+Enter")
    tile = page.wait_for_selector("#gallery .tile img[src^='blob:']")
    assert page.evaluate("img => img.complete && img.naturalWidth", tile) == 64
    job = studio.latest_job()
    assert job["state"] == "succeeded"
    assert [image["seed"] for image in job["result"]["images"]] == [7]

    page.click("#gallery .tile")
    infotext = page.inner_text("#viewer-infotext")
    assert infotext.startswith("a product photo of a red bottle")
    assert "Seed: 7" in infotext and "Size: 64x64" in infotext
    with page.expect_download() as download:
        page.click("#viewer-download")
    assert download.value.suggested_filename.startswith("7_")
    stored = studio.download(job["result"]["images"][0]["key"])
    with open(download.value.path(), "rb") as downloaded:
        assert downloaded.read() == stored

    page.click("#viewer-reuse-seed")
    page.click("#g-seed-random")
    assert page.input_value("#g-seed") == "-1"
    page.click("#g-seed-reuse")
    assert page.input_value("#g-seed") == "7"

    page.click("#gallery .tile")
    page.click("#viewer-to-img2img")
    page.wait_for_selector("#g-init-drop.has-image img[src^='blob:']")
    assert page.get_attribute("#tab-img2img", "aria-selected") == "true"


def test_hires_fix_from_the_txt2img_tab(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a yellow parka, studio light")
    fill(page, SMALL)
    page.click("#hires-section summary")
    page.check("#h-enable")
    page.fill("#h-scale", "1.5")
    assert page.inner_text("#h-size") == "Final size: 96×96"
    page.fill("#h-denoise", "0.1")  # too little for a 2-step second pass: the API says so at this field
    page.click("#g-submit")
    error = page.wait_for_selector("[data-field=hr_denoising_strength] .field-error")
    assert "denoising_strength" in error.inner_text()
    page.fill("#h-denoise", "0.6")
    page.select_option("#h-upscaler", "Lanczos")
    page.check("#g-tiling")
    page.click("#g-submit")
    tile = page.wait_for_selector("#gallery .tile img[src^='blob:']")
    assert page.evaluate("img => img.complete && img.naturalWidth", tile) == 96
    infotext = studio.latest_job()["result"]["images"][0]["infotext"]
    assert "Hires upscale: 1.5" in infotext and "Hires upscaler: Lanczos" in infotext
    assert "Tiling: True" in infotext


def test_a_prompt_saved_as_a_style_is_applied_to_the_next_generation(open_page, studio):
    page = open_page("txt2img")
    page.click("#styles-section summary")
    page.fill("#g-prompt", "{prompt}, product photo, softbox lighting")
    page.fill("#g-negative", "blurry")
    page.fill("#g-style-name", "Studio shot")
    page.click("#g-style-save")
    box = page.wait_for_selector("#g-styles input[value='Studio shot']")
    box.check()
    assert "1 on" in page.inner_text("#g-styles-count")
    page.fill("#g-prompt", "a yellow parka")
    page.fill("#g-negative", "")
    fill(page, SMALL)
    page.click("#g-submit")
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    infotext = studio.latest_job()["result"]["images"][0]["infotext"]
    assert infotext.startswith("a yellow parka, product photo, softbox lighting\nNegative prompt: blurry")
    studio.client.put("/api/styles", json={"styles": []})  # other tests start without styles


def test_the_viewer_upscales_an_image_for_download(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a red bottle")
    fill(page, SMALL)
    page.click("#g-submit")
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    page.click("#gallery .tile")
    page.select_option("#viewer-scale", "3")
    page.click("#viewer-upscale")
    page.wait_for_function("document.querySelector('#viewer-meta').textContent.includes('upscaled')")
    with page.expect_download() as download:
        page.click("#viewer-download")
    assert download.value.suggested_filename.endswith("-x3.png")
    with Image.open(download.value.path()) as upscaled:
        assert upscaled.size == (192, 192)


def test_an_xyz_plot_compares_settings_in_one_labelled_grid(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a red bottle")
    fill(page, SMALL)
    page.click("#xyz-section summary")
    page.select_option("#xyz-x-type", "Steps")
    page.fill("#xyz-x-values", "lots")
    page.click("#xyz-run")
    error = page.wait_for_selector("[data-field='script_args.x_values'] .field-error")
    assert "not a number" in error.inner_text()
    page.fill("#xyz-x-values", "1-2")
    page.select_option("#xyz-y-type", "CFG Scale")
    page.fill("#xyz-y-values", "3, 7")
    page.click("#xyz-run")
    grid = page.wait_for_selector("#gallery .xyz-result img")
    width, height = page.evaluate(
        "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])", grid
    )
    assert width > 128 and height > 128  # two by two 64 px cells, and the labels
    assert page.get_attribute("#gallery .xyz-result a", "download") == "xyz-grid.png"


def test_an_api_error_shows_next_to_the_field_that_caused_it(open_page, studio):
    page = open_page("txt2img")
    jobs_before = len(studio.client.get("/api/jobs", params={"limit": 1000}).json()["jobs"])
    page.fill("#g-prompt", "a bottle")
    fill(page, {**SMALL, "#g-width": "100"})
    page.click("#g-submit")
    error = page.wait_for_selector("[data-field=width] .field-error")
    assert "multiple of 8" in error.inner_text()
    assert page.get_attribute("#g-width", "aria-invalid") == "true"
    assert page.inner_text("[data-field=height]").count("multiple") == 0

    page.fill("#g-width", "64")
    page.fill("#g-prompt", "a bottle <lora:no-such-lora:0.8>")
    page.click("#g-submit")
    assert "no-such-lora" in page.wait_for_selector("[data-field=prompt] .field-error").inner_text()
    assert page.query_selector("[data-field=width] .field-error") is None
    assert len(studio.client.get("/api/jobs", params={"limit": 1000}).json()["jobs"]) == jobs_before


def test_dropping_an_a1111_png_fills_the_fields(open_page):
    page = open_page("txt2img")
    parameters = (
        "a yellow windbreaker, forest, (masterpiece:1.2)\n"
        "Negative prompt: blurry, watermark\n"
        "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, Size: 512x640, "
        "Model hash: 0123456789, Model: atelier-demo-sd15"
    )
    data = png_bytes(Image.new("RGB", (16, 16), "white"), parameters)
    transfer = page.evaluate_handle(
        """(encoded) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "a1111.png", { type: "image/png" }));
            return transfer;
        }""",
        b64(data),
    )
    page.dispatch_event("#g-negative", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.querySelector('#g-seed').value === '1234'")
    assert page.input_value("#g-prompt") == "a yellow windbreaker, forest, (masterpiece:1.2)"
    assert page.input_value("#g-negative") == "blurry, watermark"
    assert page.input_value("#g-steps") == "12"
    assert page.input_value("#g-cfg") == "5.5"
    assert page.input_value("#g-sampler") == "DPM++ 2M"
    assert page.input_value("#g-schedule") == "Karras"
    assert (page.input_value("#g-width"), page.input_value("#g-height")) == ("512", "640")
    assert page.get_attribute("#size-presets .preset[aria-pressed=true]", "aria-pressed") == "true"
    assert "4:5" in page.inner_text("#size-presets .preset[aria-pressed=true]")


def test_inpaint_with_an_uploaded_mask_keeps_the_unmasked_pixels(open_page, studio):
    page = open_page("inpaint")
    source = photo()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 60, 60))
    page.set_input_files("#i-image-file", files=[file_payload("photo.png", png_bytes(source))])
    page.wait_for_selector("#mask-editor[data-empty=false]")
    assert (page.input_value("#g-width"), page.input_value("#g-height")) == ("64", "64")
    page.click("label:has(input[name=mask_source][value=upload])")
    page.set_input_files("#i-mask-file", files=[file_payload("mask.png", png_bytes(mask))])
    page.fill("#g-prompt", "a blue label")
    fill(page, {"#g-steps": "2", "#g-seed": "11", "#i-mask-blur": "0", "#g-denoise": "0.9"})
    page.select_option("#i-fill", "original")
    page.click("#g-submit")
    job = wait_for_gallery(page, studio)

    out = np.asarray(result_image(studio, job))
    original = np.asarray(source)
    outside = np.asarray(mask) == 0
    assert out.shape == original.shape
    assert (out[outside] == original[outside]).all()
    assert (out[~outside] != original[~outside]).any()
    assert "Mask blur: 0" in job["result"]["images"][0]["infotext"]


def test_a_file_that_is_not_an_image_replaces_the_photo_and_blocks_generate(open_page, studio):
    page = open_page("inpaint")
    page.set_input_files("#i-image-file", files=[file_payload("photo.png", png_bytes(photo()))])
    page.wait_for_selector("#mask-editor[data-empty=false]")
    assert page.is_enabled("#g-submit")
    page.set_input_files("#i-image-file", files=[file_payload("notes.png", b"not a picture at all")])
    error = page.wait_for_selector("[data-field=inpaint_image] .field-error")
    assert "notes.png is not an image" in error.inner_text()
    # The previous photo is gone, so nothing can be generated from it by mistake.
    page.wait_for_selector("#mask-editor[data-empty=true]", state="attached")
    assert not page.is_enabled("#g-submit")
    page.click("#tab-txt2img")
    assert page.is_enabled("#g-submit")  # only the tab with the refused file is blocked
    page.click("#tab-inpaint")
    assert not page.is_enabled("#g-submit")
    page.set_input_files("#i-image-file", files=[file_payload("photo.png", png_bytes(photo()))])
    page.wait_for_selector("#mask-editor[data-empty=false]")
    assert page.is_enabled("#g-submit")


def test_a_painted_mask_repaints_only_where_the_brush_went(open_page, studio):
    page = open_page("inpaint")
    source = photo((96, 64))
    page.set_input_files("#i-image-file", files=[file_payload("photo.png", png_bytes(source))])
    canvas = page.wait_for_selector("#mask-editor[data-empty=false] canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    # A horizontal stroke across the middle of the picture.
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#g-prompt", "a green stripe")
    fill(page, {"#g-steps": "2", "#g-seed": "5", "#i-mask-blur": "0", "#g-denoise": "0.9"})
    page.click("#g-submit")
    job = wait_for_gallery(page, studio)

    sent = np.asarray(
        Image.open(io.BytesIO(studio.download(f"outputs/{job['id']}/inputs/mask.png"))).convert("L")
    )
    assert sent.shape == (64, 96)
    assert sent[32, 48] == 255  # under the stroke
    assert sent[2, 2] == 0 and sent[62, 94] == 0 and sent[32, 5] == 0
    painted = sent == 255
    out = np.asarray(result_image(studio, job))
    original = np.asarray(source)
    assert (out[~painted] == original[~painted]).all()
    assert (out[painted] != original[painted]).any()


def test_cancelling_a_running_job_and_a_queued_one_from_the_queue(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a very slow bottle")
    fill(page, {"#g-width": "256", "#g-height": "256", "#g-steps": "500", "#g-seed": "1"})
    page.click("#g-submit")
    entry = page.wait_for_selector("#jobs-strip .job-entry")
    page.wait_for_function("document.querySelector('#jobs-strip .status-line').textContent.includes('step')")
    # The live preview forms in the job's entry while it runs.
    page.wait_for_selector("#jobs-strip .job-entry .live-preview[src^='data:image/jpeg']", state="visible")
    running_id = entry.get_attribute("data-job")
    queued_id = studio.client.post(
        "/api/generate", json={"prompt": "waits", "steps": 500, "width": 256, "height": 256}
    ).json()["id"]

    page.click("#tab-queue")
    row = page.wait_for_selector(f"#queue-table tr[data-job='{queued_id}']")
    assert "next in line" in row.inner_text()
    page.click(f"#queue-table tr[data-job='{queued_id}'] button")
    page.wait_for_selector(f"#queue-table tr[data-job='{queued_id}'][data-state=canceled]")

    page.click("#tab-txt2img")
    page.click(f"#jobs-strip .job-entry[data-job='{running_id}'] [data-action=cancel]")
    wait_for(lambda: studio.client.get(f"/api/jobs/{running_id}").json()["state"] == "canceled", timeout=20)
    page.wait_for_function(
        f"document.querySelector(\"#jobs-strip .job-entry[data-job='{running_id}']\")?.dataset.state === 'canceled'"
    )
    assert studio.client.get(f"/api/jobs/{queued_id}").json()["state"] == "canceled"


def test_training_from_images_and_typed_captions_makes_a_lora_for_the_picker(open_page, studio):
    pytest.importorskip("atelier.training.recipe")
    page = open_page("training")
    colours = ["yellow", "orange", "gold", "khaki"]
    files = [
        file_payload(f"{colour}.png", png_bytes(Image.new("RGB", (64, 64), colour))) for colour in colours
    ]
    page.set_input_files("#t-images", files=files)
    captions = page.query_selector_all("#t-caption-list textarea")
    assert len(captions) == 4
    for textarea, colour in zip(captions, colours, strict=True):
        textarea.fill(f"a {colour} windbreaker")
    page.fill("#t-name", "ui-windbreaker")
    page.fill("#t-trigger", "oue")
    # One epoch of four images in batches of two: two steps.
    page.fill("[data-option=max_train_epochs]", "1")
    page.fill("[data-option=resolution]", "64")
    page.fill("[data-option=train_batch_size]", "2")
    page.fill("[data-option=network_dim]", "4")
    page.click("#training-advanced summary")
    fill(
        page,
        {
            "[data-option=min_bucket_reso]": "32",
            "[data-option=max_bucket_reso]": "128",
            "[data-option=bucket_reso_steps]": "32",
            "[data-option=max_data_loader_n_workers]": "0",
            "[data-option=num_repeats]": "1",
            "[data-option=seed]": "1",
            "[data-option=sample_prompts]": "oue, a yellow windbreaker --w 64 --h 64 --s 2 --d 1",
        },
    )
    page.click("#t-submit")
    page.wait_for_selector("#t-use-wrap:not([hidden])", timeout=120_000)
    job = studio.latest_job("train")
    assert job["state"] == "succeeded", job["error"]
    # The upload queued exactly one run: the bucket watcher did not start another for the same zip.
    time.sleep(3 * studio.server.config.settle_seconds)
    train_jobs = studio.client.get("/api/jobs", params={"kind": "train"}).json()["jobs"]
    assert [found["id"] for found in train_jobs] == [job["id"]]
    assert job["result"]["model"]["name"] == "ui-windbreaker"
    assert page.inner_text("#t-run-state") == "succeeded"
    assert page.query_selector_all("#t-loss-chart path.chart-line")
    sample = page.wait_for_selector("#t-samples figure:has(img[src^='blob:'])")
    assert sample.inner_text() == "epoch 1"

    stored = studio.server.studio.storage.get_bytes("training-data/ui-windbreaker.zip")
    with zipfile.ZipFile(io.BytesIO(stored)) as archive:
        texts = sorted(archive.read(name).decode() for name in archive.namelist() if name.endswith(".txt"))
    assert texts == sorted(f"oue, a {colour} windbreaker" for colour in colours)

    page.click("#t-use-lora")
    assert page.get_attribute("#tab-txt2img", "aria-selected") == "true"
    assert "<lora:ui-windbreaker:0.8>" in page.input_value("#g-prompt")
    assert "oue" in page.input_value("#g-prompt")
    assert "ui-windbreaker" in page.inner_text("#g-lora")


def test_history_pages_through_past_generations(open_page, studio):
    for seed in range(26):
        studio.client.post(
            "/api/generate",
            json={"prompt": f"bottle {seed}", "steps": 1, "width": 64, "height": 64, "seed": seed},
        )
    wait_for(
        lambda: (
            len(
                studio.client.get(
                    "/api/jobs", params={"state": "succeeded", "kind": "generate", "limit": 1000}
                ).json()["jobs"]
            )
            >= 26
        ),
        timeout=90,
    )
    page = open_page("history")
    page.wait_for_selector("#history-grid .history-card img[src^='blob:']")
    assert len(page.query_selector_all("#history-grid .history-card")) == 24
    first_page = page.get_attribute("#history-grid .history-card", "data-job")
    page.click("#history-pager [data-page=older]")
    page.wait_for_function(
        f"document.querySelector('#history-grid .history-card')?.dataset.job !== '{first_page}'"
    )
    assert page.inner_text("#history-pager .pager-label") == "Page 2"
    assert page.is_disabled("#history-pager [data-page=newer]") is False
    page.click("#history-grid .history-card")
    assert "Steps:" in page.inner_text("#viewer-infotext")


def test_models_tab_lists_the_demo_with_its_warning_and_takes_uploads(open_page, studio, tmp_path):
    page = open_page("models")
    row = page.wait_for_selector("#models-table tr[data-model='atelier-demo-sd15']")
    text = row.inner_text()
    assert "demo: random weights" in text and "sd15" in text and "Checkpoint" in text
    page.set_input_files(
        "#model-file", files=[file_payload("notes.safetensors", b"not a model", "application/octet-stream")]
    )
    page.click("#model-upload-form button[type=submit]")
    error = page.wait_for_selector("#model-upload-form [data-field=file] .field-error")
    assert error.inner_text()


def test_the_page_asks_for_an_api_key_when_the_studio_requires_one(open_page, studio):
    keys = studio.server.studio.keys
    _record, secret = keys.create("ui-test")
    try:
        wait_for(lambda: studio.client.get("/api/models").status_code == 401, timeout=5)
        page = open_page("models", ready="needs-key")
        assert page.is_visible("#key-dialog")
        page.fill("#key-input", "atk_wrong")
        page.click("#key-form button[type=submit]")
        assert "did not accept" in page.wait_for_selector("#key-form .field-error").inner_text()
        page.fill("#key-input", secret)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#models-table tr[data-model='atelier-demo-sd15']")
        # The table fills before /api/whoami answers and the dialog closes: wait for the close, not a snapshot.
        page.wait_for_selector("#key-dialog", state="hidden", timeout=5000)
        assert page.evaluate("localStorage.getItem('atelier.apiKey')") == secret
    finally:
        keys.revoke("ui-test")
        wait_for(lambda: studio.client.get("/api/models").status_code == 200, timeout=5)


def show_something(page, tab: str) -> None:
    """Put the tab in the state a user looks at: an image loaded, a mask painted, a run selected."""
    if tab == "img2img":
        page.set_input_files("#g-init-file", files=[file_payload("photo.png", png_bytes(photo((96, 64))))])
        page.wait_for_selector("#g-init-drop.has-image")
    elif tab == "inpaint":
        page.set_input_files("#i-image-file", files=[file_payload("photo.png", png_bytes(photo((96, 64))))])
        canvas = page.wait_for_selector("#mask-editor[data-empty=false] canvas")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.4)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.6, steps=6)
        page.mouse.up()
    elif tab == "training":
        page.wait_for_selector("#t-runs li")
        if page.query_selector("#t-runs .run-item"):
            page.click("#t-runs .run-item")
            page.wait_for_selector("#t-run-state:not([hidden])")
            page.wait_for_timeout(500)
    elif tab == "history":
        page.wait_for_selector("#history-grid .history-card img[src^='blob:']")


@pytest.mark.parametrize(
    "size",
    [(390, 844), (768, 1024), (1366, 768), (1920, 1080)],
    ids=["phone-390", "tablet-768", "1366x768", "1920x1080"],
)
def test_every_tab_is_labelled_fits_the_window_and_is_screenshotted(open_page, studio, artifacts, size):
    width, height = size
    page = open_page("txt2img", width=width, height=height)
    page.fill("#g-prompt", "a product photo of a yellow windbreaker, forest, (masterpiece:1.2)")
    fill(page, SMALL)
    page.click("#g-submit")
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    page.click("#gallery .tile")
    page.wait_for_selector("#viewer-image[src^='blob:']")
    page.screenshot(path=str(artifacts / f"viewer-{width}x{height}.png"))
    page.keyboard.press("Escape")
    for tab in TABS:
        # Every tab is on screen, whole, at every width: reachable with one tap, no strip to scroll.
        box = page.locator(f"#tab-{tab}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (tab, box)
        page.click(f"#tab-{tab}")
        show_something(page, tab)
        page.wait_for_timeout(300)
        problems = page.evaluate(
            """() => {
                const shown = (el) => el.getClientRects().length > 0;
                const unlabelled = [...document.querySelectorAll("main input, main select, main textarea")]
                    .filter((el) => shown(el) || el.classList.contains("visually-hidden"))
                    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
                    .map((el) => el.id || el.outerHTML.slice(0, 60));
                const overflow = document.documentElement.scrollWidth > window.innerWidth;
                return { unlabelled, overflow };
            }"""
        )
        assert problems == {"unlabelled": [], "overflow": False}, (tab, problems)
        page.screenshot(path=str(artifacts / f"{tab}-{width}x{height}.png"))
    # Keyboard use: arrows move between tabs, and the focused one shows a ring.
    page.focus("#tab-models")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute("#tab-training", "aria-selected") == "true"
    focused = page.evaluate(
        "[document.activeElement.id, getComputedStyle(document.activeElement).outlineStyle]"
    )
    assert focused == ["tab-training", "solid"]
