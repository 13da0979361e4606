"""Content Credentials (C2PA): signed after the XMP, validated by c2pa-python against a test CA, tamper-evident."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from atelier.engine import (
    ContentSigner,
    Ingredient,
    Provenance,
    encode_image,
    read_credentials,
    read_infotext,
    signer_from_settings,
)
from atelier.errors import AtelierError
from c2pa_helpers import COMPOSITE, GENERATED, make_test_ca, pixel_tampered, strict_source_type, xmp_of

INFOTEXT = "a bottle\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Model: tiny"
GENERATION = {
    "checkpoint": {"name": "tiny", "sha256": "ab" * 32},
    "loras": [{"name": "style", "sha256": "cd"}],
}


@pytest.fixture(scope="module")
def ca():
    return make_test_ca()


@pytest.fixture(scope="module")
def signer(ca):
    return ContentSigner(ca.chain_pem, private_key=ca.key_pem)


def _picture() -> Image.Image:
    return Image.effect_noise((48, 32), 40).convert("RGB")


@pytest.mark.parametrize("output_format", ["png", "jpeg", "webp"])
def test_a_signed_output_validates_against_its_ca_and_keeps_its_xmp(ca, signer, output_format):
    data = encode_image(
        _picture(),
        Provenance(GENERATED, generation=GENERATION),
        output_format=output_format,
        infotext=INFOTEXT,
        signer=signer,
        title=f"1_2.{output_format}",
    )
    # Signed after the disclosure: the XMP and the infotext are still there, and covered by the signature.
    assert strict_source_type(xmp_of(data)) == GENERATED
    assert read_infotext(Image.open(io.BytesIO(data))) == INFOTEXT

    trusted = read_credentials(data, trust_anchors=ca.ca_pem)
    summary = trusted.summary()
    assert (summary["state"], summary["valid"], summary["trusted"]) == ("Trusted", True, True)
    assert summary["actions"] == ["c2pa.created"]
    assert summary["digital_source_type"] == GENERATED
    assert summary["generation"] == GENERATION
    assert summary["signer"]["common_name"] == "Atelier test signer"
    # Without the CA among the anchors the file is intact but its signer unknown.
    untrusted = read_credentials(data)
    assert (untrusted.valid, untrusted.trusted) == (True, False)


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_one_changed_pixel_byte_fails_validation(ca, signer, output_format):
    data = encode_image(_picture(), Provenance(GENERATED), output_format=output_format, signer=signer)
    tampered = read_credentials(pixel_tampered(data), trust_anchors=ca.ca_pem)
    assert tampered.state == "Invalid" and not tampered.valid
    assert tampered.failures()


def test_an_edit_names_its_photo_and_a_composition_its_materials(ca, signer):
    photo = encode_image(_picture(), Provenance(GENERATED), signer=signer, title="photo.png")
    edited = encode_image(
        _picture(),
        Provenance(COMPOSITE, ingredients=(Ingredient("photo.png", photo, "parentOf"),)),
        signer=signer,
    )
    summary = read_credentials(edited, trust_anchors=ca.ca_pem).summary()
    assert summary["actions"] == ["c2pa.opened", "c2pa.edited"]
    assert summary["digital_source_type"] == COMPOSITE
    assert summary["ingredients"] == [{"title": "photo.png", "relationship": "parentOf", "credentials": True}]

    plain = io.BytesIO()
    _picture().save(plain, format="BMP")  # a format the SDK cannot read is left out, not an error
    materials = (Ingredient("a.png", photo), Ingredient("b.bmp", plain.getvalue()))
    ad = encode_image(_picture(), Provenance(COMPOSITE, ingredients=materials), signer=signer)
    summary = read_credentials(ad, trust_anchors=ca.ca_pem).summary()
    assert summary["actions"] == ["c2pa.created", "c2pa.placed"]
    assert [item["title"] for item in summary["ingredients"]] == ["a.png"]


def test_a_kms_callback_signs_with_der_or_raw_signatures(ca):
    def kms(data: bytes) -> bytes:  # what a KMS's Sign call answers for ECDSA: DER
        return ca.key.sign(data, ec.ECDSA(hashes.SHA256()))

    signer = ContentSigner(ca.chain_pem, sign=kms)
    data = encode_image(_picture(), Provenance(GENERATED), signer=signer)
    assert read_credentials(data, trust_anchors=ca.ca_pem).trusted


def test_a_file_without_credentials_reads_as_none():
    assert read_credentials(encode_image(_picture(), Provenance(GENERATED))) is None


def test_signing_settings_are_checked_with_the_setting_named(tmp_path, ca):
    chain, key, ca_file = ca.write(tmp_path)
    assert signer_from_settings(cert=None) is None
    assert signer_from_settings(cert=chain, key=key).algorithm == "es256"
    problems = {
        "c2pa_key": dict(cert=chain),
        "c2pa_cert": dict(cert=None, key=key),
        "c2pa_sign_callback": dict(cert=chain, callback="no_such_module:sign"),
    }
    for field, settings in problems.items():
        with pytest.raises(AtelierError) as caught:
            signer_from_settings(**settings)
        assert caught.value.field == field
    # A lone self-signed certificate: C2PA validators refuse it, so Atelier does too, saying why.
    with pytest.raises(AtelierError, match="self-signed") as caught:
        signer_from_settings(cert=ca_file, key=key)
    assert caught.value.field == "c2pa_cert"
    other = make_test_ca()
    with pytest.raises(AtelierError, match="does not belong"):
        ContentSigner(ca.chain_pem, private_key=other.key_pem)
    expired = make_test_ca(expired=True)
    with pytest.raises(AtelierError, match="expired"):
        ContentSigner(expired.chain_pem, private_key=expired.key_pem)
