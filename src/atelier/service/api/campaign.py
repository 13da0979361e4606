"""Campaign routes under ``/api``: the ad composer.

``POST /api/ads`` takes an ad spec as JSON (the keys of ``atelier ad``'s SPEC.toml) and answers with the
stored PNGs, GIF and, when ffmpeg is present, MP4. Composing is a few hundred milliseconds of Pillow work
and needs no model, so it runs inside the request (in FastAPI's threadpool, as a plain ``def`` route)
instead of as a queued job: queuing would make clients poll for something that is done before the first
poll, and would put ads behind long GPU jobs they do not need.

Files can only come from the outputs bucket or from the request itself, never from server paths:

* a material or logo is a storage key under ``outputs/`` (what job results list as ``key``), the native
  download URL of one (``/api/files/outputs/...``), or a base64 image (optionally a ``data:`` URL);
* ``template`` and ``font`` must be built-in names.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from atelier.campaign.ad import AdResult, compose_ad, parse_ad_spec
from atelier.campaign.templates import builtin_template_names
from atelier.campaign.text import bundled_font_names
from atelier.errors import AtelierError, NotFoundError
from atelier.service.api.common import check_output_access, request_caller
from atelier.service.api.native import StudioDep
from atelier.service.security import OPEN_STUDIO, Caller, decode_upload
from atelier.service.storage import check_key
from atelier.service.studio import Studio

ADS_PREFIX = "outputs/ads"
FILES_ROUTE = "/api/files/"
_MEDIA_KIND = {".png": "image", ".gif": "animation", ".mp4": "video"}


def _file_url(key: str) -> str:
    return f"{FILES_ROUTE}{key}"


def _outputs_key(entry: str) -> str | None:
    """The storage key ``entry`` names, or None when it is not a key or download URL (then: base64)."""
    if entry.startswith(FILES_ROUTE):
        entry = entry[len(FILES_ROUTE) :]
    if entry.startswith("outputs/"):
        return entry
    return None


def _fetch_image(studio: Studio, entry: Any, field: str, path: Path, caller: Caller) -> tuple[str, Path]:
    """Copy the image ``entry`` names to ``path`` (suffix kept); return its name for the metadata, and the file."""
    if not isinstance(entry, str) or not entry.strip():
        raise AtelierError(f"{field} must be an outputs/ key or a base64 image", field=field)
    key = _outputs_key(entry.strip())
    if key is not None:
        try:
            check_key(key)
        except AtelierError as problem:
            raise type(problem)(f"{field}: {problem}", field=field) from None
        try:
            check_output_access(studio, caller, key)
        except NotFoundError:
            raise AtelierError(f"{field}: no image {key!r} in the outputs bucket", field=field) from None
        if not studio.storage.exists(key):
            raise AtelierError(f"{field}: no image {key!r} in the outputs bucket", field=field)
        local = path.with_suffix(Path(key).suffix.lower() or ".png")
        return key, studio.storage.get_file(key, local)
    if len(entry) < 100 and not entry.startswith("data:"):
        # Too short to be an image: most likely a file name or path, which the server will not read.
        raise AtelierError(
            f"{field} {entry!r} is not in the outputs bucket: give its 'outputs/...' key or upload it as "
            "base64",
            field=field,
        )
    data, image = decode_upload(entry, field=field, max_pixels=studio.config.max_image_pixels)
    # The file as sent, not a re-encoding: its own AI disclosure and Content Credentials stay readable.
    local = path.with_suffix(f".{(image.format or 'png').lower()}")
    local.write_bytes(data)
    return f"upload:{field}", local


def _local_spec(
    studio: Studio, data: dict[str, Any], folder: Path, caller: Caller
) -> tuple[dict[str, Any], dict[str, Path]]:
    """``data`` ready for :func:`parse_ad_spec` with ``folder`` as its base, and where each material now is.

    Materials keep their keys (``upload:materials[N]`` for uploads) so each PNG's metadata names its
    sources; the logo becomes a file name in ``folder``, which is all the composer reads it from.
    """
    spec = dict(data)
    template = spec.get("template")
    if template is not None and template not in builtin_template_names():
        raise AtelierError(
            f"unknown template {template!r}: use one of {', '.join(builtin_template_names())}",
            field="template",
        )
    font = spec.get("font")
    if font is not None and (not isinstance(font, str) or font.lower() not in bundled_font_names()):
        raise AtelierError(
            f"unknown font {font!r}: use one of {', '.join(bundled_font_names())}", field="font"
        )
    files: dict[str, Path] = {}
    materials = spec.get("materials")
    if isinstance(materials, list) and materials:
        names = []
        for index, entry in enumerate(materials):
            name, path = _fetch_image(
                studio, entry, f"materials[{index}]", folder / f"material-{index}", caller
            )
            names.append(name)
            files[name] = path
        spec["materials"] = names
    if spec.get("logo") is not None:
        spec["logo"] = _fetch_image(studio, spec["logo"], "logo", folder / "logo", caller)[1].name
    return spec, files


def _file_entries(result: AdResult, folder_key: str) -> list[dict[str, Any]]:
    entries = []
    for channel in result.channels:
        key = f"{folder_key}/{channel.path.name}"
        entries.append(
            {
                "name": channel.path.name,
                "kind": "image",
                "channel": channel.channel.name,
                "width": channel.channel.width,
                "height": channel.channel.height,
                "truncated": channel.truncated,
                "key": key,
                "url": _file_url(key),
            }
        )
    for path in (result.gif_path, result.video_path):
        if path is None:
            continue
        key = f"{folder_key}/{path.name}"
        entries.append(
            {
                "name": path.name,
                "kind": _MEDIA_KIND[path.suffix],
                "channel": result.gif_channel.name,
                "key": key,
                "url": _file_url(key),
            }
        )
    return entries


def compose_stored_ad(studio: Studio, data: dict[str, Any], caller: Caller = OPEN_STUDIO) -> dict[str, Any]:
    """Compose the ad ``data`` describes and store its files under ``outputs/ads/<id>/``; the API's answer."""
    if not isinstance(data, dict):
        raise AtelierError("the request body must be a JSON object (an ad spec)", field="body")
    ad_id = uuid.uuid4().hex
    folder_key = f"{ADS_PREFIX}/{ad_id}"
    work_root = studio.config.cache_dir / "ads"
    work_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_root) as work:
        inputs, rendered = Path(work) / "inputs", Path(work) / "ad"
        inputs.mkdir()
        local_data, material_files = _local_spec(studio, data, inputs, caller)
        spec = parse_ad_spec(local_data, inputs)
        result = compose_ad(spec, rendered, resolve_material=material_files.__getitem__, signer=studio.signer)
        for path in result.paths:
            studio.storage.put_file(f"{folder_key}/{path.name}", path)
        # Who made it: only they (and admins) may download it (api/common.output_owner reads this).
        record = {"owner": caller.name, "template": result.template}
        studio.storage.put_bytes(f"{folder_key}/ad.json", json.dumps(record).encode("utf-8"))
    return {
        "id": ad_id,
        "folder": folder_key,
        "template": result.template,
        "files": _file_entries(result, folder_key),
        "video_note": result.video_note,
    }


def build_campaign_router() -> APIRouter:
    """The ``/api/ads`` route."""
    router = APIRouter(prefix="/api", tags=["campaign"])

    @router.post("/ads", status_code=201, summary="Compose an ad: a PNG per channel, a GIF (and an MP4)")
    def compose(
        request: Request,
        studio: StudioDep,
        spec: Annotated[
            dict[str, Any],
            Body(
                description="materials, headline, body, cta, logo, channels, template, font, brand, animation"
            ),
        ],
    ) -> dict[str, Any]:
        return compose_stored_ad(studio, spec, request_caller(request))

    return router
