"""The image viewer shows an output's AI disclosure and Content Credentials, and downloads it as JPEG."""

from __future__ import annotations

from c2pa_helpers import GENERATED, strict_source_type, xmp_of


def test_the_viewer_shows_the_disclosure_and_downloads_a_jpeg(open_page, studio):
    page = open_page("txt2img")
    page.fill("#g-prompt", "a product photo of a green bottle")
    for selector, value in {"#g-width": "64", "#g-height": "64", "#g-steps": "2", "#g-seed": "9"}.items():
        page.fill(selector, value)
    page.press("#g-prompt", "Control+Enter")
    page.wait_for_selector("#gallery .tile img[src^='blob:']")
    page.click("#gallery .tile")
    page.wait_for_function("!document.querySelector('#viewer-credentials').textContent.includes('…')")
    assert page.inner_text("#viewer-disclosure") == "AI-generated (trainedAlgorithmicMedia)"
    assert page.inner_text("#viewer-credentials") == "not signed"  # this studio has no certificate

    with page.expect_download() as download:
        page.click("#viewer-download-jpeg")
    assert download.value.suggested_filename.startswith("9_")
    assert download.value.suggested_filename.endswith(".jpg")
    with open(download.value.path(), "rb") as downloaded:
        data = downloaded.read()
    assert data.startswith(b"\xff\xd8")
    assert strict_source_type(xmp_of(data)) == GENERATED
