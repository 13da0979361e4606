"""A test CA and signing certificates for Content Credentials, made with `cryptography` (nothing downloaded).

C2PA validators refuse a lone self-signed certificate, so tests sign with an end-entity certificate issued by a
CA of their own (P-256, ES256, digitalSignature key usage and the emailProtection EKU that C2PA's trust rules
accept) and validate against that CA as the trust anchor.
"""

from __future__ import annotations

import datetime
import io
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = IPTC + "trainedAlgorithmicMedia"
COMPOSITE = IPTC + "compositeWithTrainedAlgorithmicMedia"
_RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
_IPTC_EXT = "{http://iptc.org/std/Iptc4xmpExt/2008-02-29/}"


@dataclass(frozen=True)
class Certificates:
    ca_pem: str
    chain_pem: str  # end-entity first, then the CA
    key_pem: str
    key: ec.EllipticCurvePrivateKey

    def write(self, folder: Path) -> tuple[Path, Path, Path]:
        """(chain, key, CA) as PEM files in ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        files = (folder / "chain.pem", folder / "signer.key", folder / "ca.pem")
        for path, text in zip(files, (self.chain_pem, self.key_pem, self.ca_pem), strict=True):
            path.write_text(text)
        return files


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Atelier tests"),
        ]
    )


def _usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signing,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=not signing,
        crl_sign=not signing,
        encipher_only=False,
        decipher_only=False,
    )


def make_test_ca(*, expired: bool = False) -> Certificates:
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=30)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Atelier test CA"))
        .issuer_name(_name("Atelier test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(signing=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("Atelier test signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(days=10) if expired else start)
        .not_valid_after(now - datetime.timedelta(days=2) if expired else end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(signing=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def pem(certificate: x509.Certificate) -> str:
        return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return Certificates(pem(ca), pem(leaf) + pem(ca), key_pem, key)


def xmp_of(data: bytes) -> bytes:
    """The XMP packet of a PNG, JPEG or WebP file, as Pillow finds it in the file's own chunk or segment."""
    with Image.open(io.BytesIO(data)) as image:
        packet = image.info.get("XML:com.adobe.xmp") or image.info.get("xmp")
    assert packet, "no XMP packet"
    return packet.encode("utf-8") if isinstance(packet, str) else packet


def strict_source_type(packet: bytes) -> str:
    """A strict XMP parse, independent of Atelier's reader: x:xmpmeta > rdf:RDF > rdf:Description whose
    Iptc4xmpExt:DigitalSourceType attribute holds the value."""
    start, end = packet.index(b"<x:xmpmeta"), packet.index(b"</x:xmpmeta>") + len(b"</x:xmpmeta>")
    root = ElementTree.fromstring(packet[start:end])
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    descriptions = root.findall(f"{_RDF}RDF/{_RDF}Description")
    values = [item.get(f"{_IPTC_EXT}DigitalSourceType") for item in descriptions]
    values = [value for value in values if value]
    assert len(values) == 1, values
    return values[0]


def pixel_tampered(data: bytes) -> bytes:
    """``data`` with one byte of the picture's pixel data changed (inside PNG IDAT, after JPEG's SOS)."""
    changed = bytearray(data)
    if data.startswith(b"\x89PNG"):
        at = data.index(b"IDAT") + 8
    elif data.startswith(b"\xff\xd8"):
        at = data.index(b"\xff\xda") + 20
    else:
        raise ValueError("PNG or JPEG only")
    changed[at] ^= 0x01
    return bytes(changed)
