"""Prompt encoding with A1111 syntax against diffusers' plain ``encode_prompt``, side by side in one run.

Reports, on a tiny SD 1.5-shaped model:
- encoding time of a plain prompt (Atelier vs diffusers: the same work, ratio should be ~1);
- encoding time of a weighted, 3-chunk prompt (Atelier only; diffusers would truncate it at 77 tokens);
- per-step time of sampling with a plain prompt (no hooks attached) vs a scheduled ``[a:b:0.5]`` prompt.

    python bench/prompt_encoding.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from atelier.cli.common import quiet_libraries
from atelier.engine.conditioning import PromptEncoder, build_conditioning
from atelier.engine.generate import Engine
from atelier.engine.request import GenerationRequest
from atelier.engine.tiny import create_tiny_model

PLAIN = "a product photo of a yellow windbreaker, forest, masterpiece, high resolution"
WEIGHTED = ", ".join(f"(yellow windbreaker:{1 + i / 100:.2f}), [forest], ((sharp focus))" for i in range(20))


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = create_tiny_model("sd15", Path(tmp) / "sd15")
        engine = Engine(device="cpu")
        pipeline = engine.load(model_path).pipeline

        def ours(text: str):
            with torch.inference_mode():
                # A fresh encoder each time: no caching across calls, as in one generation.
                return build_conditioning(PromptEncoder(pipeline), text, "low quality", steps=20)

        def theirs():
            with torch.inference_mode():
                return pipeline.encode_prompt(PLAIN, "cpu", 1, True, negative_prompt="low quality")

        chunks = ours(WEIGHTED).kwargs["prompt_embeds"].shape[1] // 77
        plain_ours = _median_time(lambda: ours(PLAIN), args.repeats)
        plain_theirs = _median_time(theirs, args.repeats)
        weighted = _median_time(lambda: ours(WEIGHTED), args.repeats)
        print(
            f"encode plain prompt:    atelier {plain_ours * 1e3:.2f} ms, diffusers {plain_theirs * 1e3:.2f} ms, "
            f"ratio {plain_ours / plain_theirs:.3f}"
        )
        print(
            f"encode weighted prompt: atelier {weighted * 1e3:.2f} ms ({chunks} chunks, weights, mean restore)"
        )

        def sample(prompt: str) -> float:
            request = GenerationRequest(
                prompt=prompt, model=str(model_path), steps=20, width=64, height=64, seed=1
            )
            return _median_time(lambda: engine.generate(request), max(3, args.repeats // 10)) / 20

        plain_step = sample(PLAIN)
        scheduled_step = sample("a product photo of a [yellow:red:0.5] windbreaker, forest")
        print(
            f"per step, plain prompt: {plain_step * 1e3:.2f} ms; scheduled prompt: {scheduled_step * 1e3:.2f} ms "
            f"(ratio {scheduled_step / plain_step:.3f})"
        )


if __name__ == "__main__":
    main()
