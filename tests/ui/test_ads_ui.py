"""The Ads tab: pick a generated image, write copy, compose, preview the PNGs and the GIF."""

from __future__ import annotations

from ui_helpers import wait_for

SMALL = {"prompt": "a yellow windbreaker in a forest", "steps": 2, "width": 64, "height": 64, "seed": 5}


def generated_key(studio):
    job_id = studio.client.post("/api/generate", json=SMALL).json()["id"]
    job = wait_for(lambda: (body := studio.client.get(f"/api/jobs/{job_id}").json())["finished_at"] and body)
    assert job["state"] == "succeeded"
    return job["result"]["images"][0]["key"]


def test_an_ad_is_composed_from_a_generated_image_and_previewed(open_page, studio):
    key = generated_key(studio)
    page = open_page("ads")
    page.click(f"#ads-gallery .ads-pick[data-key='{key}']")
    page.fill("#ads-headline", "Rain-ready. Trail-ready.")
    page.fill("#ads-cta", "Shop now")
    page.check("input[name=channel][value=banner]")
    page.click("#ads-form button[type=submit]")
    page.wait_for_selector("#ads-results figure[data-kind=image] img[src^='blob:']")
    sizes_script = "imgs => imgs.map(img => [img.naturalWidth, img.naturalHeight])"
    wait_for(
        lambda: (
            sorted(page.eval_on_selector_all("#ads-results figure[data-kind=image] img", sizes_script))
            == [[1080, 1080], [1200, 628]]
        )
    )
    page.wait_for_selector("#ads-results figure[data-kind=animation] img[src^='blob:']")
    with page.expect_download() as download:
        page.click("#ads-results a[data-name='ad.gif']")
    assert download.value.suggested_filename == "ad.gif"


def test_a_bad_custom_channel_is_shown_at_the_channels_field(open_page, studio):
    key = generated_key(studio)
    page = open_page("ads")
    page.click(f"#ads-gallery .ads-pick[data-key='{key}']")
    page.fill("#ads-headline", "Hello")
    page.fill("#ads-custom", "billboard")
    page.click("#ads-form button[type=submit]")
    error = page.wait_for_selector("[data-field=channels] .field-error")
    assert "billboard" in error.inner_text()
