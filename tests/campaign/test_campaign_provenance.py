"""Ads, contact-sheet grids and catalog batches carry their AI disclosure, and credentials when signed."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from PIL import Image

from atelier.campaign.ad import load_ad_spec, parse_channel
from atelier.campaign.ad.spec import METADATA_KEY
from atelier.campaign.contact_sheet import SHEET_MARKER, build_contact_sheet
from atelier.engine import ContentSigner, Provenance, declared_source_type, encode_image, read_credentials
from c2pa_helpers import COMPOSITE, GENERATED, make_test_ca, strict_source_type, xmp_of

MIXED = "http://cv.iptc.org/newscodes/digitalsourcetype/composite"


def _generated_material(path, source_type=GENERATED) -> None:
    """Turn a spec folder's material into an Atelier output (a picture with its XMP disclosure)."""
    with Image.open(path) as image:
        path.write_bytes(encode_image(image.convert("RGB"), Provenance(source_type)))


def test_an_ad_with_a_generated_material_is_a_signed_ai_composite(tmp_path, spec_folder):
    from atelier.campaign.ad import compose_ad

    ca = make_test_ca()
    folder = tmp_path / "spec"
    spec = load_ad_spec(spec_folder(folder))
    _generated_material(folder / "forest.png")
    spec = replace(spec, channels=(parse_channel("200x120"),))
    signer = ContentSigner(ca.chain_pem, private_key=ca.key_pem)
    result = compose_ad(spec, tmp_path / "out", make_video=False, signer=signer)

    png = result.channels[0].path.read_bytes()
    assert strict_source_type(xmp_of(png)) == COMPOSITE
    with Image.open(io.BytesIO(png)) as image:
        assert json.loads(image.text[METADATA_KEY])["materials"] == ["forest.png", "model.png", "rain.png"]
    summary = read_credentials(png, trust_anchors=ca.ca_pem).summary()
    assert summary["trusted"]
    assert summary["actions"] == ["c2pa.created", *["c2pa.placed"] * 4]  # three materials and the logo
    assert [item["title"] for item in summary["ingredients"]] == [
        "forest.png",
        "model.png",
        "rain.png",
        "logo.png",
    ]

    gif = result.gif_path.read_bytes()
    assert declared_source_type(gif) == COMPOSITE
    assert read_credentials(gif, trust_anchors=ca.ca_pem).trusted
    with Image.open(result.gif_path) as image:
        assert image.n_frames > 1


def test_an_ad_of_plain_photos_makes_no_ai_claim(tmp_path, spec_folder):
    from atelier.campaign.ad import compose_ad

    spec = replace(load_ad_spec(spec_folder(tmp_path / "spec")), channels=(parse_channel("120x120"),))
    result = compose_ad(spec, tmp_path / "out", make_video=False)
    assert strict_source_type(xmp_of(result.channels[0].path.read_bytes())) == MIXED
    assert declared_source_type(result.gif_path.read_bytes()) == MIXED


def test_a_contact_sheet_grid_of_outputs_is_an_ai_composite(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "1.png").write_bytes(encode_image(Image.new("RGB", (32, 32)), Provenance(GENERATED)))
    Image.new("RGB", (32, 32), (9, 9, 9)).save(outputs / "photo.png")
    build_contact_sheet(outputs, png_path=tmp_path / "grid.png")
    grid = (tmp_path / "grid.png").read_bytes()
    assert strict_source_type(xmp_of(grid)) == COMPOSITE
    with Image.open(tmp_path / "grid.png") as image:
        assert SHEET_MARKER in image.text


def test_a_catalog_batch_writes_signed_jpegs_naming_the_product_photo(tmp_path, tiny_models, monkeypatch):
    from atelier.cli import main

    ca = make_test_ca()
    chain, key, ca_file = ca.write(tmp_path / "keys")
    monkeypatch.setenv("ATELIER_C2PA_CERT", str(chain))
    monkeypatch.setenv("ATELIER_C2PA_KEY", str(key))
    Image.new("RGB", (64, 64), (90, 120, 30)).save(tmp_path / "jacket.png")
    (tmp_path / "catalog.csv").write_text("sku,image,product\nJKT-1,jacket.png,windbreaker\n")
    (tmp_path / "scenes.toml").write_text(
        '[[scene]]\nname = "forest"\nprompt = "a {product}"\nwidth = 64\nheight = 64\nsteps = 2\nseeds = [1]\n'
    )
    out = tmp_path / "out"
    argv = ["batch", str(tmp_path / "catalog.csv"), "--scenes", str(tmp_path / "scenes.toml")]
    argv += ["--model", str(tiny_models("sd15")), "--out", str(out), "--format", "jpeg", "--no-progress"]
    assert main(argv) == 0
    [made] = out.glob("JKT-1/forest/*.jpg")
    data = made.read_bytes()
    assert strict_source_type(xmp_of(data)) == COMPOSITE
    summary = read_credentials(data, trust_anchors=ca_file.read_text()).summary()
    assert summary["trusted"]
    assert summary["ingredients"] == [
        {"title": "jacket.png", "relationship": "parentOf", "credentials": False}
    ]
    assert json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["file"].endswith(".jpg")
