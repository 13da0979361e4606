"""The `atelier` command line: generation, info, models, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from atelier.cli import main


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_writes_pngs_with_infotext_then_info_reads_them(tmp_path, tiny_models, capsys):
    model = tiny_models("sd15")
    code, out, err = _run(
        capsys,
        "generate",
        "a (yellow windbreaker:1.3)",
        "--model",
        str(model),
        "--steps",
        "3",
        "--width",
        "64",
        "--height",
        "64",
        "--seed",
        "42",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    files = sorted((tmp_path / "out").glob("*.png"))
    assert [f.name.split("_")[0] for f in files] == ["42", "43"]
    code, out, _ = _run(capsys, "info", str(files[0]), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["Seed"] in (42, "42")
    assert info["Prompt"] == "a (yellow windbreaker:1.3)"
    code, out, _ = _run(capsys, "info", str(files[1]))
    assert out.splitlines()[0] == "a (yellow windbreaker:1.3)"
    assert "Seed: 43" in out


def test_generate_inpaint_from_files(tmp_path, tiny_models, capsys):
    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "photo.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 40, 40))
    mask.save(tmp_path / "mask.png")
    code, _, err = _run(
        capsys,
        "generate",
        "living room, wabi style",
        "--model",
        str(tiny_models("sd15")),
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
        "--init",
        str(tmp_path / "photo.png"),
        "--mask",
        str(tmp_path / "mask.png"),
        "--mask-blur",
        "2",
        "--only-masked",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    (result,) = (tmp_path / "out").glob("*.png")
    assert Image.open(result).getpixel((2, 2)) == (200, 30, 30)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--init", "missing.png"], "init image not found"),
        (["--width", "100"], "width must be a multiple of 8"),
        (["--steps", "0"], "steps must be between 1"),
        (["--strength", "1.5", "--init", "{photo}"], "denoising_strength must be between 0.0 and 1.0"),
        (["--sampler", "Euler z"], "Euler a"),
        (["--init", "{photo}", "--mask", "{small_mask}"], "mask size 32x32 differs from image size 64x64"),
        (["--model", "{pickle}"], "arbitrary code"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, tiny_models, capsys, extra, message):
    Image.new("RGB", (64, 64)).save(tmp_path / "photo.png")
    Image.new("L", (32, 32)).save(tmp_path / "small_mask.png")
    (tmp_path / "model.ckpt").write_bytes(b"not really a pickle")
    values = {
        "photo": tmp_path / "photo.png",
        "small_mask": tmp_path / "small_mask.png",
        "pickle": tmp_path / "model.ckpt",
    }
    extra = [item.format(**values) for item in extra]
    argv = ["generate", "x", "--steps", "2", "--width", "64", "--height", "64", "--out", str(tmp_path / "o")]
    if "--model" not in extra:
        argv += ["--model", str(tiny_models("sd15"))]
    code, _, err = _run(capsys, *argv, *extra, "--models-dir", str(tmp_path / "models"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message in err


def test_errors_never_print_a_traceback_in_a_real_process(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04")
    proc = subprocess.run(
        [sys.executable, "-m", "atelier", "generate", "x", "--model", str(tmp_path / "weights.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "refusing to load weights.pt" in proc.stderr


def test_create_tiny_and_list_models(tmp_path, capsys):
    code, out, _ = _run(
        capsys, "models", "create-tiny", "--arch", "sdxl-refiner", str(tmp_path / "models" / "ref")
    )
    assert code == 0 and "demo: random weights" in out
    code, out, _ = _run(capsys, "models", "list", "--models-dir", str(tmp_path / "models"), "--json")
    (row,) = json.loads(out)
    assert row["architecture"] == "sdxl-refiner"
    assert row["label"] == "ref (demo: random weights)"


def test_generate_with_an_embedding_and_a_vae_file(tmp_path, tiny_models, capsys):
    """Embeddings from <models-dir>/embeddings by name, a VAE file from anywhere, both in the infotext."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from atelier.engine.convert import convert_vae
    from atelier.engine.infotext import parse_infotext, read_infotext

    model = tiny_models("sd15")
    pipeline = StableDiffusionPipeline.from_pretrained(str(model))
    ids = pipeline.tokenizer("blurry", add_special_tokens=False)["input_ids"]
    (tmp_path / "models" / "embeddings").mkdir(parents=True)
    vectors = pipeline.text_encoder.get_input_embeddings().weight[ids].detach().clone()
    save_file({"emb_params": vectors}, str(tmp_path / "models" / "embeddings" / "soft.safetensors"))
    vae_file = tmp_path / "elsewhere" / "my-vae.safetensors"
    vae_file.parent.mkdir()
    save_file({k: v.contiguous() for k, v in convert_vae(pipeline.vae.state_dict()).items()}, str(vae_file))
    common = ["--model", str(model), "--models-dir", str(tmp_path / "models"), "--steps", "2"]
    common += ["--width", "64", "--height", "64", "--seed", "3", "--out", str(tmp_path / "out")]
    code, out, err = _run(capsys, "generate", "a coat", "--negative", "soft", "--vae", str(vae_file), *common)
    assert code == 0, err
    params = parse_infotext(read_infotext(out.split()[0]))
    assert params["Negative prompt"] == "soft"
    assert params["TI hashes"].startswith("soft: ") and params["VAE"] == "my-vae.safetensors"

    code, _out, err = _run(capsys, "generate", "a coat", "--vae", "missing", *common)
    assert code != 0 and "unknown VAE 'missing'" in err and "Traceback" not in err
