"""Licences, training rights and the audit trail in the Studio UI (issue 17): the Models tab's licence badges,
rights summaries and an admin's "Set licence", the pickers, the Training tab's Rights card, and the viewer's
Provenance panel. The page uses the public API only; these tests drive it against a real studio."""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from datetime import date
from pathlib import Path

import pytest
from ui_helpers import wait_for

SIZES = [(390, 844), (820, 1180), (1366, 768)]
SMALL = {"#g-width": "64", "#g-height": "64", "#g-steps": "2", "#g-seed": "11"}
RIGHTS = {
    "owner": "Acme Retail GmbH",
    "depicts_people": True,
    "consent": [
        {"person": "Jane Doe", "reference": "MR-2026-014", "date": "2026-02-02"},
        {"person": "John Roe", "reference": "MR-2026-015", "date": "2026-02-03"},
    ],
}


def _with_metadata(path: Path, name: str, metadata: dict[str, str]) -> bytes:
    """The file at ``path`` with ``metadata`` added to its safetensors header (written as ``name`` beside it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        kept = dict(handle.metadata() or {})
    out = path.with_name(f"{name}.safetensors")
    save_file(load_file(path), out, metadata={**kept, **metadata})
    return out.read_bytes()


def _lora(base_model: Path, destination: Path) -> Path:
    """A small random LoRA for the tiny SD 1.5 model (the demo's shape), in diffusers' file layout."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from safetensors.torch import save_file

    pipeline = StableDiffusionPipeline.from_pretrained(str(base_model))
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    pipeline.unet.add_adapter(config, adapter_name="test")
    state = get_peft_model_state_dict(pipeline.unet, adapter_name="test")
    save_file({f"unet.{key}": value.contiguous() for key, value in state.items()}, destination)
    return destination


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory) -> dict[str, bytes]:
    """A single-file checkpoint (plain, and naming a non-commercial licence) and LoRAs with and without rights."""
    from atelier.engine.convert import save_single_file

    root = tmp_path_factory.mktemp("rights-ui")
    checkpoint = save_single_file(tiny_models("sd15"), root / "checkpoint.safetensors", "sd15")
    lora = _lora(tiny_models("sd15"), root / "lora.safetensors")
    rights = {"atelier.rights": json.dumps(RIGHTS)}
    return {
        "checkpoint": checkpoint.read_bytes(),
        "checkpoint-nc": _with_metadata(checkpoint, "nc", {"modelspec.license": "cc-by-nc-4.0"}),
        "lora-rights": _with_metadata(lora, "rights", {**rights, "modelspec.license": "mit"}),
        "lora-bare": lora.read_bytes(),
        "lora-audit": _with_metadata(
            lora, "audit", {**rights, "modelspec.license": "apache-2.0", "ss_output_name": "audit"}
        ),
    }


def _upload(studio, filename: str, data: bytes, **params: str) -> dict:
    answer = studio.client.put(f"/api/models/{filename}", params=params, content=data)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _layout_problems(page, panel: str) -> dict:
    """Unlabelled controls and anything wider than the window (a table scrolls inside its own card)."""
    return page.evaluate(
        """(panel) => {
            const shown = (el) => el.getClientRects().length > 0;
            const root = document.querySelector(panel);
            const unlabelled = [...root.querySelectorAll("input, select, textarea")]
                .filter((el) => shown(el) || el.classList.contains("visually-hidden"))
                .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute("aria-label"))
                .map((el) => el.id || el.outerHTML.slice(0, 60));
            const overflow = document.documentElement.scrollWidth > window.innerWidth;
            const wide = [...root.querySelectorAll("*")]
                .filter((el) => shown(el) && !el.closest(".table-card"))
                .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
                .map((el) => el.id || el.className || el.tagName);
            return { unlabelled, overflow, wide };
        }""",
        panel,
    )


def _fits(page, tab: str, panel: str, artifacts: Path) -> None:
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)
        problems = _layout_problems(page, panel)
        assert problems == {"unlabelled": [], "overflow": False, "wide": []}, (tab, width, problems)
        page.screenshot(path=str(artifacts / f"rights-{tab}-{width}x{height}.png"))


def _row_text(page, name: str, column: str) -> str:
    return page.inner_text(f"#models-table tr[data-model='{name}'] .{column}-cell")


def test_models_show_licences_and_rights_and_an_admin_records_a_licence(open_page, studio, files, artifacts):
    _upload(studio, "ui-openrail.safetensors", files["checkpoint"], license="creativeml-openrail-m")
    _upload(studio, "ui-noncommercial.safetensors", files["checkpoint-nc"])
    _upload(studio, "ui-consented.safetensors", files["lora-rights"])
    _upload(studio, "ui-norights.safetensors", files["lora-bare"])
    try:
        page = open_page("models")
        page.wait_for_selector("#models-table tr[data-model='ui-norights']")
        assert _row_text(page, "ui-openrail", "license").startswith("✓ commercial\ncreativeml-openrail-m")
        # A studio without keys is its own admin: the uploader's word is recorded as an admin's.
        assert "recorded by an admin" in page.get_attribute(
            "#models-table tr[data-model='ui-openrail'] .license", "title"
        )
        assert _row_text(page, "ui-noncommercial", "license").startswith("✕ non-commercial\ncc-by-nc-4.0")
        assert _row_text(page, "atelier-demo-sd15", "license").startswith("? licence unknown\nnone recorded")
        assert _row_text(page, "ui-consented", "rights") == "Acme Retail GmbH · people: yes, 2 consents"
        assert "Jane Doe · MR-2026-014 · 2026-02-02" in page.get_attribute(
            "#models-table tr[data-model='ui-consented'] .rights-summary", "title"
        )
        assert _row_text(page, "ui-norights", "rights") == "no rights record"
        assert _row_text(page, "ui-openrail", "rights") == "—"
        _fits(page, "models", "#panel-models", artifacts)

        # The studio has no keys, so the page acts as its admin: each row offers "Set licence".
        page.set_viewport_size({"width": 1366, "height": 768})
        page.click("#models-table tr[data-model='ui-noncommercial'] .license-set")
        assert page.input_value("#license-name") == "cc-by-nc-4.0"
        page.fill("#license-name", "   ")
        page.click("#license-form button[type=submit]")
        error = page.wait_for_selector("#license-form [data-field=license] .field-error")
        assert "creativeml-openrail-m" in error.inner_text()  # the API's answer, at its field
        page.fill("#license-name", "cc-by-nc-4.0")
        page.select_option("#license-use", "commercial")
        page.fill("#license-note", "agreement 7 with the maker")
        page.click("#license-form button[type=submit]")
        page.wait_for_selector("#license-dialog", state="hidden")
        page.wait_for_function(
            "document.querySelector(\"#models-table tr[data-model='ui-noncommercial'] .license\").dataset.use"
            " === 'commercial'"
        )
        assert _row_text(page, "ui-noncommercial", "license").startswith("✓ commercial\ncc-by-nc-4.0")
        title = page.get_attribute("#models-table tr[data-model='ui-noncommercial'] .license", "title")
        assert "recorded by an admin" in title and "agreement 7 with the maker" in title
        stored = studio.client.get("/api/models", params={"kind": "checkpoint"}).json()["models"]
        assert {m["name"]: m["license"]["use"] for m in stored}["ui-noncommercial"] == "commercial"

        # The Generate tab's pickers say what each licence allows, and a LoRA whether its rights are on file.
        page.click("#tab-txt2img")
        models = page.eval_on_selector_all("#g-model option", "els => els.map((el) => el.textContent)")
        assert "ui-openrail · sd15 · commercial" in models
        assert "ui-noncommercial · sd15 · commercial" in models
        assert "atelier-demo-sd15 · sd15 · demo · licence unknown" in models
        loras = page.eval_on_selector_all("#g-lora option", "els => els.map((el) => el.textContent)")
        assert "ui-consented · sd15 · commercial · people, 2 consents" in loras
        assert "ui-norights · sd15 · licence unknown · no rights record" in loras
        _fits(page, "txt2img", "#panel-generate", artifacts)
    finally:
        for name in ("ui-openrail", "ui-noncommercial"):
            studio.client.delete(f"/api/models/{name}", params={"kind": "checkpoint"})


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("001.txt", "a parka")
    return buffer.getvalue()


def test_the_rights_card_sends_a_rights_table_and_shows_a_missing_consent_there(open_page, studio, artifacts):
    page = open_page("training")
    zips: list[str] = []

    def fake_zip_upload(route):
        # The zip never reaches the studio (it would start a training run): the .toml before it does.
        zips.append(route.request.url)
        route.fulfill(status=201, content_type="application/json", body=json.dumps({"key": "x", "job": None}))

    page.route("**/api/training-data/*.zip*", fake_zip_upload)
    page.click("#t-data-source label:has(input[value=zip])")
    page.set_input_files(
        "#t-zip", files=[{"name": "set.zip", "mimeType": "application/zip", "buffer": _zip_bytes()}]
    )
    page.fill("#t-name", "ui-rights-run")
    # A studio that requires a record (require_training_rights) refuses the .toml naming "rights": the card
    # shows it. The answer is made up here; the session's studio does not require one.
    refusal = {"detail": "this studio requires a rights record with training data", "field": "rights"}
    page.route(
        "**/api/training-data/*.toml*",
        lambda route: route.fulfill(status=422, content_type="application/json", body=json.dumps(refusal)),
        times=1,
    )
    page.click("#t-submit")
    error = page.wait_for_selector("#t-rights-card [data-field=rights] > .field-error")
    assert error.inner_text() == refusal["detail"]
    page.fill("#t-rights-owner", "Acme Retail GmbH")
    page.check("#t-rights-people")
    page.wait_for_selector("#t-consent-list .consent-row")  # one empty row to fill
    _fits(page, "training", "#panel-training", artifacts)
    page.set_viewport_size({"width": 1366, "height": 768})

    # People shown, nobody's consent: the studio refuses the .toml, and says so at the card.
    page.click("#t-submit")
    error = page.wait_for_selector("#t-consent-field > .field-error")
    assert "depict people" in error.inner_text() and "consent" in error.inner_text()
    assert page.get_attribute("#t-consent-field", "class").count("has-error") == 1
    assert zips == []

    row = "#t-consent-list .consent-row"
    page.fill(f"{row}:nth-child(1) [data-consent=person]", "Jane Doe")
    page.fill(f"{row}:nth-child(1) [data-consent=reference]", "MR-2026-014")
    page.fill(f"{row}:nth-child(1) [data-consent=date]", "2026-02-02")
    page.click("#t-consent-add")
    page.fill(f"{row}:nth-child(2) [data-consent=person]", "John Roe")
    page.fill(f"{row}:nth-child(2) [data-consent=reference]", "MR-2026-015")
    page.click("#t-submit")
    # A consent without its date: the API names rights.consent[1].date, shown at that row's field.
    error = page.wait_for_selector(f"{row}:nth-child(2) [data-role=date] .field-error")
    assert "rights.consent[1].date" in error.inner_text()
    page.fill(f"{row}:nth-child(2) [data-consent=date]", "2026-02-03")
    page.click("#t-submit")
    page.wait_for_selector(".toast:has-text('ui-rights-run.zip is stored')")  # the faked answer of the zip
    assert len(zips) == 1 and not page.query_selector("#train-form .field-error")

    storage = studio.server.studio.storage
    try:
        sent = tomllib.loads(storage.get_bytes("training-data/ui-rights-run.toml").decode("utf-8"))
    finally:
        storage.delete("training-data/ui-rights-run.toml")
    assert sent["rights"] == {
        "owner": "Acme Retail GmbH",
        "depicts_people": True,
        "consent": [
            {"person": "Jane Doe", "reference": "MR-2026-014", "date": date(2026, 2, 2)},
            {"person": "John Roe", "reference": "MR-2026-015", "date": date(2026, 2, 3)},
        ],
    }
    assert sent["preset"] == "sd15-lora"  # the run's own settings stay at the top level


def test_the_viewer_shows_who_asked_and_what_made_the_picture(open_page, studio, files, artifacts):
    _upload(studio, "ui-audit-lora.safetensors", files["lora-audit"])
    keys = studio.server.studio.keys
    _record, secret = keys.create("ui-legal", role="admin")
    try:
        wait_for(lambda: studio.client.get("/api/models").status_code == 401, timeout=5)
        page = open_page("txt2img", ready="needs-key")
        page.fill("#key-input", secret)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-dialog", state="hidden", timeout=10_000)
        page.wait_for_selector("#g-model option[value='atelier-demo-sd15']", state="attached")
        page.select_option("#g-model", "atelier-demo-sd15")
        page.fill("#g-prompt", "a navy parka <lora:ui-audit-lora:0.8>")
        for selector, value in SMALL.items():
            page.fill(selector, value)
        page.click("#g-submit")
        page.wait_for_selector("#gallery .tile img[src^='blob:']", timeout=60_000)
        page.click("#gallery .tile")
        panel = "#viewer-provenance"
        page.wait_for_function(
            f"document.querySelector('{panel} [data-row=asked-by]').textContent.startsWith('ui-legal')"
        )
        assert not page.is_visible(f"{panel} [data-row=checkpoint]")  # collapsed until asked
        summary = page.inner_text(f"{panel} summary")
        assert "ui-legal" in summary and "1 LoRA" in summary
        page.click(f"{panel} summary")
        assert page.inner_text(f"{panel} [data-row=asked-by]").startswith("ui-legal")
        checkpoint = page.inner_text(f"{panel} [data-row=checkpoint]")
        assert "atelier-demo-sd15" in checkpoint and "licence unknown" in checkpoint
        lora = page.inner_text(f"{panel} [data-row=loras]")
        assert "ui-audit-lora ×0.8" in lora and "commercial" in lora and "apache-2.0" in lora
        assert "Rights: Acme Retail GmbH · people: yes, 2 consents" in lora
        assert "Jane Doe · MR-2026-014 · 2026-02-02" in lora
        settings = page.inner_text(f"{panel} [data-row=settings]")
        assert "steps 2" in settings and "seed 11" in settings
        for width, height in ((390, 844), (1366, 768)):
            page.set_viewport_size({"width": width, "height": height})
            page.wait_for_timeout(150)
            fits = page.evaluate(
                """() => {
                    const side = document.querySelector('#viewer .viewer-side');
                    return document.documentElement.scrollWidth <= window.innerWidth
                        && side.scrollWidth <= side.clientWidth + 1;
                }"""
            )
            assert fits, width
            page.screenshot(path=str(artifacts / f"rights-viewer-{width}x{height}.png"))
    finally:
        keys.revoke("ui-legal")
        wait_for(lambda: studio.client.get("/api/models").status_code == 200, timeout=5)
