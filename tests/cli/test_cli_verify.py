"""`atelier verify` and signed CLI outputs: `generate --format jpeg`, `ad`, with the key from ATELIER_C2PA_*."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from atelier.cli import main
from atelier.engine import ContentSigner, Provenance, encode_image
from c2pa_helpers import COMPOSITE, GENERATED, make_test_ca, pixel_tampered, strict_source_type, xmp_of


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def ca():
    return make_test_ca()


@pytest.fixture
def keys(tmp_path, ca, monkeypatch):
    """The test CA's files, with ATELIER_C2PA_CERT / _KEY pointing at them as a user would set them."""
    chain, key, ca_file = ca.write(tmp_path / "keys")
    monkeypatch.setenv("ATELIER_C2PA_CERT", str(chain))
    monkeypatch.setenv("ATELIER_C2PA_KEY", str(key))
    return ca_file


def test_verify_says_valid_trusted_tampered_or_none_with_its_exit_status(tmp_path, ca, keys, capsys):
    signer = ContentSigner(ca.chain_pem, private_key=ca.key_pem)
    signed = tmp_path / "signed.png"
    signed.write_bytes(encode_image(Image.new("RGB", (16, 16)), Provenance(GENERATED), signer=signer))

    code, out, _ = _run(capsys, "verify", str(signed))
    assert code == 0
    assert "AI disclosure (XMP): trainedAlgorithmicMedia" in out
    assert "valid (file unchanged since signing); signer not trusted" in out
    assert _run(capsys, "verify", str(signed), "--require-trust")[0] == 1

    code, out, _ = _run(capsys, "verify", str(signed), "--trust", str(keys), "--require-trust", "--json")
    answer = json.loads(out)
    assert code == 0
    assert answer["credentials"]["state"] == "Trusted"
    assert answer["digital_source_type"] == GENERATED

    tampered = tmp_path / "tampered.png"
    tampered.write_bytes(pixel_tampered(signed.read_bytes()))
    code, out, _ = _run(capsys, "verify", str(tampered), "--trust", str(keys))
    assert code == 1
    assert "Content Credentials INVALID" in out

    unsigned = tmp_path / "unsigned.png"
    Image.new("RGB", (8, 8)).save(unsigned)
    code, out, _ = _run(capsys, "verify", str(unsigned))
    assert code == 1
    assert "no Content Credentials" in out and "AI disclosure (XMP): none" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["missing.png"], "file not found"), (["x.png", "--trust", "nope.pem"], "trust anchors file not found")],
)
def test_verify_usage_errors_are_one_line_with_exit_2(tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    code, _, err = _run(capsys, "verify", *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


def test_generate_jpeg_is_disclosed_signed_and_names_its_photo(tmp_path, tiny_models, keys, capsys):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "photo.png")
    common = ["--model", str(tiny_models("sd15")), "--steps", "2", "--width", "64", "--height", "64"]
    code, _, err = _run(
        capsys,
        "generate",
        "a jacket",
        *common,
        "--init",
        str(tmp_path / "photo.png"),
        "--strength",
        "0.5",
        "--format",
        "jpeg",
        "--quality",
        "80",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    [made] = (tmp_path / "out").glob("*.jpg")
    assert strict_source_type(xmp_of(made.read_bytes())) == COMPOSITE
    code, out, _ = _run(capsys, "verify", str(made), "--trust", str(keys), "--json")
    summary = json.loads(out)["credentials"]
    assert code == 0 and summary["trusted"]
    assert summary["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert summary["ingredients"][0]["title"] == "photo.png"
    assert summary["generation"]["checkpoint"]["name"].startswith(tiny_models("sd15").name)

    code, _, err = _run(capsys, "generate", "x", *common, "--format", "png", "--quality", "80")
    assert code == 2 and "quality applies to jpeg and webp only" in err


def test_a_wrong_key_setting_stops_generate_before_any_model_loads(tmp_path, keys, monkeypatch, capsys):
    monkeypatch.setenv("ATELIER_C2PA_KEY", str(tmp_path / "missing.key"))
    code, _, err = _run(capsys, "generate", "x", "--out", str(tmp_path / "out"))
    assert code == 2
    assert "c2pa_key: no such file" in err
