"""Where a batch generates: in this process on an engine, or through a running studio's A1111 API."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any, Protocol

import httpx
from PIL import Image

from atelier.campaign.batch.catalog import decode_photo
from atelier.campaign.batch.scenes import MODEL_HASH_LENGTH, Scene
from atelier.engine import (
    INPAINTING_FILL_MODES,
    Engine,
    GeneratedImage,
    GenerationRequest,
    display_name,
    model_sha256,
    parse_infotext,
    read_infotext,
)
from atelier.errors import AtelierError

# Interactive requests have priority 0; a batch asks for less so it never holds a person's picture back.
PRIORITY_HEADER = "X-Atelier-Priority"
BATCH_PRIORITY = -1


class Backend(Protocol):
    """Where images are made: the engine in this process, or a studio over HTTP."""

    model_name: str  # shown in the manifest
    model_hash: str  # sha256 prefix of the checkpoint; part of every request hash

    def generate(self, request: GenerationRequest) -> GeneratedImage: ...


class EngineBackend:
    """Generates with an :class:`~atelier.engine.generate.Engine` in this process."""

    def __init__(self, engine: Engine, model_path: str | os.PathLike[str]) -> None:
        self.engine = engine
        self.model_path = Path(model_path)
        self.model_name = display_name(self.model_path)
        self.model_hash = model_sha256(self.model_path)[:MODEL_HASH_LENGTH]

    def check_loras(self, scenes: list[Scene]) -> None:
        """Refuse a LoRA that is missing or does not load before the first image rather than on every row."""
        for scene in scenes:
            if scene.lora is None:
                continue
            if self.engine.loras is None:
                raise AtelierError(
                    f"scene {scene.name!r} uses a LoRA, but no LoRA folder is set up", field="lora"
                )
            try:
                self.engine.loras.entry(scene.lora.name)
            except AtelierError as exc:
                raise AtelierError(f"scene {scene.name!r}: {exc}", field="lora") from None

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        request = dataclasses.replace(request, model=str(self.model_path))
        return self.engine.generate(request).images[0]


class StudioBackend:
    """Generates through a running studio's A1111-compatible API (``/sdapi/v1/txt2img`` and ``img2img``).

    The model is looked up in ``/sdapi/v1/sd-models`` by name, title or file name; its sha256 keys the
    request hashes, so a batch started in-process can be finished through a studio and the reverse.

    A studio follows A1111's img2img rules: unless ``inpaint_only_masked`` is set, the photo is first brought
    to the scene's width and height, so give inpainting scenes the photos' size to keep them pixel-exact.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 900.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise AtelierError(f"server URL must start with http:// or https://, got {url!r}", field="server")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # A catalog batch queues behind the team's interactive generations (Atelier reads this header; an
        # A1111 server ignores it).
        headers[PRIORITY_HEADER] = str(BATCH_PRIORITY)
        # Waiting in a busy studio's queue can take long; connecting should not.
        self.client = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=10.0),
            transport=transport,
        )
        entry = self._find_model(model)
        self.model_title = str(entry.get("title") or model)
        self.model_name = str(entry.get("model_name") or self.model_title)
        identity = entry.get("sha256") or entry.get("hash") or self.model_title
        self.model_hash = str(identity)[:MODEL_HASH_LENGTH]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> StudioBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, f"/sdapi/v1/{route}", json=body)
        except httpx.HTTPError as exc:
            raise AtelierError(f"could not reach the studio at {self.url}: {exc}", field="server") from None
        if response.status_code in (401, 403):
            raise AtelierError(
                f"the studio at {self.url} refused the request ({response.status_code}); "
                "pass --api-key or set ATELIER_API_KEY",
                field="api_key",
            )
        if response.status_code >= 400:
            raise AtelierError(f"the studio answered {response.status_code}: {_error_detail(response)}")
        try:
            return response.json()
        except ValueError:
            raise AtelierError(f"the studio at {self.url} did not answer with JSON ({route})") from None

    def _find_model(self, model: str) -> dict[str, Any]:
        entries = self._call("GET", "sd-models")
        if not isinstance(entries, list):
            raise AtelierError(f"the studio at {self.url} sent an unexpected model list")
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            filename = Path(str(entry.get("filename") or ""))
            names = (
                entry.get("title"),
                entry.get("model_name"),
                filename.name,
                filename.stem,
                entry.get("sha256"),
            )
            if model in names:
                return entry
        available = ", ".join(str(entry.get("model_name")) for entry in entries if isinstance(entry, dict))
        raise AtelierError(
            f"the studio has no model {model!r}; available: {available or 'none'}", field="model"
        )

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "seed": request.seed,
            "sampler_name": request.sampler,
            "steps": request.steps,
            "cfg_scale": request.cfg_scale,
            "width": request.width,
            "height": request.height,
            "batch_size": 1,
            "n_iter": 1,
            "override_settings": {"sd_model_checkpoint": self.model_title},
            "override_settings_restore_afterwards": True,
            "send_images": True,
            "save_images": False,
        }
        route = "txt2img"
        if request.init_image is not None:
            route = "img2img"
            body.update(
                init_images=[_png_base64(request.init_image)],
                denoising_strength=request.denoising_strength,
                resize_mode=0,
            )
        if request.mask is not None:
            body.update(
                mask=_png_base64(request.mask),
                mask_blur=request.mask_blur,
                inpainting_fill=INPAINTING_FILL_MODES.index(request.inpainting_fill),
                # A1111's API defaults this to true; the scene decides.
                inpaint_full_res=request.inpaint_only_masked,
                inpaint_full_res_padding=request.inpaint_padding,
                inpainting_mask_invert=0,
            )
        answer = self._call("POST", route, body)
        images = answer.get("images") if isinstance(answer, dict) else None
        if not images:
            raise AtelierError(f"the studio sent no image for {route}")
        image = decode_photo(_b64decode(images[0]), "the studio's answer", "image", load=True)
        try:
            info = json.loads(answer.get("info") or "{}")
        except (TypeError, json.JSONDecodeError):
            info = {}
        seeds = info.get("all_seeds") or [info.get("seed", request.seed)]
        infotexts = info.get("infotexts") or []
        infotext = infotexts[0] if infotexts else (read_infotext(image) or "")
        params = parse_infotext(infotext) if infotext else {}
        return GeneratedImage(image=image, seed=int(seeds[0]), infotext=infotext, params=params)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _b64decode(text: str) -> bytes:
    # A1111 clients sometimes send data URLs; accept the same in answers.
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise AtelierError("the studio sent an image that is not base64") from None


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("errors") or body.get("error")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return json.dumps(detail)[:300]
    return json.dumps(body)[:300]
