"""Every command, fed the mistakes users make: one line on stderr, exit code 2, never a traceback."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import atelier.engine.versions as versions
from atelier.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """The things users bring: a good tiny model, and files that are broken in the usual ways."""
    root = tmp_path_factory.mktemp("user-files")
    (root / "not-an-image.png").write_text("hello")
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (root / "model.ckpt").write_bytes(b"\x80\x04pickle")
    (root / "not-a-zip.zip").write_text("x")
    with zipfile.ZipFile(root / "no-images.zip", "w") as archive:
        archive.writestr("notes.txt", "captions without images")
    (root / "broken.toml").write_text("a = [")
    (root / "a-file").write_text("a file where a folder goes")
    (root / "empty").mkdir()
    (root / "catalog.csv").write_text("sku,prompt\n")
    Image.new("RGB", (64, 64)).save(root / "photo.png")
    return {"root": root, "model": tiny_models("sd15")}


# (arguments, what the one line must say). {root} and {model} are filled in from the fixture.
USER_ERRORS = [
    (
        ["generate", "x", "--model", "no-such-model", "--models-dir", "{root}"],
        "unknown model 'no-such-model'",
    ),
    (["generate", "x", "--model", "{root}/garbage.safetensors"], "not a valid .safetensors file"),
    (["generate", "x", "--model", "{root}/model.ckpt"], "pickle"),
    (["generate", "x", "--model", "{model}", "--init", "{root}/not-an-image.png"], "is not a readable image"),
    (["generate", "x", "--model", "{model}", "--width", "65"], "width must be a multiple of 8"),
    (["generate", "x", "--model", "{model}", "--sampler", "Euler b"], "unknown sampler 'Euler b'"),
    (["generate", "x", "--model", "{model}", "--out", "{root}/a-file"], "is a file; give a folder"),
    (
        ["generate", "x <lora:nope:1>", "--model", "{model}", "--lora-dir", "{root}/empty"],
        "unknown LoRA 'nope'",
    ),
    (
        ["generate", "x", "--model", "runwayml/stable-diffusion-v1-5", "--models-dir", "{root}"],
        "Atelier never downloads models",
    ),
    (["info", "{root}/not-an-image.png"], "not an image file"),
    (["info", "{root}/missing.png"], "image not found"),
    (["models", "inspect", "{root}/garbage.safetensors"], "not a valid .safetensors file"),
    (["models", "export", "{root}/empty", "{root}/out.safetensors"], "not a diffusers model folder"),
    (["models", "export", "{model}", "{root}/a-file/out.safetensors"], "is a file; give a folder"),
    (["train", "{root}/not-a-zip.zip", "--base", "{model}"], "not a valid zip archive"),
    (["train", "{root}/no-images.zip", "--base", "{model}", "--out", "{root}/run1"], "no training images"),
    (["train", "{root}/missing-folder", "--base", "{model}"], "training data not found"),
    (["train", "{root}/empty", "--base", "{root}/missing-model"], "base model not found"),
    (["train", "{root}/empty", "--base", "{root}/model.ckpt"], "pickle"),
    (
        ["train", "{root}/empty", "--base", "{model}", "--config", "{root}/broken.toml"],
        "broken.toml is not valid",
    ),
    (
        ["train", "{root}/empty", "--base", "{model}", "--config", "{root}/none.toml"],
        "training config not found",
    ),
    (["train", "{root}/empty"], "no base model"),
    (["ad", "{root}/broken.toml", "--out", "{root}/ad"], "broken.toml is not valid TOML"),
    (["ad", "{root}/none.toml", "--out", "{root}/ad"], "ad spec not found"),
    (
        [
            "batch",
            "{root}/catalog.csv",
            "--scenes",
            "{root}/broken.toml",
            "--model",
            "{model}",
            "--out",
            "{root}/b",
        ],
        "has no rows",
    ),
    (
        ["batch", "{root}/none.csv", "--scenes", "x.toml", "--model", "{model}", "--out", "{root}/b"],
        "not found",
    ),
    (["sheet", "{root}/missing-folder"], "folder not found"),
    (["sheet", "{root}/empty"], "no images found"),
    (["serve", "--port", "99999", "--data", "{root}/studio"], "port must be"),
    (["worker", "--db", "nope://x", "--data", "{root}/studio"], "database type 'nope' is not supported"),
    (["worker", "--storage", "nope://x", "--data", "{root}/studio"], "storage URL scheme 'nope'"),
    (["keys", "revoke", "nobody", "--data", "{root}/studio"], "no API key named 'nobody'"),
    (["prompt", "--tokenizer", "{root}/missing-folder", "x"], "does not exist"),
]


def _run(capsys, argv: list[str], files: dict[str, Path]) -> tuple[int, str]:
    filled = [
        part.replace("{root}", str(files["root"])).replace("{model}", str(files["model"])) for part in argv
    ]
    code = main(filled)  # a traceback would surface here as an exception and fail the test
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS, ids=[" ".join(a[:2]) for a, _ in USER_ERRORS])
def test_a_user_error_is_one_line_and_exit_code_2(capsys, files, argv, message):
    code, err = _run(capsys, argv, files)
    assert code == 2
    lines = [
        line for line in err.splitlines() if line.strip() and "it/s]" not in line and "step/s]" not in line
    ]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert message in lines[0]


def test_the_commands_users_run_are_all_fed_errors():
    tried = {argv[0] for argv, _ in USER_ERRORS}
    assert tried == {
        "generate",
        "info",
        "models",
        "train",
        "ad",
        "batch",
        "sheet",
        "serve",
        "worker",
        "keys",
        "prompt",
    }


def test_a_taken_port_is_one_line(capsys, files):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(capsys, ["serve", "--port", str(port), "--data", "{root}/studio-port"], files)
    assert code == 2
    assert (
        err.strip()
        == f"error: cannot listen on 127.0.0.1:{port}: Address already in use; stop what uses it or choose --port"
    )


def test_an_unreachable_database_is_one_line(capsys, files):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        code, err = _run(
            capsys, ["serve", "--db", f"postgresql://alice:secret@127.0.0.1:{port}/studio"], files
        )
    assert code == 2
    assert err.startswith(f"error: cannot open the database postgresql://alice:***@127.0.0.1:{port}/studio: ")
    assert "secret" not in err and err.count("\n") == 1


def test_incompatible_libraries_are_named_in_one_line_before_any_work(capsys, files, monkeypatch):
    """transformers 5.25 refuses peft 0.21 (it wants 0.22, never released): found at start-up, not mid-training."""
    monkeypatch.setattr(
        versions,
        "installed_versions",
        lambda: {**versions.TESTED, "transformers": "5.25.0", "peft": "0.21.2"},
    )
    monkeypatch.setattr(versions, "runtime_minimums", lambda: [("transformers", "peft", "0.22.0")])
    versions._checked_problems.cache_clear()
    try:
        code, err = _run(capsys, ["train", "{root}/empty", "--base", "{model}"], files)
    finally:
        versions._checked_problems.cache_clear()
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(
        "error: incompatible libraries: transformers 5.25.0 needs peft >= 0.22.0 but peft 0.21.2 is installed."
    )
    assert "Atelier is tested with torch 2.13.0, diffusers 0.42.1, transformers 5.23.0, peft 0.21.2" in err


def test_the_installed_libraries_pass_the_check():
    versions._checked_problems.cache_clear()
    versions.check_libraries()


def test_an_internal_error_is_one_line_too(capsys, files, monkeypatch):
    import atelier.cli.info as info

    def bug(args):
        raise KeyError("a bug")

    monkeypatch.setattr(info, "run", bug)
    code = main(["info", str(files["root"] / "photo.png")])
    err = capsys.readouterr().err
    assert code == 1
    assert (
        err
        == "error: KeyError: 'a bug' (an internal error; run with ATELIER_DEBUG=1 for the traceback, and please report it)\n"
    )
