"""The studio's Content Credentials: its signer, opened once from the settings, and reading credentials back.

Every image the studio writes goes through the engine's one encoder (``atelier.engine.encode_image``), which
adds the AI disclosure and, with the signer here, signs the final bytes.
"""

from __future__ import annotations

from typing import Any

from atelier.errors import AtelierError, NotFoundError
from atelier.service.config import StudioConfig


def content_signer(config: StudioConfig) -> Any:
    """The studio's ``ContentSigner``, or None when no certificate is configured (checked at start-up)."""
    from atelier.engine import signer_from_settings

    return signer_from_settings(
        cert=config.c2pa_cert,
        key=config.c2pa_key,
        callback=config.c2pa_sign_callback,
        algorithm=config.c2pa_algorithm,
        tsa_url=config.c2pa_tsa_url,
    )


def trust_anchors(config: StudioConfig) -> str | None:
    """The PEM text of ``c2pa_trust_anchors``, read when needed (the list can be updated without a restart)."""
    if config.c2pa_trust_anchors is None:
        return None
    try:
        return config.c2pa_trust_anchors.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise AtelierError(f"c2pa_trust_anchors cannot be read: {exc}", field="c2pa_trust_anchors") from None


def credentials_answer(studio: Any, key: str) -> dict[str, Any]:
    """``GET /api/credentials/{key}``: the AI disclosure and the validated Content Credentials of an output."""
    from atelier.engine import declared_source_type, read_credentials

    if not studio.storage.exists(key):
        raise NotFoundError(f"storage object {key!r} not found", field="key")
    data = studio.storage.get_bytes(key)
    credentials = read_credentials(data, trust_anchors=trust_anchors(studio.config))
    return {
        "key": key,
        "digital_source_type": declared_source_type(data),
        "credentials": credentials.summary() if credentials is not None else None,
    }


def converted_file(studio: Any, key: str, output_format: str, quality: int | None) -> tuple[bytes, str, str]:
    """An output as ``output_format`` (JPEG, WebP, PNG) for e-commerce uploads: (bytes, MIME type, file name),
    its disclosure and infotext kept and, with the studio's signer, the stored file as its signed parent."""
    from atelier.engine import OUTPUT_FORMATS, check_output_format, convert_image

    name = check_output_format(output_format, quality)
    if not studio.storage.exists(key):
        raise NotFoundError(f"storage object {key!r} not found", field="key")
    stored_name = key.rsplit("/", 1)[-1]
    converted = convert_image(
        studio.storage.get_bytes(key),
        name,
        quality=quality,
        signer=studio.signer,
        title=stored_name,
        max_pixels=studio.config.max_output_pixels,
        field="key",
    )
    filename = stored_name.rsplit(".", 1)[0] + OUTPUT_FORMATS[name][2]
    return converted.data, converted.mime, filename
