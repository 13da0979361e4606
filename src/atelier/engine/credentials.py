"""Content Credentials (C2PA): signing what Atelier writes, and reading and validating anyone's.

Signing happens on the final bytes, after the XMP disclosure is in them (:func:`atelier.engine.provenance.
encode_image` calls :meth:`ContentSigner.sign` last), so the manifest's hard binding covers the whole file: one
changed pixel byte makes validation fail.

The manifest says what :class:`~atelier.engine.provenance.Provenance` says:

- actions: ``c2pa.created`` with the digital source type; or, when a photo was kept, ``c2pa.opened`` of that
  photo (a ``parentOf`` ingredient) and ``c2pa.edited`` (``c2pa.transcoded`` for a format conversion); a
  ``c2pa.placed`` for each material of a composition (``componentOf`` ingredients);
- ``com.atelier.generation``: the checkpoint, refiner, VAE, LoRAs (with what their training metadata says of
  their dataset), ControlNets and embeddings, by name and hash.

A certificate is a chain in PEM, end-entity first. C2PA validators refuse a lone self-signed certificate, and
trust only chains that end in an anchor they know (the C2PA trust list, or anchors given to them): see README,
"Provenance". The private key is a PEM file, or stays in a KMS/HSM behind a callback that signs bytes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atelier import __version__
from atelier.engine.provenance import Provenance, sniff_mime
from atelier.errors import AtelierError

GENERATION_LABEL = "com.atelier.generation"
SIGNING_ALGORITHMS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
_ECDSA_RAW_LENGTHS = {"es256": 64, "es384": 96, "es512": 132}
# Formats the C2PA SDK can read as ingredients.
_INGREDIENT_MIMES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "video/mp4"})
_AGENT = {"name": "Atelier", "version": __version__}


class ContentSigner:
    """Signs Content Credentials with a certificate chain and either a PEM private key or a ``sign(bytes) ->
    signature`` callback (a KMS or HSM: the key never reaches Atelier).

    The chain and key are checked here, so a wrong file fails at start-up with the setting's name rather than
    at the first image. A callback may return an ECDSA signature as DER (what KMS APIs give) or raw ``r||s``.
    """

    def __init__(
        self,
        certificates: str,
        *,
        private_key: str | None = None,
        sign: Callable[[bytes], bytes] | None = None,
        algorithm: str | None = None,
        tsa_url: str | None = None,
    ) -> None:
        if (private_key is None) == (sign is None):
            raise ValueError("give a private key or a sign callback, not both or neither")
        self.certificates = certificates
        leaf = _check_chain(certificates)
        algorithm = algorithm.lower() if algorithm else None
        if private_key is not None:
            found = _check_key(private_key, leaf)
            if algorithm is not None and algorithm != found:
                raise AtelierError(f"the key signs {found}, not {algorithm}", field="c2pa_key")
            algorithm = found
        algorithm = algorithm or "es256"
        if algorithm not in SIGNING_ALGORITHMS:
            raise AtelierError(
                f"unknown signing algorithm {algorithm!r}: use one of {', '.join(SIGNING_ALGORITHMS)}",
                field="c2pa_algorithm",
            )
        self.algorithm = algorithm
        self.tsa_url = tsa_url or None
        self._private_key = private_key
        self._sign = sign
        self.signer_name = leaf.subject.rfc4514_string()

    @classmethod
    def from_files(
        cls, certificates: str | os.PathLike[str], private_key: str | os.PathLike[str], **options: Any
    ) -> ContentSigner:
        return cls(
            _read_pem(certificates, "c2pa_cert"), private_key=_read_pem(private_key, "c2pa_key"), **options
        )

    @classmethod
    def from_callback(
        cls, certificates: str | os.PathLike[str], sign: Callable[[bytes], bytes], **options: Any
    ) -> ContentSigner:
        return cls(_read_pem(certificates, "c2pa_cert"), sign=sign, **options)

    def sign(self, data: bytes, mime: str, provenance: Provenance, *, title: str) -> bytes:
        """``data`` (a whole file of type ``mime``) with a C2PA manifest embedded and signed."""
        import c2pa

        # An ingredient in a format the SDK cannot read (BMP) is left out of the manifest.
        usable = tuple(item for item in provenance.ingredients if sniff_mime(item.data) in _INGREDIENT_MIMES)
        provenance = replace(provenance, ingredients=usable)
        # Thumbnails off: the file is its own picture, and each would add tens of kB to every output.
        context = c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})
        builder = c2pa.Builder(manifest_definition(provenance, title=title, mime=mime), context)
        try:
            for index, ingredient in enumerate(usable):
                builder.add_ingredient(
                    {
                        "title": ingredient.title,
                        "relationship": ingredient.relationship,
                        "label": f"ingredient-{index}",
                    },
                    sniff_mime(ingredient.data),
                    io.BytesIO(ingredient.data),
                )
            signed = io.BytesIO()
            builder.sign(self._sdk_signer(), mime, io.BytesIO(data), signed)
        except c2pa.C2paError as exc:
            raise AtelierError(f"could not sign Content Credentials: {exc}", field="c2pa_cert") from None
        finally:
            builder.close()
        return signed.getvalue()

    def _sdk_signer(self) -> Any:
        import c2pa

        algorithm = getattr(c2pa.C2paSigningAlg, self.algorithm.upper())
        if self._private_key is not None:
            info = c2pa.C2paSignerInfo(
                algorithm,
                self.certificates.encode("utf-8"),
                self._private_key.encode("utf-8"),
                self.tsa_url.encode("utf-8") if self.tsa_url else None,
            )
            return c2pa.Signer.from_info(info)
        return c2pa.Signer.from_callback(self._raw_signature, algorithm, self.certificates, self.tsa_url)

    def _raw_signature(self, data: bytes) -> bytes:
        assert self._sign is not None
        signature = self._sign(data)
        raw_length = _ECDSA_RAW_LENGTHS.get(self.algorithm)
        if raw_length is None or len(signature) == raw_length:
            return signature
        # COSE wants ECDSA as r||s; KMS APIs answer DER.
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        r, s = decode_dss_signature(signature)
        half = raw_length // 2
        return r.to_bytes(half, "big") + s.to_bytes(half, "big")


def manifest_definition(provenance: Provenance, *, title: str, mime: str) -> dict[str, Any]:
    """The C2PA manifest definition (the SDK's JSON) of ``provenance``; ingredient ``i`` is ``ingredient-i``."""
    labelled = [(f"ingredient-{index}", item) for index, item in enumerate(provenance.ingredients)]
    parents = [label for label, item in labelled if item.relationship == "parentOf"]
    components = [label for label, item in labelled if item.relationship != "parentOf"]
    stated = {"digitalSourceType": provenance.source_type, "softwareAgent": _AGENT}
    if parents:
        actions = [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": parents[:1]}},
            {"action": provenance.action, **stated},
        ]
    else:
        actions = [{"action": "c2pa.created", **stated}]
    actions += [{"action": "c2pa.placed", "parameters": {"ingredientIds": [label]}} for label in components]
    assertions: list[dict[str, Any]] = [{"label": "c2pa.actions", "data": {"actions": actions}}]
    if provenance.generation:
        assertions.append({"label": GENERATION_LABEL, "data": dict(provenance.generation)})
    return {
        "claim_generator_info": [_AGENT],
        "title": title,
        "format": mime,
        "assertions": assertions,
    }


# -- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """The Content Credentials of a file as the C2PA SDK reads and validates them.

    ``state`` is the SDK's: ``Trusted`` (valid, and the signer chains to a given trust anchor), ``Valid``
    (signature and hashes intact, signer not known to be trusted) or ``Invalid`` (tampered, or broken).
    """

    state: str
    store: dict[str, Any]
    error: str | None = None

    @property
    def valid(self) -> bool:
        return self.state in ("Valid", "Trusted")

    @property
    def trusted(self) -> bool:
        return self.state == "Trusted"

    @property
    def active(self) -> dict[str, Any]:
        manifests = self.store.get("manifests") or {}
        return manifests.get(self.store.get("active_manifest"), {})

    def failures(self) -> list[dict[str, str]]:
        results = (self.store.get("validation_results") or {}).get("activeManifest") or {}
        found = [
            {"code": item.get("code", ""), "explanation": item.get("explanation", "")}
            for item in results.get("failure", [])
        ]
        if self.error:
            found.append({"code": "error", "explanation": self.error})
        return found

    def summary(self) -> dict[str, Any]:
        """What a person wants to see: state, signer, what was done, from what, and with which models."""
        active = self.active
        actions = []
        for assertion in active.get("assertions", []):
            if str(assertion.get("label", "")).startswith("c2pa.actions"):
                actions += (assertion.get("data") or {}).get("actions", [])
        signature = active.get("signature_info") or {}
        return {
            "state": self.state,
            "valid": self.valid,
            "trusted": self.trusted,
            "title": active.get("title"),
            "signer": {
                key: signature.get(key) for key in ("issuer", "common_name", "time") if signature.get(key)
            },
            "claim_generator": [item.get("name") for item in active.get("claim_generator_info", [])],
            "actions": [item.get("action") for item in actions],
            "digital_source_type": next(
                (item["digitalSourceType"] for item in actions if item.get("digitalSourceType")), None
            ),
            "ingredients": [
                {
                    "title": item.get("title"),
                    "relationship": item.get("relationship"),
                    "credentials": bool(item.get("active_manifest")),
                }
                for item in active.get("ingredients", [])
            ],
            "generation": self._generation(),
            "failures": self.failures(),
        }

    def _generation(self) -> dict[str, Any] | None:
        """The generation record of the active manifest, else of the first ingredient that has one (a JPEG
        export's parent)."""
        manifests = self.store.get("manifests") or {}
        labels = [self.store.get("active_manifest")]
        labels += [item.get("active_manifest") for item in self.active.get("ingredients", [])]
        for label in labels:
            for assertion in (manifests.get(label) or {}).get("assertions", []):
                if assertion.get("label") == GENERATION_LABEL:
                    return assertion.get("data")
        return None


def read_credentials(data: bytes, *, trust_anchors: str | None = None) -> Credentials | None:
    """Read and validate the Content Credentials of a file's bytes; None when it has none.

    ``trust_anchors`` (PEM) are the CAs whose chains count as trusted (the C2PA trust list, a company CA).
    """
    import c2pa

    settings: dict[str, Any] = {"verify": {"verify_trust": True}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    try:
        context = c2pa.Context.from_dict(settings)
    except c2pa.C2paError as exc:
        raise AtelierError(
            f"the trust anchors are not usable PEM certificates ({exc})", field="trust"
        ) from None
    try:
        reader = c2pa.Reader.try_create(sniff_mime(data), io.BytesIO(data), None, context)
    except c2pa.C2paError as exc:
        # A manifest so damaged that it cannot be read at all is a failed validation, not "no credentials".
        return Credentials("Invalid", {}, error=str(exc) or type(exc).__name__)
    if reader is None:
        return None
    with reader:
        store = json.loads(reader.json())
        state = reader.get_validation_state() or "Invalid"
    return Credentials(state, store)


# -- checking what people configure ---------------------------------------------------------------------------


def signer_from_settings(
    *,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None = None,
    callback: str | None = None,
    algorithm: str | None = None,
    tsa_url: str | None = None,
) -> ContentSigner | None:
    """The signer the settings ``c2pa_cert`` + ``c2pa_key`` or ``c2pa_sign_callback`` describe (the studio's
    settings, or the CLI's ``ATELIER_C2PA_*`` variables); None when signing is not configured."""
    if not (cert or key or callback):
        return None
    if not cert:
        raise AtelierError(
            "c2pa_cert (the certificate chain, PEM, end-entity first) is needed to sign", field="c2pa_cert"
        )
    if key and callback:
        raise AtelierError("give c2pa_key or c2pa_sign_callback, not both", field="c2pa_sign_callback")
    if key:
        return ContentSigner.from_files(cert, key, algorithm=algorithm, tsa_url=tsa_url)
    if callback:
        return ContentSigner.from_callback(
            cert, load_callback(callback), algorithm=algorithm, tsa_url=tsa_url
        )
    raise AtelierError(
        "c2pa_cert is set: give its private key as c2pa_key (or c2pa_sign_callback)", field="c2pa_key"
    )


def load_callback(spec: str) -> Callable[[bytes], bytes]:
    """``package.module:function``, a function that signs bytes (with a KMS, an HSM) and returns the signature."""
    import importlib

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise AtelierError(
            f"c2pa_sign_callback {spec!r} must be 'package.module:function'", field="c2pa_sign_callback"
        )
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise AtelierError(
            f"c2pa_sign_callback {spec!r} cannot be loaded: {exc}", field="c2pa_sign_callback"
        ) from None
    if not callable(function):
        raise AtelierError(f"c2pa_sign_callback {spec!r} is not a function", field="c2pa_sign_callback")
    return function


def _read_pem(source: str | os.PathLike[str], field: str) -> str:
    path = Path(source).expanduser()
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise AtelierError(f"{field}: no such file {path}", field=field) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AtelierError(f"{field}: cannot read {path} as PEM text ({exc})", field=field) from None


def _check_chain(pem: str) -> Any:
    from cryptography import x509

    try:
        chain = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except ValueError:
        raise AtelierError("c2pa_cert holds no PEM certificates", field="c2pa_cert") from None
    leaf = chain[0]
    if len(chain) == 1 and leaf.issuer == leaf.subject:
        raise AtelierError(
            "c2pa_cert is one self-signed certificate, which C2PA validators refuse: give the signing "
            "certificate issued by a CA, followed by the CA's chain",
            field="c2pa_cert",
        )
    if leaf.not_valid_after_utc < datetime.now(UTC):
        raise AtelierError(
            f"the signing certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}", field="c2pa_cert"
        )
    return leaf


def _check_key(pem: str, leaf: Any) -> str:
    """The algorithm the private key signs with; it must belong to the chain's first certificate."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
    except (ValueError, TypeError) as exc:
        raise AtelierError(
            f"c2pa_key is not an unencrypted PEM private key ({exc})", field="c2pa_key"
        ) from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, public
    ):
        raise AtelierError(
            "c2pa_key does not belong to the first certificate of c2pa_cert (the chain goes end-entity first)",
            field="c2pa_key",
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise AtelierError("c2pa_key must be an EC (P-256/384/521), Ed25519 or RSA key", field="c2pa_key")
