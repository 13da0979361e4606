"""The A1111-compatible API, driven by the `webuiapi` PyPI client as a real peer."""

from __future__ import annotations

import base64
import io
import json
import threading

import httpx
import pytest
import webuiapi
from PIL import Image, ImageChops
from studio_helpers import fast_config, install_checkpoint, make_lora, running_worker, wait_for

from atelier.service.server import StudioServer
from atelier.service.studio import Studio

SMALL = {"steps": 2, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    config = fast_config(tmp_path_factory.mktemp("a1111") / "data", max_workers=0, port=0, settle_seconds=0.0)
    setup = Studio.open(config)
    install_checkpoint(setup, tiny_models("sd15"), "tiny-sd15")
    install_checkpoint(setup, tiny_models("sd15-inpaint"), "tiny-inpaint")
    setup.close()
    server = StudioServer(config, log_level="warning")
    url = server.start()
    port = int(url.rsplit(":", 1)[1])
    with running_worker(server.studio):
        yield server, webuiapi.WebUIApi(host="127.0.0.1", port=port, sampler="Euler a", steps=2), url
    server.stop()


@pytest.fixture
def api(served):
    return served[1]


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served[2], timeout=60) as client:
        yield client


def test_txt2img_answers_like_a1111(api):
    result = api.txt2img(prompt="a red bottle", negative_prompt="blurry", seed=42, batch_size=2, **SMALL)
    assert len(result.images) == 2
    assert result.info["all_seeds"] == [42, 43]
    assert result.info["seed"] == 42
    assert result.info["prompt"] == "a red bottle"
    assert result.info["sampler_name"] == "Euler a"
    assert len(result.info["infotexts"]) == 2
    assert result.images[1].info["parameters"] == result.info["infotexts"][1]
    assert "Negative prompt: blurry" in result.info["infotexts"][0]
    assert "Seed: 43" in result.info["infotexts"][1]
    assert result.parameters["prompt"] == "a red bottle"
    assert result.images[0].size == (64, 64)


def test_the_same_seed_gives_the_same_image(api):
    first = api.txt2img(prompt="a blue shoe", seed=5, **SMALL).image
    second = api.txt2img(prompt="a blue shoe", seed=5, **SMALL).image
    assert first.tobytes() == second.tobytes()


def test_img2img_inpainting_keeps_the_unmasked_photo(api):
    photo = Image.new("RGB", (64, 64), (200, 30, 30))
    photo.paste((20, 20, 220), (0, 0, 32, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 60, 60))
    result = api.img2img(
        images=[photo],
        mask_image=mask,
        prompt="a product photo",
        denoising_strength=0.9,
        mask_blur=0,
        inpainting_fill=1,
        inpaint_full_res=False,
        seed=1,
        override_settings={"sd_model_checkpoint": "tiny-inpaint"},
        **SMALL,
    )
    out = result.image.convert("RGB")
    assert out.size == (64, 64)
    outside = ImageChops.difference(out.crop((0, 0, 36, 36)), photo.crop((0, 0, 36, 36)))
    assert outside.getbbox() is None
    assert (
        ImageChops.difference(out.crop((40, 40, 60, 60)), photo.crop((40, 40, 60, 60))).getbbox() is not None
    )
    assert "Mask blur: 0" in result.info["infotexts"][0]
    assert result.info["sd_model_name"] == "tiny-inpaint"


def test_img2img_only_masked_keeps_the_original_size(api):
    photo = Image.new("RGB", (96, 80), (10, 120, 10))
    mask = Image.new("L", (96, 80), 0)
    mask.paste(255, (10, 10, 30, 30))
    result = api.img2img(
        images=[photo],
        mask_image=mask,
        prompt="a shoe",
        inpaint_full_res=True,
        inpaint_full_res_padding=8,
        **SMALL,
    )
    assert result.image.size == (96, 80)


def test_img2img_resize_modes_give_the_requested_size(api):
    photo = Image.new("RGB", (128, 64), (10, 120, 10))
    for mode in (0, 1, 2):
        result = api.img2img(
            images=[photo], prompt="a bag", resize_mode=mode, denoising_strength=0.6, **SMALL
        )
        assert result.image.size == (64, 64)


def test_models_and_options(api, http):
    titles = api.util_get_model_names()
    assert len(titles) == 2
    models = {model["model_name"]: model for model in api.get_sd_models()}
    assert set(models["tiny-sd15"]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert models["tiny-sd15"]["hash"] == models["tiny-sd15"]["sha256"][:10]
    api.set_options({"sd_model_checkpoint": models["tiny-inpaint"]["title"]})
    assert api.get_options()["sd_model_checkpoint"] == models["tiny-inpaint"]["title"]
    assert api.util_get_current_model() == models["tiny-inpaint"]["title"]
    result = api.txt2img(prompt="a red bottle", seed=1, **SMALL)
    assert result.info["sd_model_name"] == "tiny-inpaint"
    api.refresh_checkpoints()
    api.util_set_model("tiny-sd15")
    assert api.util_get_current_model() == models["tiny-sd15"]["title"]
    refused = http.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing"})
    assert refused.status_code == 404
    assert refused.json()["field"] == "sd_model_checkpoint"


def test_options_have_a1111s_keys_and_the_preview_ones_change_behaviour(served, api, http):
    options = api.get_options()
    for key in (
        "send_seed",
        "send_size",
        "samples_format",
        "CLIP_stop_at_last_layers",
        "live_previews_enable",
    ):
        assert key in options, key
    store = served[0].studio.store

    def preview_step(every: int):
        api.set_options({"show_progress_every_n_steps": every})
        result = api.txt2img(prompt="a bottle", seed=2, steps=6, width=64, height=64)
        return store.get(result.info["job_id"]).progress_info.get("preview_step")

    try:
        assert preview_step(2) == 4  # previews at steps 2 and 4 (none at the last: the image follows)
        assert preview_step(0) is None
    finally:
        api.set_options({"show_progress_every_n_steps": 5})
    refused = http.post("/sdapi/v1/options", json={"samples_format": "jpg"})
    assert refused.status_code == 422 and refused.json()["field"] == "samples_format"


def test_samplers_schedulers_and_progress(api):
    samplers = [sampler["name"] for sampler in api.get_samplers()]
    assert "Euler a" in samplers and "DPM++ 2M" in samplers
    schedulers = {scheduler["name"]: scheduler for scheduler in api.get_schedulers()}
    assert schedulers["karras"]["label"] == "Karras"
    assert schedulers["automatic"]["label"] == "Automatic"
    progress = api.get_progress()
    assert progress["progress"] == 0.0
    assert progress["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.05)


def test_png_info_reads_back_the_parameters(api):
    image = api.txt2img(prompt="a red bottle", seed=9, cfg_scale=5, **SMALL).image
    info = api.png_info(image)
    assert "Seed: 9" in info.info
    assert info.parameters["Seed"] == "9"
    assert info.parameters["CFG scale"] == "5.0"
    assert info.parameters["Prompt"] == "a red bottle"


def test_loras_refresh_and_use_by_name(served, api, http, tiny_models, tmp_path):
    server = served[0]
    lora = make_lora(tiny_models("sd15"), tmp_path / "jacket.safetensors", seed=4)
    server.studio.storage.put_file("models/jacket.safetensors", lora)
    assert http.post("/sdapi/v1/refresh-loras").status_code == 200
    loras = {lora["name"]: lora for lora in api.get_loras()}
    assert loras["jacket"]["path"] == "models/jacket.safetensors"
    plain = api.txt2img(prompt="a jacket", seed=3, **SMALL).image
    styled = api.txt2img(prompt="a jacket <lora:jacket:1>", seed=3, **SMALL)
    assert styled.image.tobytes() != plain.tobytes()
    assert "Lora hashes" in styled.info["infotexts"][0]


def test_concurrent_requests_are_queued_not_dropped(api):
    results: dict[int, object] = {}

    def call(seed: int) -> None:
        results[seed] = api.txt2img(prompt="a bag", seed=seed, **SMALL)

    threads = [threading.Thread(target=call, args=(seed,)) for seed in range(100, 106)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(100, 106))
    assert {result.info["job_id"] for result in results.values()}.__len__() == 6
    assert all(result.info["all_seeds"] == [seed] for seed, result in results.items())


def test_interrupt_cancels_the_running_job(api, http):
    outcome = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault(
            "result", api.txt2img(prompt="a bag", seed=1, steps=400, width=64, height=64)
        )
    )
    thread.start()
    wait_for(lambda: api.get_progress()["state"]["sampling_step"] >= 1)
    progress = api.get_progress()
    assert 0 < progress["progress"] < 1 and progress["state"]["sampling_steps"] == 400
    # A1111's live preview: a picture of the latents as they are now, as base64 like A1111 sends it.
    preview = wait_for(lambda: api.get_progress()["current_image"], timeout=20)
    assert Image.open(io.BytesIO(base64.b64decode(preview))).size == (8, 8)
    skipped = http.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
    assert skipped["current_image"] is None
    api.interrupt()
    thread.join(timeout=30)
    # As A1111 does: the answer carries the picture as it was at the stopping step, with its seed.
    (stopped,) = outcome["result"].images
    assert stopped.size == (64, 64)
    assert outcome["result"].info["all_seeds"] == [1]
    assert "Seed: 1" in outcome["result"].info["infotexts"][0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "sampler_name": "Nope"}, "sampler_name"),
        ({"prompt": "x", "scheduler": "nope"}, "scheduler"),
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "width": 7}, "width"),
        ({"prompt": "x", "n_iter": "lots"}, "n_iter"),
        ({"prompt": "x", "enable_hr": True, "hr_upscaler": "4x-Nope"}, "hr_upscaler"),
        ({"prompt": "x", "enable_hr": True, "hr_sampler_name": "Nope"}, "hr_sampler_name"),
        ({"prompt": "x <lora:missing:1>"}, "prompt"),
        ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "missing"}}, "sd_model_checkpoint"),
    ],
)
def test_bad_txt2img_input_names_the_a1111_field(http, body, field):
    response = http.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["field"] == field


def test_hires_fix_and_sizes_that_are_not_multiples_of_8(api, http):
    result = api.txt2img(
        prompt="a yellow parka",
        seed=3,
        enable_hr=True,
        hr_scale=2,
        hr_upscaler=webuiapi.HiResUpscaler.Latent,
        denoising_strength=0.6,
        override_settings={"sd_model_checkpoint": "tiny-sd15"},
        **SMALL,
    )
    assert result.image.size == (128, 128)
    infotext = result.info["infotexts"][0]
    assert "Size: 64x64" in infotext and "Hires upscaler: Latent" in infotext
    assert "Denoising strength: 0.6" in infotext and "Hires upscale: 2" in infotext
    # PNG info reads the hires fields back.
    assert api.png_info(result.image).info == infotext
    on_inpainting_model = http.post(
        "/sdapi/v1/txt2img",
        json={
            **SMALL,
            "prompt": "x",
            "enable_hr": True,
            "override_settings": {"sd_model_checkpoint": "tiny-inpaint"},
        },
    )
    assert on_inpainting_model.status_code == 422 and on_inpainting_model.json()["field"] == "enable_hr"
    tiled = api.txt2img(prompt="a fabric pattern", seed=5, tiling=True, **SMALL)
    assert "Tiling: True" in tiled.info["infotexts"][0]
    # A1111 rounds a size down to a multiple of 8 rather than refusing it.
    odd = api.txt2img(prompt="a bag", seed=1, steps=2, width=100, height=70)
    assert odd.image.size == (96, 64)


def test_extras_upscale_like_a1111(api, http):
    photo = Image.new("RGB", (40, 30), "navy")
    photo.paste((250, 200, 0), (10, 10, 30, 20))
    doubled = api.extra_single_image(photo, upscaler_1=webuiapi.Upscaler.Lanczos, upscaling_resize=2)
    assert doubled.image.size == (80, 60)
    assert doubled.image.getpixel((40, 30))[:3] == (250, 200, 0)
    # To a size, cropped to its aspect ratio after covering it.
    banner = api.extra_single_image(
        photo, resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=40, upscaler_1="Nearest"
    )
    assert banner.image.size == (100, 40)
    batch = api.extra_batch_images(
        [photo, photo.rotate(90, expand=True)], upscaler_1="Lanczos", upscaling_resize=1.5
    )
    assert [image.size for image in batch.images] == [(60, 45), (45, 60)]
    refused = http.post(
        "/sdapi/v1/extra-single-image",
        json={"image": "data:image/png;base64," + _b64(photo), "upscaler_1": "R-ESRGAN 4x+"},
    )
    assert refused.status_code == 422 and refused.json()["field"] == "upscaler_1"
    faces = http.post("/sdapi/v1/extra-single-image", json={"image": _b64(photo), "gfpgan_visibility": 1})
    assert faces.status_code == 422 and faces.json()["field"] == "gfpgan_visibility"


def test_listings_answer_what_the_studio_has(api, http):
    assert [item["name"] for item in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert [item["name"] for item in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    assert api.get_realesrgan_models() == [] and api.get_face_restorers() == []
    assert api.get_hypernetworks() == [] and api.get_sd_vae() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    memory = api.get_memory()
    assert 0 < memory["ram"]["used"] <= memory["ram"]["total"]
    assert http.get("/internal/ping").json() == {}
    for route in ("sd-modules", "extensions", "script-info"):
        assert http.get(f"/sdapi/v1/{route}").json() == []


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_saved_styles_are_imported_from_styles_csv_and_applied(api, http):
    styles_csv = (
        "name,prompt,negative_prompt\n"
        '"Studio shot","{prompt}, product photo, softbox lighting","blurry"\n'
        "Film,35mm film grain,\n"
    )
    assert http.put("/api/styles", json={"csv": styles_csv}).status_code == 200
    assert [style["name"] for style in api.get_prompt_styles()] == ["Studio shot", "Film"]
    result = api.txt2img(
        prompt="a yellow parka",
        negative_prompt="low quality",
        styles=["Studio shot", "Film"],
        seed=4,
        **SMALL,
    )
    infotext = result.info["infotexts"][0]
    assert infotext.startswith("a yellow parka, product photo, softbox lighting, 35mm film grain\n")
    assert "Negative prompt: low quality, blurry" in infotext
    unknown = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "styles": ["Studio shots"]})
    assert unknown.status_code == 404 and unknown.json()["field"] == "styles"
    assert "did you mean 'Studio shot'" in unknown.json()["detail"]
    saved = http.post("/api/styles", json={"name": "Noir", "prompt": "black and white"})
    assert saved.status_code == 201
    assert http.delete("/api/styles/Film").status_code == 204
    listed = http.get("/api/styles").json()
    assert [style["name"] for style in listed["styles"]] == ["Studio shot", "Noir"]
    assert listed["csv"].startswith("name,prompt,negative_prompt\n")
    assert "prompt_styles" not in api.get_options()  # styles are not an option


def _xyz_args(x_type, x_values, y_type=0, y_values="", lone=True, vary_x=False):
    # A1111 1.7+'s script_args: 3 axes (type, values, dropdown), legend, lone images, sub grids,
    # keep -1 seeds, vary seeds for X/Y/Z, margin, csv mode.
    return [
        x_type,
        x_values,
        [],
        y_type,
        y_values,
        [],
        0,
        "",
        [],
        True,
        lone,
        False,
        False,
        vary_x,
        False,
        False,
        0,
        False,
    ]


def _xyz_args_16(x_type, x_values, lone=True):
    # A1111 1.6's layout: no vary-seeds flags, and raw mode at the end.
    return [x_type, x_values, [], 0, "", [], 0, "", [], True, lone, False, False, 0, False, False]


def test_xyz_plot_returns_a_labelled_grid_and_each_cell(api, http):
    assert "x/y/z plot" in http.get("/sdapi/v1/scripts").json()["txt2img"]
    result = api.txt2img(
        prompt="a red bottle",
        seed=8,
        script_name="x/y/z plot",
        script_args=_xyz_args(4, "1-2", 6, "3, 7"),  # X: Steps 1 and 2; Y: CFG Scale 3 and 7
        override_settings={"sd_model_checkpoint": "tiny-sd15"},
        **SMALL,
    )
    grid, *cells = result.images
    assert len(cells) == 4
    # Two columns and two rows of 64 px pictures, with room for the labels above and to the left.
    assert grid.width > 128 and grid.height > 128
    assert result.info["all_seeds"][0] == 8
    infotext = result.info["infotexts"][0]
    assert (
        "Script: X/Y/Z plot" in infotext and "X Type: Steps" in infotext and "Y Type: CFG Scale" in infotext
    )
    cell_texts = result.info["infotexts"][1:]
    assert ["Steps: 1" in text for text in cell_texts] == [True, False, True, False]  # X varies fastest
    assert ["CFG scale: 7.0" in text for text in cell_texts] == [False, False, True, True]
    # The cell with Steps 2 and CFG 7 is the same picture as generating it alone.
    alone = api.txt2img(
        prompt="a red bottle",
        seed=8,
        cfg_scale=7,
        override_settings={"sd_model_checkpoint": "tiny-sd15"},
        **{**SMALL, "steps": 2},
    )
    assert ImageChops.difference(cells[3].convert("RGB"), alone.image.convert("RGB")).getbbox() is None
    varied = api.txt2img(
        prompt="a red bottle",
        seed=8,
        script_name="x/y/z plot",
        script_args=_xyz_args(6, "3, 7", vary_x=True),
        **SMALL,
    )
    assert varied.info["infotexts"][1].count("Seed: 8") == 1 and "Seed: 9" in varied.info["infotexts"][2]


def test_xyz_prompt_search_and_replace_and_refusals(api, http):
    result = api.txt2img(
        prompt="a red bottle",
        seed=3,
        script_name="X/Y/Z plot",
        script_args=_xyz_args_16("Prompt S/R", "red, blue, green", lone=False),
        **SMALL,
    )
    assert len(result.images) == 1  # just the grid
    # One row of three: no Y labels, so no band on the left; the X labels (red, blue, green) above.
    assert result.images[0].width == 3 * 64 and result.images[0].height > 64
    unavailable = http.post(
        "/sdapi/v1/txt2img",
        json={**SMALL, "prompt": "x", "script_name": "x/y/z plot", "script_args": _xyz_args(13, "0, 1")},
    )
    assert unavailable.status_code == 422 and unavailable.json()["field"] == "script_args.x_type"
    assert "Sigma Churn" in unavailable.json()["detail"]
    not_found = http.post(
        "/sdapi/v1/txt2img",
        json={
            **SMALL,
            "prompt": "a bag",
            "script_name": "x/y/z plot",
            "script_args": _xyz_args(7, "red, blue"),
        },
    )
    assert not_found.status_code == 422 and "not in the prompt" in not_found.json()["detail"]
    other_script = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "x", "script_name": "sd upscale"})
    assert other_script.status_code == 422 and other_script.json()["field"] == "script_name"


def test_sd_upscale_redraws_the_enlarged_picture_tile_by_tile(api, http):
    photo = Image.new("RGB", (64, 48), "navy")
    photo.paste((250, 200, 0), (16, 12, 48, 36))
    result = api.img2img(
        images=[photo],
        prompt="a yellow label",
        seed=6,
        denoising_strength=0.5,
        script_name="sd upscale",
        script_args=["", 16, 1, 2],  # 16 px overlap, Lanczos, x2
        override_settings={"sd_model_checkpoint": "tiny-sd15"},
        **SMALL,  # 64 x 64 tiles
    )
    assert result.image.size == (128, 96)
    infotext = result.info["infotexts"][0]
    assert "Script: SD upscale" in infotext and "SD upscale upscaler: Lanczos" in infotext
    too_big = http.post(
        "/sdapi/v1/img2img",
        json={
            **SMALL,
            "prompt": "x",
            "init_images": [_b64(photo)],
            "script_name": "sd upscale",
            "script_args": ["", 16, 1, 9],
        },
    )
    assert too_big.status_code == 422 and too_big.json()["field"] == "script_args"
    assert "sd upscale" in http.get("/sdapi/v1/scripts").json()["img2img"]


def test_a_batch_tool_can_ask_for_a_lower_priority(served, http):
    server = served[0]
    answer = http.post(
        "/sdapi/v1/txt2img", json={**SMALL, "prompt": "a catalog shot"}, headers={"X-Atelier-Priority": "-1"}
    )
    assert answer.status_code == 200, answer.text
    job_id = json.loads(answer.json()["info"])["job_id"]
    assert server.studio.store.get(job_id).priority == -1
    refused = http.post(
        "/sdapi/v1/txt2img", json={**SMALL, "prompt": "x"}, headers={"X-Atelier-Priority": "urgent"}
    )
    assert refused.status_code == 422 and refused.json()["field"] == "X-Atelier-Priority"


def test_bad_img2img_input_names_the_field(http):
    base = {**SMALL, "prompt": "x", "init_images": ["aGVsbG8="]}
    assert http.post("/sdapi/v1/img2img", json=base).json()["field"] == "init_images"
    photo = webuiapi.raw_b64_img(Image.new("RGB", (64, 64)))
    small_mask = webuiapi.raw_b64_img(Image.new("L", (32, 32)))
    mismatch = http.post("/sdapi/v1/img2img", json={**base, "init_images": [photo], "mask": small_mask})
    assert (mismatch.status_code, mismatch.json()["field"]) == (422, "mask")
    missing = http.post("/sdapi/v1/img2img", json={**SMALL, "prompt": "x"})
    assert missing.json()["field"] == "init_images"
    png_info = http.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"})
    assert (png_info.status_code, png_info.json()["field"]) == (422, "image")


def test_png_info_for_an_image_without_parameters(http):
    plain = webuiapi.raw_b64_img(Image.new("RGB", (8, 8)))
    answer = http.post("/sdapi/v1/png-info", json={"image": plain}).json()
    assert answer == {"info": "", "items": {}, "parameters": {}}


def test_wait_for_ready_after_work(api):
    api.txt2img(prompt="a bag", seed=1, **SMALL)
    wait_for(lambda: api.get_progress()["state"]["job_count"] == 0)


def _word_vectors(base_model, words: str):
    from diffusers import StableDiffusionPipeline

    pipeline = StableDiffusionPipeline.from_pretrained(str(base_model))
    ids = pipeline.tokenizer(words, add_special_tokens=False)["input_ids"]
    return pipeline, pipeline.text_encoder.get_input_embeddings().weight[ids].detach().clone()


def test_embeddings_and_external_vaes_by_name(served, api, http, tiny_models, tmp_path):
    """An A1111 user's negative embedding and VAE: uploaded into models/, listed, used by name, recorded."""
    import torch
    from safetensors.torch import save_file

    from atelier.engine.convert import convert_vae

    server = served[0]
    pipeline, vectors = _word_vectors(tiny_models("sd15"), "blurry ugly")
    save_file({"emb_params": vectors.contiguous()}, str(tmp_path / "badpic.safetensors"))
    generator = torch.Generator().manual_seed(5)
    vae_state = {
        key: value + 0.05 * torch.randn(value.shape, generator=generator)
        for key, value in pipeline.vae.state_dict().items()
    }
    save_file(
        {k: v.contiguous() for k, v in convert_vae(vae_state).items()}, str(tmp_path / "sharp.safetensors")
    )
    server.studio.storage.put_file("models/embeddings/badpic.safetensors", tmp_path / "badpic.safetensors")
    server.studio.storage.put_file("models/vae/sharp.safetensors", tmp_path / "sharp.safetensors")
    assert http.post("/sdapi/v1/refresh-embeddings").status_code == 200
    assert http.post("/sdapi/v1/refresh-vae").status_code == 200

    assert api.get_embeddings() == {
        "loaded": {
            "badpic": {
                "step": None,
                "sd_checkpoint": None,
                "sd_checkpoint_name": None,
                "shape": 32,
                "vectors": 2,
            }
        },
        "skipped": {},
    }
    assert [item["model_name"] for item in api.get_sd_vae()] == ["sharp.safetensors"]

    named = api.txt2img(prompt="a jacket", negative_prompt="badpic", seed=3, **SMALL)
    spelled = api.txt2img(prompt="a jacket", negative_prompt="blurry ugly", seed=3, **SMALL)
    assert named.image.tobytes() == spelled.image.tobytes()
    assert 'TI hashes: "badpic: ' in named.info["infotexts"][0]

    plain = api.txt2img(prompt="a jacket", seed=3, **SMALL)
    with_vae = api.txt2img(
        prompt="a jacket", seed=3, override_settings={"sd_vae": "sharp.safetensors"}, **SMALL
    )
    assert with_vae.image.tobytes() != plain.image.tobytes()
    assert "VAE: sharp.safetensors" in with_vae.info["infotexts"][0]
    # A studio default through /options, as A1111's settings page sets it; "Automatic" puts the model's own back.
    assert http.post("/sdapi/v1/options", json={"sd_vae": "sharp"}).status_code == 200
    assert api.get_options()["sd_vae"] == "sharp.safetensors"
    assert api.txt2img(prompt="a jacket", seed=3, **SMALL).image.tobytes() == with_vae.image.tobytes()
    assert http.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200
    assert api.txt2img(prompt="a jacket", seed=3, **SMALL).image.tobytes() == plain.image.tobytes()

    unknown = http.post(
        "/sdapi/v1/txt2img",
        json={"prompt": "x", **SMALL, "override_settings": {"sd_vae": "nope.safetensors"}},
    )
    assert unknown.status_code == 404 and "sd_vae" in unknown.text and "sharp" in unknown.text


def test_unload_and_reload_checkpoint_reach_the_workers(served, api, http):
    studio = served[0].studio

    def board():
        return [worker for worker in studio.workers.live("generate")]

    assert http.post("/sdapi/v1/unload-checkpoint").status_code == 200
    wait_for(lambda: all(worker.state == "unloaded" and not worker.loaded_models for worker in board()))
    # Unloaded on request is still ready: the next request loads what it needs, and reload must get through.
    assert http.get("/api/health/ready").status_code == 200
    assert api.txt2img(prompt="after unload", seed=1, **SMALL).image.size == (64, 64)
    assert http.post("/sdapi/v1/unload-checkpoint").status_code == 200
    wait_for(lambda: all(worker.state == "unloaded" for worker in board()))
    assert http.post("/sdapi/v1/reload-checkpoint").status_code == 200
    wait_for(lambda: all(worker.state == "ready" and worker.loaded_models for worker in board()))
