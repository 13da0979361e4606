"""`atelier batch`: catalog rows x scenes x seeds, resumable, in-process or through an A1111-shaped studio."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import atelier.cli
from atelier.campaign.batch import Manifest, Scene, load_scenes
from atelier.engine.infotext import read_infotext
from atelier.engine.models import model_sha256
from atelier.engine.request import INPAINTING_FILL_MODES, GenerationRequest
from atelier.errors import AtelierError

PHOTO_SIZE = (96, 64)
FILE_NAME = re.compile(r"^(\d+)_\d{8}-\d{6}(-\d+)?\.png$")
SCENES = """
[[scene]]
name = "forest"
prompt = "a {color} {product} in a misty forest"
negative = "blurry, {color} sky"
width = 64
height = 64
steps = 2
sampler = "Euler a"
seeds = [1, 2]
mask_blur = 0
denoising_strength = 1.0

[[scene]]
name = "studio"
prompt = "{product} on a white table, studio light"
width = 64
height = 64
steps = 2
sampler = "DPM++ 2M Karras"
cfg_scale = 5
seeds = [7]
"""
CATALOG = """sku,image,mask,product,color
JKT-1,photos/jacket.png,photos/jacket-mask.png,windbreaker,yellow
HAT-2,,,rain hat,green
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def batch_command():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(atelier.cli, "COMMAND_MODULES", ["atelier.cli.batch"])
        yield


def write_catalog(folder: Path, catalog: str = CATALOG, scenes: str = SCENES) -> tuple[Path, Path]:
    """A catalog with a patterned product photo and a mask over its top rows; returns (csv, scenes)."""
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    x, y = np.meshgrid(np.arange(PHOTO_SIZE[0]), np.arange(PHOTO_SIZE[1]))
    pixels = np.stack([x * 2, y * 3, (x + y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(folder / "photos" / "jacket.png")
    mask = Image.new("L", PHOTO_SIZE, 0)
    mask.paste(255, (0, 0, PHOTO_SIZE[0], 24))
    mask.save(folder / "photos" / "jacket-mask.png")
    (folder / "catalog.csv").write_text(catalog, encoding="utf-8")
    (folder / "scenes.toml").write_text(scenes, encoding="utf-8")
    return folder / "catalog.csv", folder / "scenes.toml"


@dataclass
class Run:
    code: int
    out: str
    err: str


def run_batch(*args: object) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = atelier.cli.main(["batch", *map(str, args), "--no-progress"])
    return Run(code, stdout.getvalue(), stderr.getvalue())


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def image_files(out: Path) -> set[Path]:
    return {path.relative_to(out) for path in out.rglob("*.png")}


@pytest.fixture(scope="module")
def first_batch(tiny_models, tmp_path_factory) -> tuple[Path, Path, Run]:
    """One in-process batch: 2 rows x (2 + 1) seeds, shared by the tests that only read its results."""
    folder = tmp_path_factory.mktemp("catalog")
    csv_path, scenes_path = write_catalog(folder)
    out = folder / "out"
    result = run_batch(csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", out)
    return folder, out, result


def test_the_manifest_has_one_line_per_image(first_batch):
    _, out, result = first_batch
    assert result.code == 0, result.err
    assert "2 rows x 2 scenes: 6 images, 0 already done, 6 to make" in result.out
    assert "made 6 images, 0 already done, 0 not made" in result.out
    records = manifest_lines(out)
    assert sorted((r["sku"], r["scene"], r["seed"]) for r in records) == [
        ("HAT-2", "forest", 1),
        ("HAT-2", "forest", 2),
        ("HAT-2", "studio", 7),
        ("JKT-1", "forest", 1),
        ("JKT-1", "forest", 2),
        ("JKT-1", "studio", 7),
    ]
    assert {Path(r["file"]) for r in records} == image_files(out)
    for record in records:
        folder, name = Path(record["file"]).parent, Path(record["file"]).name
        assert folder == Path(record["sku"]) / record["scene"]
        assert FILE_NAME.match(name).group(1) == str(record["seed"])
        assert record["params"]["steps"] == 2
        assert len(record["request_hash"]) == 64
    studio = next(r for r in records if r["sku"] == "HAT-2" and r["scene"] == "studio")
    assert studio["params"]["sampler"] == "DPM++ 2M Karras"
    assert studio["params"]["cfg_scale"] == 5.0
    assert studio["params"]["mode"] == "txt2img"


def test_placeholders_are_filled_in_manifest_and_infotext(first_batch):
    _, out, _ = first_batch
    records = {(r["sku"], r["scene"], r["seed"]): r for r in manifest_lines(out)}
    jacket = records["JKT-1", "forest", 2]
    assert jacket["prompt"] == "a yellow windbreaker in a misty forest"
    assert jacket["negative_prompt"] == "blurry, yellow sky"
    infotext = read_infotext(out / jacket["file"])
    assert infotext.startswith(
        "a yellow windbreaker in a misty forest\nNegative prompt: blurry, yellow sky\n"
    )
    assert "Seed: 2," in infotext
    assert records["HAT-2", "studio", 7]["prompt"] == "rain hat on a white table, studio light"


def test_inpainting_rows_keep_the_photo_exact_outside_the_mask(first_batch):
    folder, out, _ = first_batch
    photo = np.asarray(Image.open(folder / "photos" / "jacket.png").convert("RGB"))
    unmasked = np.asarray(Image.open(folder / "photos" / "jacket-mask.png")) == 0
    inpainted = [r for r in manifest_lines(out) if r["sku"] == "JKT-1" and r["scene"] == "forest"]
    assert len(inpainted) == 2
    for record in inpainted:
        assert record["params"]["mode"] == "inpaint"
        assert record["params"]["mask"] == "photos/jacket-mask.png"
        result = np.asarray(Image.open(out / record["file"]).convert("RGB"))
        assert result.shape == photo.shape  # the photo's size, not the scene's 64x64 working size
        assert np.array_equal(result[unmasked], photo[unmasked])
        assert not np.array_equal(result[~unmasked], photo[~unmasked])


def test_the_contact_sheet_links_every_image(first_batch):
    _, out, result = first_batch
    assert f"wrote {out / 'index.html'}" in result.out
    page = (out / "index.html").read_text(encoding="utf-8")
    linked = {Path(unquote(src)) for src in re.findall(r'<img src="([^"]+)"', page)}
    assert linked == image_files(out)
    assert "a yellow windbreaker in a misty forest" in page


def test_a_rerun_makes_nothing_new(first_batch, tiny_models):
    folder, out, _ = first_batch
    manifest_before = (out / "manifest.jsonl").read_bytes()
    files_before = image_files(out)
    again = run_batch(
        folder / "catalog.csv",
        "--scenes",
        folder / "scenes.toml",
        "--model",
        tiny_models("sd15"),
        "--out",
        out,
    )
    assert again.code == 0, again.err
    assert "6 images, 6 already done, 0 to make" in again.out
    assert "made 0 images, 6 already done, 0 not made" in again.out
    assert image_files(out) == files_before
    assert (out / "manifest.jsonl").read_bytes() == manifest_before


def test_bad_rows_are_reported_and_the_others_are_made(tmp_path, tiny_models):
    catalog = """sku,image,mask,product,color
GOOD,,,parka,red
NOPHOTO,photos/nothere.png,,boots,brown
NOCOLOR,,,scarf,
SMALLMASK,photos/jacket.png,photos/small-mask.png,vest,blue
GOOD,,,duplicate,red
../escape,,,bag,black
OUTSIDE,../elsewhere.png,,belt,black
"""
    scenes = SCENES.replace("seeds = [1, 2]", "seeds = [3]").replace(
        'prompt = "{product} on a white table, studio light"', 'prompt = "{product} in {colour}"'
    )
    csv_path, scenes_path = write_catalog(tmp_path, catalog, scenes)
    Image.new("L", (32, 32)).save(tmp_path / "photos" / "small-mask.png")
    out = tmp_path / "out"
    result = run_batch(csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", out)
    assert result.code == 1
    failures = [line for line in result.err.splitlines() if line.startswith("failed: ")]
    assert failures == [
        "failed: GOOD [scene studio]: scene 'studio' uses {colour}, which is not a column of the catalog",
        "failed: NOPHOTO: image not found: photos/nothere.png",
        "failed: NOCOLOR [scene forest]: color is empty, and scene 'forest' uses {color}",
        "failed: NOCOLOR [scene studio]: scene 'studio' uses {colour}, which is not a column of the catalog",
        "failed: SMALLMASK: mask photos/small-mask.png is 32x32 but image photos/jacket.png is 96x64",
        "failed: GOOD: the same sku is on line 2; each sku must be unique",
        "failed: ../escape: sku '../escape' cannot be a folder name (no / or \\, not starting with '.')",
        # The catalog is the user's own file: a path outside its folder is fine, this one just does not exist.
        "failed: OUTSIDE: image not found: ../elsewhere.png",
    ]
    assert [(r["sku"], r["scene"], r["prompt"]) for r in manifest_lines(out)] == [
        ("GOOD", "forest", "a red parka in a misty forest")
    ]
    assert "made 1 image, 0 already done, 13 not made" in result.out
    assert "6 rows with problems: GOOD, NOPHOTO, NOCOLOR, SMALLMASK, ../escape, OUTSIDE" in result.out


def test_an_interrupted_batch_resumes_and_new_seeds_add_only_their_images(tmp_path, tiny_models):
    catalog = "sku,product,color\nHAT-2,rain hat,green\n"
    scenes = SCENES.split('[[scene]]\nname = "studio"')[0]
    csv_path, scenes_path = write_catalog(tmp_path, catalog, scenes)
    out = tmp_path / "out"
    arguments = (
        csv_path,
        "--scenes",
        scenes_path,
        "--model",
        tiny_models("sd15"),
        "--out",
        out,
        "--no-sheet",
    )
    assert run_batch(*arguments).code == 0
    first, second = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # A kill during the second append leaves half a line behind.
    (out / "manifest.jsonl").write_text(first + second[: len(second) // 2], encoding="utf-8")

    resumed = run_batch(*arguments)
    assert resumed.code == 0, resumed.err
    assert "manifest: dropped 1 unfinished line(s)" in resumed.out
    assert "2 images, 1 already done, 1 to make" in resumed.out
    records = manifest_lines(out)
    assert [r["seed"] for r in records] == [1, 2]
    assert records[0] == json.loads(first)
    assert not (out / "index.html").exists()

    scenes_path.write_text(scenes.replace("seeds = [1, 2]", "seeds = [1, 2, 5]"), encoding="utf-8")
    grown = run_batch(*arguments)
    assert grown.code == 0, grown.err
    assert "3 images, 2 already done, 1 to make" in grown.out
    assert [r["seed"] for r in manifest_lines(out)] == [1, 2, 5]


def test_a_manifest_line_whose_image_is_gone_is_made_again(tmp_path):
    (tmp_path / "A" / "s").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "A" / "s" / "1_x.png")
    kept = {"sku": "A", "scene": "s", "seed": 1, "file": "A/s/1_x.png", "request_hash": "a" * 64}
    gone = {"sku": "A", "scene": "s", "seed": 2, "file": "A/s/2_x.png", "request_hash": "b" * 64}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(kept) + "\n" + json.dumps(gone) + "\n")
    manifest = Manifest(tmp_path)
    assert manifest.done == {"a" * 64}
    assert manifest.dropped == 1
    assert manifest_lines(tmp_path) == [kept]


# -- through a studio ---------------------------------------------------------------------------------------------

API_KEY = "batch-test-key"
MODEL_TITLE = "tiny-sd15.safetensors [{hash}]"


class FakeStudio(HTTPServer):
    """An A1111-shaped ``/sdapi/v1`` server on loopback that generates with the real engine."""

    def __init__(self, engine, model_path: Path) -> None:
        super().__init__(("127.0.0.1", 0), FakeStudioHandler)
        self.engine = engine
        self.model_path = model_path
        self.sha256 = model_sha256(model_path)
        self.title = MODEL_TITLE.format(hash=self.sha256[:10])
        self.calls: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class FakeStudioHandler(BaseHTTPRequestHandler):
    server: FakeStudio

    def log_message(self, format, *args):  # keep pytest's output clean
        pass

    def answer(self, status: int, body: object) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self) -> bool:
        self.server.calls.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            self.answer(401, {"detail": "an API key is required"})
            return False
        return True

    def do_GET(self):
        if not self.authorized():
            return
        if self.path != "/sdapi/v1/sd-models":
            self.answer(404, {"detail": "Not Found"})
            return
        studio = self.server
        entry = {
            "title": studio.title,
            "model_name": "tiny-sd15",
            "hash": studio.sha256[:10],
            "sha256": studio.sha256,
        }
        self.answer(200, [{**entry, "filename": "/models/tiny-sd15.safetensors", "config": None}])

    def do_POST(self):
        if not self.authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path not in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
            self.answer(404, {"detail": "Not Found"})
            return
        if body["override_settings"]["sd_model_checkpoint"] != self.server.title:
            self.answer(422, {"detail": "unknown model"})
            return
        request = GenerationRequest(
            prompt=body["prompt"],
            negative_prompt=body["negative_prompt"],
            model=str(self.server.model_path),
            sampler=body["sampler_name"],
            steps=body["steps"],
            cfg_scale=body["cfg_scale"],
            seed=body["seed"],
            width=body["width"],
            height=body["height"],
        )
        if self.path.endswith("img2img"):
            request.init_image = decode(body["init_images"][0])
            request.denoising_strength = body["denoising_strength"]
        if body.get("mask"):
            request.mask = decode(body["mask"])
            request.mask_blur = body["mask_blur"]
            request.inpaint_only_masked = body["inpaint_full_res"]
            request.inpainting_fill = INPAINTING_FILL_MODES[body["inpainting_fill"]]
        try:
            result = self.server.engine.generate(request)
        except AtelierError as problem:
            self.answer(422, {"detail": str(problem)})
            return
        images = []
        for item in result.images:
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", item.infotext)
            buffer = io.BytesIO()
            item.image.save(buffer, format="PNG", pnginfo=info)
            images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        info = {"seed": result.seeds[0], "all_seeds": result.seeds, "infotexts": result.infotexts}
        self.answer(200, {"images": images, "parameters": body, "info": json.dumps(info)})


def decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


@pytest.fixture
def studio(engine, tiny_models) -> Iterator[FakeStudio]:
    server = FakeStudio(engine, tiny_models("sd15"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_server_mode_makes_the_same_images_over_http(tmp_path, tiny_models, studio, monkeypatch):
    scenes = SCENES.split('[[scene]]\nname = "studio"')[0].replace("seeds = [1, 2]", "seeds = [4]")
    csv_path, scenes_path = write_catalog(tmp_path, scenes=scenes)
    monkeypatch.setenv("ATELIER_API_KEY", API_KEY)
    served = run_batch(
        csv_path,
        "--scenes",
        scenes_path,
        "--model",
        "tiny-sd15",
        "--out",
        tmp_path / "served",
        "--server",
        studio.url,
    )
    assert served.code == 0, served.err
    generation_calls = [call for call in studio.calls if not call[0].endswith("sd-models")]
    assert generation_calls == [
        ("/sdapi/v1/img2img", f"Bearer {API_KEY}"),
        ("/sdapi/v1/txt2img", f"Bearer {API_KEY}"),
    ]

    local = run_batch(
        csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", tmp_path / "local"
    )
    assert local.code == 0, local.err
    served_records = {r["sku"]: r for r in manifest_lines(tmp_path / "served")}
    local_records = {r["sku"]: r for r in manifest_lines(tmp_path / "local")}
    assert served_records.keys() == local_records.keys() == {"JKT-1", "HAT-2"}
    for sku, record in served_records.items():
        # Same request, same model: the same key and the same pixels, whichever way it was made.
        assert record["request_hash"] == local_records[sku]["request_hash"]
        assert record["prompt"] == local_records[sku]["prompt"]
        with Image.open(tmp_path / "served" / record["file"]) as served_image:
            assert read_infotext(served_image).startswith(record["prompt"])
            served_pixels = np.asarray(served_image.convert("RGB"))
        with Image.open(tmp_path / "local" / local_records[sku]["file"]) as local_image:
            assert np.array_equal(served_pixels, np.asarray(local_image.convert("RGB")))

    # A batch made in-process is finished, not redone, through the studio.
    shutil.rmtree(tmp_path / "served")
    calls = len(studio.calls)
    resumed = run_batch(
        csv_path,
        "--scenes",
        scenes_path,
        "--model",
        "tiny-sd15",
        "--out",
        tmp_path / "local",
        "--server",
        studio.url,
    )
    assert "made 0 images, 2 already done, 0 not made" in resumed.out
    assert [path for path, _ in studio.calls[calls:]] == ["/sdapi/v1/sd-models"]


def test_server_mode_refuses_a_wrong_key_in_one_line(tmp_path, studio):
    csv_path, scenes_path = write_catalog(tmp_path)
    result = run_batch(
        csv_path,
        "--scenes",
        scenes_path,
        "--model",
        "tiny-sd15",
        "--out",
        tmp_path / "out",
        "--server",
        studio.url,
        "--api-key",
        "wrong",
    )
    assert result.code == 2
    assert result.err == (
        f"error: the studio at {studio.url} refused the request (401); pass --api-key or set ATELIER_API_KEY\n"
    )
    assert not (tmp_path / "out").exists()


# -- files that cannot be used -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenes", "message"),
    [
        (
            SCENES.replace("seeds = [7]", "sedes = [7]"),
            "unknown key 'sedes' in scene 'studio'; did you mean 'seeds'?",
        ),
        (
            SCENES.replace("seeds = [7]", "seeds = [-1]"),
            "scene 'studio': seeds must be integers from 0 to 4294967295, got -1",
        ),
        (
            SCENES.replace("width = 64", "width = 100", 1),
            "scene 'forest': width must be a multiple of 8, got 100",
        ),
        (SCENES.replace('"Euler a"', '"Euler z"'), "scene 'forest': unknown sampler 'Euler z'"),
        (SCENES.replace("{product} on", "{0} on"), "scene 'studio' prompt: {0} is not a placeholder"),
        (SCENES.replace('name = "studio"', 'name = "forest"'), "two scenes are named 'forest'"),
        ("[[scene]\n", "is not valid TOML"),
    ],
    ids=[
        "unknown-key",
        "random-seed",
        "bad-width",
        "unknown-sampler",
        "positional-placeholder",
        "same-name",
        "toml",
    ],
)
def test_scene_file_problems_stop_before_anything_runs(tmp_path, tiny_models, scenes, message):
    csv_path, scenes_path = write_catalog(tmp_path, scenes=scenes)
    result = run_batch(
        csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", tmp_path / "out"
    )
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err
    assert result.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "catalog not found"),
        (b"product,color\nhat,red\n", "needs a 'sku' column; its columns are: product, color"),
        (b"sku,color\n", "has no rows"),
        ("sku,color\nHAT,rouge\u0301\n".encode("utf-16"), "is not UTF-8 text"),
        (b"sku,color,color\nHAT,red,blue\n", "column 'color' appears twice"),
    ],
    ids=["missing", "no-sku-column", "no-rows", "utf-16", "duplicate-column"],
)
def test_catalog_problems_exit_with_2(tmp_path, tiny_models, content, message):
    _, scenes_path = write_catalog(tmp_path)
    csv_path = tmp_path / "broken.csv"
    if content is not None:
        csv_path.write_bytes(content)
    result = run_batch(
        csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", tmp_path / "out"
    )
    assert result.code == 2
    assert result.err.startswith("error: ") and message in result.err


def test_an_unknown_lora_stops_before_anything_runs(tmp_path, tiny_models):
    scenes = SCENES.replace("seeds = [7]", 'seeds = [7]\nlora = { name = "linen", weight = 0.8 }')
    csv_path, scenes_path = write_catalog(tmp_path, scenes=scenes)
    result = run_batch(
        csv_path,
        "--scenes",
        scenes_path,
        "--model",
        tiny_models("sd15"),
        "--out",
        tmp_path / "out",
        "--lora-dir",
        tmp_path,
    )
    assert result.code == 2
    assert result.err == "error: scene 'studio': unknown LoRA 'linen'; available: none\n"


def test_a_scene_lora_is_added_to_every_filled_prompt(tmp_path):
    scenes_path = tmp_path / "scenes.toml"
    scenes_path.write_text(
        SCENES.replace("seeds = [7]", 'seeds = [7]\nlora = { name = "linen", weight = 0.8 }')
    )
    studio = load_scenes(scenes_path)[1]
    assert isinstance(studio, Scene)
    prompt, negative = studio.fill({"product": "a {curly} tote"}, ("sku", "product"))
    assert prompt == "a {curly} tote on a white table, studio light <lora:linen:0.8>"
    assert negative == ""


def test_a_catalog_may_name_photos_by_absolute_path(tmp_path, tiny_models):
    """The catalog is the user's own CSV: photos kept in a shared folder are named by their full path."""
    shared = tmp_path / "shared-photos"
    csv_path, scenes_path = write_catalog(tmp_path / "catalog")
    (tmp_path / "catalog" / "photos").rename(shared)
    catalog = f"sku,image,mask,product,color\nJKT-1,{shared / 'jacket.png'},{shared / 'jacket-mask.png'},parka,red\n"
    csv_path.write_text(catalog, encoding="utf-8")
    scenes = SCENES.replace("seeds = [1, 2]", "seeds = [1]").split('[[scene]]\nname = "studio"')[0]
    scenes_path.write_text(scenes, encoding="utf-8")
    out = tmp_path / "out"
    result = run_batch(csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", out)
    assert result.code == 0, result.err
    assert [(line["sku"], line["scene"]) for line in manifest_lines(out)] == [("JKT-1", "forest")]


def test_a_row_with_a_cutout_photo_and_no_mask_keeps_the_product_exact(tmp_path, tiny_models):
    """Catalogs often hold cut-outs already: the transparency is the product, the scene is generated around it."""
    from product_helpers import cutout_photo

    csv_path, scenes_path = write_catalog(
        tmp_path, "sku,image,product,color\nBTL-1,photos/bottle.png,bottle,green\n"
    )
    photo, alpha = cutout_photo(PHOTO_SIZE, soft_edge=False)
    photo.save(tmp_path / "photos" / "bottle.png")
    out = tmp_path / "out"
    result = run_batch(csv_path, "--scenes", scenes_path, "--model", tiny_models("sd15"), "--out", out)
    assert result.code == 0, result.err
    product = np.asarray(alpha) == 255
    pixels = np.asarray(photo.convert("RGB"))
    records = manifest_lines(out)
    assert len(records) == 3
    for record in records:
        assert record["params"]["mode"] == "inpaint" and record["params"]["mask"] == "automatic"
        made = np.asarray(Image.open(out / record["file"]).convert("RGB"))
        assert made.shape == pixels.shape
        assert np.array_equal(made[product], pixels[product])
        assert not np.array_equal(made[~product], pixels[~product])
