"""kohya sample-prompt lines, sample file names, and the loss-curve PNG and CSV."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from atelier.errors import AtelierError
from atelier.training.report import draw_loss_curve, moving_average, write_loss_csv, write_loss_curve
from atelier.training.samples import (
    SamplePrompt,
    load_sample_prompts,
    parse_sample_prompt,
    sample_filename,
    sampler_name,
)


def test_a_full_kohya_line_is_parsed() -> None:
    line = (
        "oue, photo of oue car, daytime --n blurry, text --w 768 --h 1024 --d 42 --l 6.5 --s 28 --ss euler_a"
    )
    assert parse_sample_prompt(line) == SamplePrompt(
        prompt="oue, photo of oue car, daytime",
        negative_prompt="blurry, text",
        width=768,
        height=1024,
        seed=42,
        cfg_scale=6.5,
        steps=28,
        sampler="Euler a",
    )


def test_kohya_defaults_apply_and_sizes_round_down_to_8() -> None:
    sample = parse_sample_prompt("a red shoe --w 500")
    assert (sample.width, sample.height, sample.steps, sample.cfg_scale, sample.seed) == (
        496,
        512,
        30,
        7.5,
        None,
    )


def test_unknown_options_warn_and_bad_numbers_fail() -> None:
    warnings: list[str] = []
    assert parse_sample_prompt("shoe --g 3.5 --d 1", warn=warnings.append).seed == 1
    assert warnings and "--g" in warnings[0]
    with pytest.raises(AtelierError, match="--w needs a number, got 'wide'"):
        parse_sample_prompt("shoe --w wide")
    with pytest.raises(AtelierError, match="has no prompt"):
        parse_sample_prompt(" --w 512")
    with pytest.raises(AtelierError, match="cannot use <lora:...> tags"):
        parse_sample_prompt("oue car <lora:other:0.5> --d 1")


def test_prompt_files_skip_comments_and_blank_lines(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# samples\n\noue car --d 1\nscooter --d 2\n", encoding="utf-8")
    assert [p.prompt for p in load_sample_prompts(prompts)] == ["oue car", "scooter"]
    assert [p.seed for p in load_sample_prompts(["oue car --d 3", "#x"])] == [3]
    assert load_sample_prompts(None) == []
    with pytest.raises(AtelierError, match="sample prompt file not found"):
        load_sample_prompts(tmp_path / "missing.txt")


def test_kohya_sampler_names_become_a1111_names() -> None:
    assert sampler_name("ddim") == "DDIM"
    assert sampler_name("k_euler_a") == "k_euler_a"  # the engine resolves k-diffusion aliases itself
    assert sampler_name("DPM++ 2M") == "DPM++ 2M"


def test_sample_files_are_named_with_their_seed() -> None:
    assert sample_filename("lora_wta", "e000002", 0, 1234) == "lora_wta_e000002_00_1234.png"


def test_loss_curve_png_draws_the_curve(tmp_path: Path) -> None:
    points = [[step, 1.0 / step] for step in range(1, 101)]
    path = write_loss_curve(tmp_path / "loss.png", points)
    with Image.open(path) as image:
        assert image.size == (800, 450)
        colours = {colour for _, colour in image.getcolors(1 << 16)}
    assert (20, 70, 160) in colours  # the moving average line
    assert isinstance(draw_loss_curve([]), Image.Image)
    assert isinstance(draw_loss_curve([[1, 0.5]]), Image.Image)
    assert [p.name for p in tmp_path.iterdir()] == ["loss.png"]


def test_moving_average_and_csv(tmp_path: Path) -> None:
    assert moving_average([1, 3, 5, 7], 2) == [1, 2, 4, 6]
    write_loss_csv(tmp_path / "loss.csv", [[1, 0.25], [2, 0.125]])
    assert (tmp_path / "loss.csv").read_text() == "step,loss\n1,0.25\n2,0.125\n"
