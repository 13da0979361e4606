"""Catalog batch generation: every product row x scene x seed, resumable, with a manifest for the contact sheet.

A catalog is a CSV file with a ``sku`` column, optional ``image`` and ``mask`` columns (a product photo and its
mask, relative to the CSV's folder) and any attributes (``product``, ``color``, ...). A scenes file is TOML with
``[[scene]]`` tables whose prompts use the attributes as ``{placeholders}``. A row with a photo and a mask is an
inpainting job: outside the mask the photo comes back pixel for pixel. A photo without a mask is img2img.

Generation runs in-process (:class:`EngineBackend`) or through a running studio's A1111-compatible API
(:class:`StudioBackend`). Either way each image is written as ``DIR/<sku>/<scene>/<seed>_<timestamp>.png`` with
its A1111 infotext, and recorded as one JSON line in ``DIR/manifest.jsonl``: ``sku``, ``scene``, ``seed``,
``file``, ``prompt``, ``negative_prompt``, ``params`` (every generation setting) and ``request_hash``.

The request hash covers what decides the picture and where it goes: SKU, scene name, the filled-in prompts and
every generation setting, the seed, the model's sha256 and the photo and mask contents. A re-run skips every
request already in the manifest, so an interrupted batch resumes, and adding a seed, a scene or a row makes
only the new images. Editing a column that no prompt uses, or renaming a photo file, regenerates nothing.

Problems that belong to one row (a missing photo, an empty attribute, a placeholder the catalog lacks, a mask
of the wrong size) are reported by SKU and the rest of the batch goes on; problems with the files themselves
(an unreadable CSV, an unknown scene key) raise :class:`~atelier.errors.AtelierError` before anything runs.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import difflib
import hashlib
import io
import json
import os
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from PIL import Image, UnidentifiedImageError

from atelier.campaign.contact_sheet import MANIFEST_NAME
from atelier.engine import (
    INPAINTING_FILL_MODES,
    Engine,
    GeneratedImage,
    GenerationRequest,
    check_name,
    display_name,
    model_sha256,
    parse_infotext,
    read_infotext,
    resolve_sampler,
    save_image,
)
from atelier.errors import AtelierError
from atelier.files import read_toml, write_text_atomic

MAX_PHOTO_PIXELS = 64 * 1024 * 1024
MODEL_HASH_LENGTH = 10  # A1111's short model hash: enough to tell checkpoints apart, same in both modes
MAX_SEED = 2**32 - 1
_SCENE_DEFAULTS = GenerationRequest(prompt="")
SCENE_KEYS = (
    "name",
    "prompt",
    "negative",
    "width",
    "height",
    "steps",
    "sampler",
    "seeds",
    "lora",
    "cfg_scale",
    "denoising_strength",
    "mask_blur",
    "inpaint_only_masked",
    "inpainting_fill",
)
_LORA_KEYS = ("name", "weight")
# The GenerationRequest fields Scene.request sets: the settings that make one catalog image differ from another.
HASHED_SETTINGS = (
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "denoising_strength",
    "mask_blur",
    "inpaint_only_masked",
    "inpainting_fill",
)


# -- scenes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneLora:
    name: str
    weight: float = 1.0

    @property
    def tag(self) -> str:
        return f"<lora:{self.name}:{self.weight:g}>"


@dataclass(frozen=True)
class Scene:
    """One ``[[scene]]`` of a scenes file; prompts still hold their ``{placeholders}``."""

    name: str
    prompt: str
    seeds: tuple[int, ...]
    negative: str = ""
    width: int = _SCENE_DEFAULTS.width
    height: int = _SCENE_DEFAULTS.height
    steps: int = _SCENE_DEFAULTS.steps
    sampler: str = _SCENE_DEFAULTS.sampler
    cfg_scale: float = _SCENE_DEFAULTS.cfg_scale
    denoising_strength: float = _SCENE_DEFAULTS.denoising_strength
    mask_blur: int = _SCENE_DEFAULTS.mask_blur
    inpaint_only_masked: bool = _SCENE_DEFAULTS.inpaint_only_masked
    inpainting_fill: str = _SCENE_DEFAULTS.inpainting_fill
    lora: SceneLora | None = None

    @property
    def placeholders(self) -> tuple[str, ...]:
        """The column names the prompts use, in order of first use."""
        names = [name for text in (self.prompt, self.negative) for _, name in _template_parts(text) if name]
        return tuple(dict.fromkeys(names))

    def fill(self, values: dict[str, str], columns: tuple[str, ...]) -> tuple[str, str]:
        """The prompt (with the LoRA tag) and negative prompt for one catalog row."""
        for name in self.placeholders:
            if name not in columns:
                raise AtelierError(
                    f"scene {self.name!r} uses {{{name}}}, which is not a column of the catalog", field=name
                )
            if not values.get(name, "").strip():
                raise AtelierError(f"{name} is empty, and scene {self.name!r} uses {{{name}}}", field=name)
        prompt = _fill(self.prompt, values)
        if self.lora is not None:
            prompt = f"{prompt} {self.lora.tag}" if prompt else self.lora.tag
        return prompt, _fill(self.negative, values)

    def request(self, prompt: str, negative: str, seed: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            negative_prompt=negative,
            sampler=self.sampler,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            seed=seed,
            width=self.width,
            height=self.height,
            denoising_strength=self.denoising_strength,
            mask_blur=self.mask_blur,
            inpaint_only_masked=self.inpaint_only_masked,
            inpainting_fill=self.inpainting_fill,
        )


def _template_parts(text: str) -> Iterator[tuple[str, str | None]]:
    """(literal text, placeholder name or None) pieces; ``{{`` and ``}}`` are literal braces."""
    for literal, name, format_spec, conversion in string.Formatter().parse(text):
        if name is not None and (format_spec or conversion):
            raise ValueError(f"{{{name}...}} has a format or conversion")
        yield literal, name


def _fill(text: str, values: dict[str, str]) -> str:
    return "".join(literal + (values[name] if name else "") for literal, name in _template_parts(text))


def _check_template(text: str, where: str) -> None:
    try:
        names = [name for _, name in _template_parts(text) if name is not None]
    except ValueError as exc:
        raise AtelierError(
            f"{where}: {exc}; placeholders are {{column}}, literal braces are written {{{{ and }}}}"
        ) from None
    for name in names:
        if not name.isidentifier():
            raise AtelierError(
                f"{where}: {{{name}}} is not a placeholder; use a column name such as {{product}}, "
                "and write {{ and }} for literal braces"
            )


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(allowed)}"
            raise AtelierError(f"unknown key {key!r} in {where}{hint}", field=key)


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AtelierError(f"{where}: {key} must be a number, got {value!r}", field=key)
    # 7 and 7.0 are the same setting; the request hash must not tell them apart.
    return float(value)


def _text(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise AtelierError(f"{where}: {key} must be text, got {value!r}", field=key)
    return value


def _parse_lora(value: Any, where: str) -> SceneLora:
    if isinstance(value, str):
        table: dict[str, Any] = {"name": value}
    elif isinstance(value, dict):
        table = value
        _check_keys(table, _LORA_KEYS, f"the lora of {where}")
    else:
        raise AtelierError(f"{where}: lora must be a name or {{name = ..., weight = ...}}", field="lora")
    name = check_name(_text(table.get("name"), "lora name", where), what="lora")
    weight = _number(table.get("weight", 1.0), "lora weight", where)
    return SceneLora(name, weight)


def _parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise AtelierError(f"{where}: seeds must be a list of integers, such as [1, 2, 3]", field="seeds")
    for seed in value:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            # -1 (random) would make every run a new request and defeat resuming.
            raise AtelierError(
                f"{where}: seeds must be integers from 0 to {MAX_SEED}, got {seed!r}", field="seeds"
            )
    if len(set(value)) != len(value):
        raise AtelierError(f"{where}: seeds lists a seed twice", field="seeds")
    return tuple(value)


def _parse_scene(table: Any, index: int) -> Scene:
    if not isinstance(table, dict):
        raise AtelierError(f"scene {index} is not a table; write each scene as [[scene]]")
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AtelierError(f"scene {index} needs a name", field="name")
    where = f"scene {name!r}"
    _check_keys(table, SCENE_KEYS, where)
    try:
        check_name(name, what="scene")
    except AtelierError as exc:
        raise AtelierError(f"{where}: {exc}", field="name") from None
    if "prompt" not in table:
        raise AtelierError(f"{where} needs a prompt", field="prompt")
    if "seeds" not in table:
        raise AtelierError(f"{where} needs seeds, such as seeds = [1, 2, 3]", field="seeds")
    values: dict[str, Any] = {
        "name": name,
        "prompt": _text(table["prompt"], "prompt", where),
        "negative": _text(table.get("negative", ""), "negative", where),
        "seeds": _parse_seeds(table["seeds"], where),
    }
    for key in ("width", "height", "steps", "mask_blur", "inpaint_only_masked"):
        if key in table:
            values[key] = table[key]  # GenerationRequest.validate checks the types below
    for key in ("cfg_scale", "denoising_strength"):
        if key in table:
            values[key] = _number(table[key], key, where)
    for key in ("sampler", "inpainting_fill"):
        if key in table:
            values[key] = _text(table[key], key, where)
    if "lora" in table:
        values["lora"] = _parse_lora(table["lora"], where)
    scene = Scene(**values)
    if not isinstance(scene.inpaint_only_masked, bool):
        raise AtelierError(f"{where}: inpaint_only_masked must be true or false", field="inpaint_only_masked")
    _check_template(scene.prompt, f"{where} prompt")
    _check_template(scene.negative, f"{where} negative")
    try:
        resolve_sampler(scene.sampler)
        scene.request(scene.prompt, scene.negative, scene.seeds[0]).validate()
    except AtelierError as exc:
        raise AtelierError(f"{where}: {exc}", field=exc.field) from None
    return scene


def load_scenes(path: str | os.PathLike[str]) -> list[Scene]:
    """Read and check a scenes TOML file; any problem raises AtelierError naming the scene and key."""
    path = Path(path)
    data = read_toml(path, what="scenes file", field="scenes")
    _check_keys(data, ("scene",), path.name)
    tables = data.get("scene")
    if not isinstance(tables, list) or not tables:
        raise AtelierError(f"{path.name} has no scenes; add [[scene]] tables", field="scenes")
    scenes = [_parse_scene(table, index) for index, table in enumerate(tables, start=1)]
    seen: set[str] = set()
    for scene in scenes:
        if scene.name in seen:
            raise AtelierError(f"two scenes are named {scene.name!r}; scene names must differ", field="name")
        seen.add(scene.name)
    return scenes


# -- the catalog -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogRow:
    line: int  # in the CSV file, for messages about rows without a usable SKU
    values: dict[str, str]
    extra_values: int = 0  # cells beyond the header's columns

    @property
    def sku(self) -> str:
        return self.values.get("sku", "")


@dataclass(frozen=True)
class Catalog:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[CatalogRow, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read a catalog CSV (UTF-8, a BOM as Excel writes it is fine); raise AtelierError if it is unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AtelierError(f"catalog not found: {path}", field="catalog") from None
    except UnicodeDecodeError:
        raise AtelierError(
            f"catalog {path} is not UTF-8 text; save it as CSV UTF-8", field="catalog"
        ) from None
    except OSError as exc:
        raise AtelierError(f"cannot read catalog {path}: {exc}", field="catalog") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise AtelierError(f"catalog {path} is empty; its first line names the columns", field="catalog")
        columns = tuple(cell.strip() for cell in header)
        for number, column in enumerate(columns, start=1):
            if not column:
                raise AtelierError(f"catalog {path}: column {number} has no name", field="catalog")
            if columns.index(column) != number - 1:
                raise AtelierError(f"catalog {path}: column {column!r} appears twice", field="catalog")
        if "sku" not in columns:
            raise AtelierError(
                f"catalog {path} needs a 'sku' column; its columns are: {', '.join(columns)}", field="catalog"
            )
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            values = {column: "" for column in columns}
            values.update({column: cell.strip() for column, cell in zip(columns, cells, strict=False)})
            extra = sum(1 for cell in cells[len(columns) :] if cell.strip())
            rows.append(CatalogRow(reader.line_num, values, extra))
    except csv.Error as exc:
        raise AtelierError(f"catalog {path} is not valid CSV: {exc}", field="catalog") from None
    if not rows:
        raise AtelierError(f"catalog {path} has no rows", field="catalog")
    return Catalog(path, columns, tuple(rows))


# -- photos ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoFile:
    """A product photo or mask named by a row, checked once while planning and decoded only to generate."""

    path: Path
    relative: str  # as written in the catalog
    sha256: str
    size: tuple[int, int]

    def open(self, what: str) -> Image.Image:
        data = _read_file(self.path, self.relative, what)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise AtelierError(f"{what} {self.relative} changed while the batch ran; run the batch again")
        return _decode(data, self.relative, what, load=True)


def _read_file(path: Path, relative: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AtelierError(f"{what} not found: {relative}", field=what) from None
    except OSError as exc:
        raise AtelierError(f"cannot read {what} {relative}: {exc.strerror}", field=what) from None


def _decode(data: bytes, relative: str, what: str, *, load: bool) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PHOTO_PIXELS:
            raise AtelierError(
                f"{what} {relative} is {image.width}x{image.height}, more than {MAX_PHOTO_PIXELS} pixels",
                field=what,
            )
        if load:
            image.load()
        return image
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise AtelierError(f"{what} {relative} is not a readable image ({exc})", field=what) from None


def _photo(catalog: Catalog, relative: str, what: str) -> tuple[PhotoFile, Image.Image]:
    """The checked file, and the image with only its header read (its pixels are decoded to generate).

    The catalog is the user's own file (batches run from the CLI only), so a photo may be anywhere they can
    read: relative to the catalog's folder, or absolute.
    """
    path = (catalog.folder.resolve() / Path(relative).expanduser()).resolve()
    data = _read_file(path, relative, what)
    header = _decode(data, relative, what, load=False)
    return PhotoFile(path, relative, hashlib.sha256(data).hexdigest(), header.size), header


# -- the manifest ------------------------------------------------------------------------------------------------


class Manifest:
    """``manifest.jsonl``: one JSON object per image, appended one whole line at a time.

    Opening it repairs what an interrupted run can leave behind: a last line cut short, or lines whose image
    file is gone. Those lines are dropped (their images are made again) and the file is rewritten atomically.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.records: list[dict[str, Any]] = []
        self.dropped = 0
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, cut_short = lines[:-1], lines[-1]
        self.dropped = 1 if cut_short.strip() else 0
        base = self.folder.resolve()
        for line in complete:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                self.dropped += 1
                continue
            file = record.get("file") if isinstance(record, dict) else None
            path = (base / file).resolve() if isinstance(file, str) and file else None
            if path is None or not path.is_relative_to(base) or not path.is_file():
                self.dropped += 1
                continue
            self.records.append(record)
        if self.dropped:
            text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.records)
            write_text_atomic(self.path, text)

    @property
    def done(self) -> set[str]:
        return {
            record["request_hash"] for record in self.records if isinstance(record.get("request_hash"), str)
        }

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # One write() on an O_APPEND descriptor: a killed run leaves at most one cut-short last line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)


# -- backends ----------------------------------------------------------------------------------------------------


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
        image = _decode(_b64decode(images[0]), "the studio's answer", "image", load=True)
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


# -- planning and running ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProblem:
    """Something that kept images of one row from being made; ``scene``/``seed`` narrow it down."""

    sku: str
    reason: str
    line: int
    scene: str | None = None
    seed: int | None = None

    def __str__(self) -> str:
        who = self.sku or f"line {self.line}"
        where = [f"scene {self.scene}"] if self.scene else []
        if self.seed is not None:
            where.append(f"seed {self.seed}")
        if where:
            who = f"{who} [{', '.join(where)}]"
        return f"{who}: {self.reason}"


@dataclass
class BatchJob:
    """One image to make. ``request`` names no model and holds no pixels until it runs."""

    row: CatalogRow
    scene: Scene
    seed: int
    request: GenerationRequest
    request_hash: str
    image: PhotoFile | None
    mask: PhotoFile | None

    @property
    def sku(self) -> str:
        return self.row.sku


@dataclass
class BatchPlan:
    out_dir: Path
    manifest: Manifest
    jobs: list[BatchJob]  # still to make
    done: int  # asked for and already in the manifest
    total: int  # rows x scenes x seeds
    problems: list[BatchProblem] = field(default_factory=list)


@dataclass
class BatchSummary:
    total: int
    done_before: int
    generated: list[dict[str, Any]]  # the manifest records written by this run
    problems: list[BatchProblem]
    manifest_lines_dropped: int

    @property
    def failed_images(self) -> int:
        return self.total - self.done_before - len(self.generated)

    @property
    def failed_skus(self) -> list[str]:
        return list(dict.fromkeys(problem.sku or f"line {problem.line}" for problem in self.problems))

    @property
    def succeeded(self) -> bool:
        return not self.problems


def request_hash(
    sku: str,
    scene: str,
    request: GenerationRequest,
    model_hash: str,
    image_sha256: str | None,
    mask_sha256: str | None,
) -> str:
    """The identity of one image: what it shows (every setting and input) and where it goes (SKU, scene).

    Only the settings a scene controls are hashed, so a new engine option with a default (or a model path
    that differs between machines) leaves finished batches finished.
    """
    params = {name: getattr(request, name) for name in HASHED_SETTINGS}
    payload = {
        "sku": sku,
        "scene": scene,
        "params": params,
        "model": model_hash,
        "image": image_sha256,
        "mask": mask_sha256,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _RowPhotos:
    image: PhotoFile | None = None
    mask: PhotoFile | None = None
    # Header-only images: enough for GenerationRequest.validate(), which reads only their sizes.
    image_header: Image.Image | None = None
    mask_header: Image.Image | None = None


def _row_photos(catalog: Catalog, row: CatalogRow) -> _RowPhotos:
    image_name, mask_name = row.values.get("image", ""), row.values.get("mask", "")
    if mask_name and not image_name:
        raise AtelierError(
            f"mask {mask_name} has no image to inpaint; fill in the image column", field="image"
        )
    if not image_name:
        return _RowPhotos()
    image, image_header = _photo(catalog, image_name, "image")
    if not mask_name:
        return _RowPhotos(image, None, image_header, None)
    mask, mask_header = _photo(catalog, mask_name, "mask")
    if image.size != mask.size:
        raise AtelierError(
            f"mask {mask_name} is {mask.size[0]}x{mask.size[1]} but image {image_name} is "
            f"{image.size[0]}x{image.size[1]}",
            field="mask",
        )
    return _RowPhotos(image, mask, image_header, mask_header)


def _check_row(row: CatalogRow, first_line: dict[str, int]) -> None:
    if not row.sku:
        raise AtelierError("the sku is empty", field="sku")
    try:
        check_name(row.sku, what="sku")
    except AtelierError:
        raise AtelierError(
            f"sku {row.sku!r} cannot be a folder name (no / or \\, not starting with '.')"
        ) from None
    if row.sku in first_line:
        raise AtelierError(
            f"the same sku is on line {first_line[row.sku]}; each sku must be unique", field="sku"
        )
    if row.extra_values:
        raise AtelierError("the line has more values than the header has columns")


def plan_batch(
    catalog: Catalog, scenes: list[Scene], model_hash: str, out_dir: str | os.PathLike[str]
) -> BatchPlan:
    """Check every row against every scene and list the images still to make; nothing is generated."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    done = manifest.done
    per_row = sum(len(scene.seeds) for scene in scenes)
    plan = BatchPlan(out, manifest, jobs=[], done=0, total=len(catalog.rows) * per_row)
    first_line: dict[str, int] = {}
    for row in catalog.rows:
        try:
            _check_row(row, first_line)
            first_line[row.sku] = row.line
            photos = _row_photos(catalog, row)
        except AtelierError as exc:
            plan.problems.append(BatchProblem(row.sku, str(exc), row.line))
            continue
        image, mask = photos.image, photos.mask
        for scene in scenes:
            try:
                prompt, negative = scene.fill(row.values, catalog.columns)
                requests = [scene.request(prompt, negative, seed) for seed in scene.seeds]
                for request in requests:
                    dataclasses.replace(
                        request, init_image=photos.image_header, mask=photos.mask_header
                    ).validate()
            except AtelierError as exc:
                plan.problems.append(BatchProblem(row.sku, str(exc), row.line, scene=scene.name))
                continue
            for seed, request in zip(scene.seeds, requests, strict=True):
                key = request_hash(
                    row.sku,
                    scene.name,
                    request,
                    model_hash,
                    image.sha256 if image else None,
                    mask.sha256 if mask else None,
                )
                if key in done:
                    plan.done += 1
                else:
                    plan.jobs.append(BatchJob(row, scene, seed, request, key, image, mask))
    return plan


def _record(
    job: BatchJob,
    request: GenerationRequest,
    item: GeneratedImage,
    path: Path,
    out_dir: Path,
    backend: Backend,
) -> dict[str, Any]:
    params = request.to_params()
    params.update(
        model=backend.model_name,
        model_hash=backend.model_hash,
        mode=request.mode,
        size=f"{item.image.width}x{item.image.height}",
        image=job.image.relative if job.image else None,
        mask=job.mask.relative if job.mask else None,
    )
    return {
        "sku": job.sku,
        "scene": job.scene.name,
        "seed": job.seed,
        "file": path.relative_to(out_dir).as_posix(),
        "prompt": job.request.prompt,
        "negative_prompt": job.request.negative_prompt,
        "params": params,
        "request_hash": job.request_hash,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_batch(
    plan: BatchPlan,
    backend: Backend,
    *,
    on_problem: Callable[[BatchProblem], None] | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Make the plan's images one by one, appending each to the manifest as soon as its file is written.

    A problem with one image (the engine or the studio refusing the request) is passed to ``on_problem`` and
    the batch goes on. Problems found while planning are part of the summary but not passed again.
    """
    from tqdm import tqdm

    summary = BatchSummary(plan.total, plan.done, [], list(plan.problems), plan.manifest.dropped)
    photos = _DecodedPhotos()
    with tqdm(
        total=len(plan.jobs), unit="image", desc="generating", disable=not progress, dynamic_ncols=True
    ) as bar:
        for job in plan.jobs:
            bar.set_postfix_str(f"{job.sku} / {job.scene.name}", refresh=False)
            try:
                init_image, mask = photos.of(job)
                request = dataclasses.replace(job.request, init_image=init_image, mask=mask)
                item = backend.generate(request)
            except AtelierError as exc:
                problem = BatchProblem(job.sku, str(exc), job.row.line, scene=job.scene.name, seed=job.seed)
                summary.problems.append(problem)
                if on_problem is not None:
                    on_problem(problem)
                bar.update(1)
                continue
            path = save_image(item, plan.out_dir / job.sku / job.scene.name)
            record = _record(job, request, item, path, plan.out_dir, backend)
            plan.manifest.append(record)
            summary.generated.append(record)
            bar.update(1)
    return summary


class _DecodedPhotos:
    """The current row's photo and mask, decoded once for all its scenes and seeds; earlier rows are let go."""

    def __init__(self) -> None:
        self.line: int | None = None
        self.images: tuple[Image.Image | None, Image.Image | None] = (None, None)

    def of(self, job: BatchJob) -> tuple[Image.Image | None, Image.Image | None]:
        if job.row.line != self.line:
            self.line, self.images = None, (None, None)
            image = job.image.open("image") if job.image else None
            mask = job.mask.open("mask") if job.mask else None
            self.line, self.images = job.row.line, (image, mask)
        return self.images
