"""The Product shot tab: a cut-out photo previewed with its mask, the mask edited, shots generated around the
product (with a channel and an upscale), errors at their field, and the layout at phone, tablet and desktop."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from ui_helpers import png_bytes

from product_helpers import opaque_photo, write_tiny_sam

# The tiny demo model (SD 1.5) at its smallest: a shot, its channel and its upscale take about a second.
SMALL = {"#p-width": "64", "#p-height": "64", "#p-steps": "2", "#p-seed": "5", "#p-count": "1"}
# The product: a red bottle on transparency, left of the middle of a 96 px square.
PHOTO_SIZE = 96
BOTTLE = (24, 16, 56, 84)


def cutout_png() -> bytes:
    image = Image.new("RGBA", (PHOTO_SIZE, PHOTO_SIZE), (0, 0, 0, 0))
    ImageDraw.Draw(image).rounded_rectangle(BOTTLE, radius=10, fill=(190, 40, 40, 255))
    return png_bytes(image)


def choose_photo(page, data: bytes | None = None) -> None:
    photo = {"name": "bottle.png", "mimeType": "image/png", "buffer": data or cutout_png()}
    page.set_input_files("#p-photo", files=[photo])
    page.wait_for_selector("#p-photo-drop.has-image img[src^='blob:']")


def cut_out(page) -> None:
    page.click("#p-cutout")
    page.wait_for_selector("#p-cutout-figure:not([hidden]) #p-cutout-image[src^='blob:']")
    page.wait_for_function("document.querySelector('#p-cutout-image').naturalWidth > 0")


def fill_small(page, channel: str = "96x64") -> None:
    for selector, value in SMALL.items():
        page.fill(selector, value)
    page.fill("#p-custom", channel)


def mask_painted_share(page) -> float:
    """The share of the mask canvas painted as product (opaque pixels)."""
    return page.evaluate(
        """() => {
            const canvas = document.querySelector('#p-mask-editor canvas');
            const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
            let painted = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) painted += 1;
            return painted / (canvas.width * canvas.height);
        }"""
    )


def decode(data_url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("L")


def test_a_cut_out_is_previewed_edited_and_shots_come_back_by_kind(open_page, studio):
    page = open_page("product")
    page.wait_for_selector("#p-scene option[value=studio]", state="attached")
    page.wait_for_selector("#p-channels input[value=story]")
    assert page.input_value("#p-width") == "512"  # the demo model is SD 1.5
    choose_photo(page)
    cut_out(page)
    assert page.inner_text("#p-cutout-status") == "Cut out."
    # The cut-out is the product alone: the bottle's box (PIL's boxes include their last pixel).
    cut_size = page.eval_on_selector("#p-cutout-image", "img => [img.naturalWidth, img.naturalHeight]")
    assert cut_size == [BOTTLE[2] - BOTTLE[0] + 1, BOTTLE[3] - BOTTLE[1] + 1]
    bottle_share = (BOTTLE[2] - BOTTLE[0]) * (BOTTLE[3] - BOTTLE[1]) / PHOTO_SIZE**2
    assert mask_painted_share(page) == pytest.approx(bottle_share, abs=0.03)
    assert page.inner_text("#p-seg-licence") == ""  # the alpha was the mask: no model, no licence

    # Subtract a stroke across the bottle's middle: the edited mask (white = product) is what is sent.
    page.check("input[name=p_mask_tool][value=eraser]", force=True)
    page.fill("#p-brush-size", "40")
    canvas = page.locator("#p-mask-editor canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    y = box["y"] + box["height"] * 50 / PHOTO_SIZE
    page.mouse.move(box["x"] + box["width"] * 10 / PHOTO_SIZE, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 70 / PHOTO_SIZE, y, steps=8)
    page.mouse.up()
    assert mask_painted_share(page) < bottle_share - 0.02

    fill_small(page)
    page.fill("#p-product", "a red glass bottle")
    page.select_option("#p-upscale", "1.5")
    with page.expect_request("**/api/product-shots") as posted:
        page.click("#p-submit")
    body = posted.value.post_data_json
    assert body["channels"] == ["96x64"] and body["upscale_by"] == 1.5 and body["steps"] == 2
    assert body["shadow"] == {"distance": 0.03, "softness": 0.04, "opacity": 0.35}
    assert body["product"] == "a red glass bottle" and body["scene"] == "studio"
    mask = decode(body["mask"])
    assert mask.size == (PHOTO_SIZE, PHOTO_SIZE)
    assert mask.getpixel((40, 30)) == 255 and mask.getpixel((40, 50)) == 0 and mask.getpixel((5, 5)) == 0

    page.wait_for_selector("#p-results figure[data-kind=upscale] img[src^='blob:']")
    kinds = page.eval_on_selector_all("#p-results figure", "figures => figures.map(f => f.dataset.kind)")
    assert kinds == ["shot", "channel", "upscale"]
    groups = page.eval_on_selector_all("#p-results section h3", "titles => titles.map(t => t.textContent)")
    assert groups == ["Shots", "Channels", "Upscaled"]
    sizes = page.eval_on_selector_all(
        "#p-results figure img",
        "imgs => Promise.all(imgs.map(i => i.decode().then(() => [i.naturalWidth, i.naturalHeight])))",
    )
    assert sizes == [[64, 64], [96, 64], [96, 96]]
    assert "reduced" in page.inner_text("#p-results figure[data-kind=shot] .product-note")
    assert page.get_attribute("#p-job-bar", "aria-valuenow") == "100"

    # A result opens in the viewer, and goes to the Ads tab as a material (its outputs key).
    page.click("#p-results figure[data-kind=channel] .product-open")
    page.wait_for_selector("#viewer-image[src^='blob:']")
    assert "Size: 96x64" in page.inner_text("#viewer-infotext")
    page.keyboard.press("Escape")
    shot_key = page.get_attribute("#p-results figure[data-kind=shot]", "data-key")
    page.click("#p-results figure[data-kind=shot] [data-action=ads]")
    assert page.get_attribute("#tab-ads", "aria-selected") == "true"
    page.wait_for_selector("#ads-materials li img[src^='blob:']")
    with page.expect_request("**/api/ads") as composed:
        page.fill("#ads-headline", "Clear glass")
        page.click("#ads-form button[type=submit]")
    assert composed.value.post_data_json["materials"] == [shot_key]


def test_an_opaque_photo_is_cut_out_by_the_segmentation_model_and_its_licence_shown(
    open_page, studio, tmp_path
):
    folder = write_tiny_sam(tmp_path / "tiny-sam", license_note='license = "apache-2.0"\nsource = "tests"\n')
    target = Path(studio.server.studio.storage.local_path("models/segmentation/tiny-sam"))
    if not target.exists():
        shutil.copytree(folder, target)
    page = open_page("product")
    page.wait_for_selector("#p-seg option[value=tiny-sam]", state="attached")
    photo, _mask = opaque_photo((120, 80))
    choose_photo(page, png_bytes(photo))
    with page.expect_request("**/api/product-shots") as cut:
        cut_out(page)
    assert "mask" not in cut.value.post_data_json and cut.value.post_data_json["cutout_only"] is True
    assert page.inner_text("#p-seg-licence") == (
        "Cut out by the segmentation model tiny-sam · licence: apache-2.0 · source: tests"
    )
    assert mask_painted_share(page) > 0
    # Generating sends the model's cut-out as the mask: the segmentation model is not run a second time.
    fill_small(page, channel="")
    with page.expect_request("**/api/product-shots") as posted:
        page.click("#p-submit")
    body = posted.value.post_data_json
    assert "segmentation_model" not in body
    assert decode(body["mask"]).size == (120, 80)
    page.wait_for_selector("#p-results figure[data-kind=shot] img[src^='blob:']")


def test_a_painted_mask_cuts_out_an_opaque_photo_and_is_sent_with_the_shots(open_page, studio):
    page = open_page("product")
    page.wait_for_selector("#p-channels input[value=story]")
    photo, _mask = opaque_photo((120, 80))
    choose_photo(page, png_bytes(photo))
    canvas = page.wait_for_selector("#p-mask-editor[data-empty=false] canvas")
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8, steps=6)
    page.mouse.up()
    with page.expect_request("**/api/product-shots") as cut:
        cut_out(page)
    painted = decode(cut.value.post_data_json["mask"])
    assert painted.getpixel((60, 44)) == 255 and painted.getpixel((5, 5)) == 0
    fill_small(page, channel="")
    with page.expect_request("**/api/product-shots") as posted:
        page.click("#p-submit")
    assert list(decode(posted.value.post_data_json["mask"]).getdata()) == list(painted.getdata())
    page.wait_for_selector("#p-results figure[data-kind=shot] img[src^='blob:']")


def test_an_unknown_custom_channel_is_shown_at_the_channels_field(open_page, studio):
    page = open_page("product")
    page.wait_for_selector("#p-channels input[value=story]")
    page.click("#p-submit")
    assert "Choose a product photo" in page.inner_text("[data-field=photo] .field-error")
    choose_photo(page)
    fill_small(page, channel="12x")
    page.click("#p-submit")
    error = page.wait_for_selector("[data-field=channels] .field-error")
    assert "12x" in error.inner_text()
    assert page.get_attribute("#p-custom", "aria-invalid") == "true"
    assert page.inner_text("#p-results").startswith("Generate to see")  # nothing was queued


@pytest.mark.parametrize(
    "size", [(390, 844), (820, 1180), (1366, 768)], ids=["phone-390", "tablet-820", "desktop-1366"]
)
def test_the_tab_fits_the_window_is_labelled_and_keyboard_reachable(open_page, studio, artifacts, size):
    width, height = size
    page = open_page("training", width=width, height=height)
    box = page.locator("#tab-product").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, box
    page.focus("#tab-training")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.id") == "tab-product"
    assert page.is_visible("#panel-product")
    page.wait_for_selector("#p-channels input[value=story]")
    choose_photo(page)
    cut_out(page)
    fill_small(page)
    page.select_option("#p-upscale", "1.5")
    page.click("#p-submit")
    page.wait_for_selector("#p-results figure[data-kind=upscale] img[src^='blob:']")
    problems = page.evaluate(
        """() => {
            const shown = (el) => el.getClientRects().length > 0;
            const unlabelled = [...document.querySelectorAll("#panel-product input, #panel-product select, #panel-product textarea")]
                .filter((el) => shown(el) || el.classList.contains("visually-hidden"))
                .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
                .map((el) => el.id || el.outerHTML.slice(0, 60));
            const overflow = document.documentElement.scrollWidth > window.innerWidth;
            const wide = [...document.querySelectorAll("#panel-product *")]
                .filter((el) => shown(el) && el.getBoundingClientRect().right > window.innerWidth + 1)
                .map((el) => el.id || el.className || el.tagName);
            return { unlabelled, overflow, wide };
        }"""
    )
    assert problems == {"unlabelled": [], "overflow": False, "wide": []}, problems
    # Every control of the form is reachable with Tab (none is taken out of the order).
    skipped = page.eval_on_selector_all(
        "#product-form button, #product-form input, #product-form select, #product-form textarea",
        "els => els.filter(el => el.tabIndex < 0).map(el => el.id || el.name)",
    )
    assert skipped == []
    page.screenshot(path=str(artifacts / f"product-{width}x{height}.png"))
    if width == 1366:
        # The README's picture of the tab: a tall window, so the cut-out, its mask and the results show.
        page.set_viewport_size({"width": width, "height": 1100})
        page.evaluate("document.querySelector('#panel-product').scrollTop = 0")
        page.wait_for_timeout(300)
        page.screenshot(path=str(artifacts / "studio-product.png"))
