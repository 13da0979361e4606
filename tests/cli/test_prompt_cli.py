"""`atelier prompt`: JSON and readable output, stdin input, one-line errors, and no torch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest

import atelier
import atelier.cli

SRC_DIR = Path(atelier.__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def only_the_prompt_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The other sub-commands are not this test's subject; wiring through main() keeps the real error handling.
    monkeypatch.setattr(atelier.cli, "COMMAND_MODULES", ["atelier.cli.prompt"])
    empty_cache = tmp_path / "empty-hf-cache"
    empty_cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(empty_cache))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = atelier.cli.main(["prompt", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    prompt = "a [cat:dog:0.5] BREAK x AND (sky:1.2):0.5 <lora:foo:0.7:0.2> # note"
    code, out, _err = run_cli(capsys, "--json", "--steps", "4", prompt)
    assert code == 0
    assert out.count("\n") == 1
    assert json.loads(out) == {
        "prompt": prompt,
        "text": "a [cat:dog:0.5] BREAK x AND (sky:1.2):0.5  \n",
        "attention": [
            ["a ", 1.0],
            ["cat:dog:0.5", 0.9090909090909091],
            ["", 1.0],
            ["BREAK", -1],
            ["x AND ", 1.0],
            ["sky", 1.2],
            [":0.5  \n", 1.0],
        ],
        "schedules": [[2, "a cat BREAK x AND (sky:1.2):0.5  \n"], [4, "a dog BREAK x AND (sky:1.2):0.5  \n"]],
        "and_parts": [
            {
                "text": "a [cat:dog:0.5] BREAK x",
                "weight": 1.0,
                "schedules": [[2, "a cat BREAK x"], [4, "a dog BREAK x"]],
                "attention": [
                    ["a ", 1.0],
                    ["cat:dog:0.5", 0.9090909090909091],
                    ["", 1.0],
                    ["BREAK", -1],
                    ["x", 1.0],
                ],
            },
            {
                "text": " (sky:1.2)",
                "weight": 0.5,
                "schedules": [[4, " (sky:1.2)"]],
                "attention": [[" ", 1.0], ["sky", 1.2]],
            },
        ],
        "loras": [{"name": "foo", "te": 0.7, "unet": 0.2}],
        "ignored_tags": [],
    }


def test_text_words_are_joined_and_default_steps_is_20(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(capsys, "--json", "a", "[b:0.5]")
    assert code == 0
    assert json.loads(out)["schedules"] == [[10, "a "], [20, "a b"]]


def test_stdin_reads_one_json_string_per_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO('"a (b)"\n\n"🐱 [x|y]"\n'))
    code, out, _err = run_cli(capsys, "--stdin", "--json", "--steps", "2")
    assert code == 0
    first, second = (json.loads(line) for line in out.splitlines())
    assert first["attention"] == [["a ", 1.0], ["b", 1.1]]
    assert second["prompt"] == "🐱 [x|y]"
    assert second["schedules"] == [[1, "🐱 x"], [2, "🐱 y"]]


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ('"fine"\n{"prompt": "x"}\n', "error: stdin line 2 is a JSON dict, expected a JSON string\n"),
        ("a cat\n", "error: stdin line 1 is not JSON (Expecting value); expected a JSON string\n"),
    ],
)
def test_bad_stdin_line_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str, message: str
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = run_cli(capsys, "--stdin", "--json")
    assert code == 2
    assert out == ""
    assert err == message


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ((), "no prompt"),
        (("--stdin", "a cat"), "not both"),
        (("--steps", "0", "a"), "--steps must be between 1 and 1000"),
        (("--json", "<lora:x:strong>"), "weight 'strong' is not a number"),
        (("--tokenizer", "/nonexistent/tokenizer", "a"), "does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, _out, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err


def test_readable_view_with_the_bundled_tokenizer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _err = run_cli(
        capsys, "--steps", "4", "a (red:1.3) [fe|]male BREAK car AND sky:0.5 <lora:foo:0.8>"
    )
    assert code == 0
    assert "lora:   foo  text encoder 0.8, unet 0.8" in out
    assert 'AND part 2 of 2, weight 0.5: " sky"' in out
    assert 'steps 1, 3 of 4: "a (red:1.3) female BREAK car"' in out
    assert 'steps 2, 4 of 4: "a (red:1.3) male BREAK car"' in out
    assert '1.3  "red"' in out
    assert "BREAK (starts a new chunk)" in out
    # CLIP's real vocabulary, no tokenizer folder, no hub: "a red female" is 3 tokens, BREAK pads it to 75.
    assert "tokens: 76/150 in 2 chunk(s) of 75" in out
    assert 'chunk 1:  3 tokens  "a red female"' in out


def write_tiny_clip_vocabulary(folder: Path) -> None:
    """A CLIP-style BPE vocabulary in which "cat" and "dog" are one token each."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = list("abcdefghijklmnopqrstuvwxyz,.")
    vocab = {letter: index for index, letter in enumerate(letters)}
    vocab.update({f"{letter}</w>": len(letters) + index for index, letter in enumerate(letters)})
    for token in ["ca", "cat</w>", "do", "dog</w>", "<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")


def write_tokenizer_json(folder: Path) -> None:
    from transformers import CLIPTokenizer

    slow_files = folder.parent / f"{folder.name}-source"
    write_tiny_clip_vocabulary(slow_files)
    folder.mkdir(parents=True, exist_ok=True)
    CLIPTokenizer.from_pretrained(str(slow_files)).backend_tokenizer.save(str(folder / "tokenizer.json"))


@pytest.fixture(params=["tokenizer.json", "vocab.json+merges.txt", "pipeline folder"])
def tokenizer_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    folder = tmp_path / "clip"
    if request.param == "tokenizer.json":
        write_tokenizer_json(folder)
    elif request.param == "vocab.json+merges.txt":
        write_tiny_clip_vocabulary(folder)
    else:
        write_tiny_clip_vocabulary(folder / "tokenizer")
    return folder


def test_readable_view_counts_tokens_per_chunk(
    capsys: pytest.CaptureFixture[str], tokenizer_dir: Path
) -> None:
    # 70 cats, a comma and 10 dogs: the chunk fills at the 5th dog and the 4 dogs after the comma move on.
    prompt = "cat " * 70 + ", " + "dog " * 10
    code, out, _err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), prompt)
    assert code == 0
    assert "tokens: 85/150 in 2 chunk(s) of 75" in out
    assert "chunk 1: 71 tokens" in out
    assert 'chunk 2: 10 tokens  "dog dog dog dog dog dog dog dog dog dog"' in out


def test_break_chunks_in_readable_view(capsys: pytest.CaptureFixture[str], tokenizer_dir: Path) -> None:
    code, out, _err = run_cli(capsys, "--tokenizer", str(tokenizer_dir), "cat, cat BREAK dog")
    assert code == 0
    assert "tokens: 76/150 in 2 chunk(s) of 75" in out
    assert "chunk 1:  3 tokens" in out
    assert 'chunk 2:  1 tokens  "dog"' in out


def test_tokenizer_is_found_in_the_hugging_face_cache(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = tmp_path / "hf-cache"
    repo = cache / "models--openai--clip-vit-large-patch14"
    write_tokenizer_json(repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    code, out, _err = run_cli(capsys, "cat dog")
    assert code == 0
    assert "tokens: 2/75 in 1 chunk(s) of 75" in out


def test_folder_without_a_tokenizer_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _out, err = run_cli(capsys, "--tokenizer", str(tmp_path), "a")
    assert code == 2
    assert "no CLIP tokenizer in" in err


def test_prompt_command_imports_no_torch(tmp_path: Path) -> None:
    script = """
import json, sys
import atelier.cli as cli
cli.COMMAND_MODULES = ["atelier.cli.prompt"]
codes = [cli.main(["prompt", "--json", "a (b:1.2) [c|d]"]), cli.main(["prompt", "a [b:c:3] AND d"])]
heavy = sorted(name for name in sys.modules if name.split(".")[0] in {"torch", "diffusers", "transformers"})
print(json.dumps({"codes": codes, "heavy": heavy}))
"""
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC_DIR), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_CACHE": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"codes": [0, 0], "heavy": []}
