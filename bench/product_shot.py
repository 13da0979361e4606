"""A product shot against a plain inpaint of the same size, step by step, in one run.

Per step at 1024x1024 (``--size``), interleaved with the plain path and reported as medians:

- cut-out: the product's mask from an opaque photo with SAM (a tiny SAM of the real layout by default;
  ``--sam base`` builds SAM ViT-B's full layout with random weights: speed does not depend on weight values),
  and from a PNG with transparency (its alpha);
- generation: the shot's inpaint request through the in-process backend;
- compositing: everything else the shot does (placement, the edge-light match, the shadow, the exact product);
- the plain inpaint: one ``Engine.generate`` of the same size, mask and steps, as ``atelier generate`` does it;
- the extras after a shot: expanding it to the story channel (1080x1920) and a 2x Lanczos upscale.

The ratio (product shot without cut-out / plain inpaint) is what the flow costs on top of the generation; it is
reported, not asserted. CPU: the tiny SD 1.5-shaped model. CUDA: also the full SD 1.5 layout with random weights
in fp16, for seconds per finished product shot.

    python bench/product_shot.py [--runs 3] [--size 1024] [--steps 4] [--sam tiny|base] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from atelier.campaign.batch import EngineBackend  # noqa: E402
from atelier.campaign.product import (  # noqa: E402
    InpaintSettings,
    SamSegmenter,
    ShotSettings,
    channel,
    cut_out,
    product_mask,
    read_segmentation_model,
    scene_preset,
    shoot,
    shot_to_channel,
    upscale_shot,
)
from atelier.cli.common import quiet_libraries  # noqa: E402
from atelier.engine import Engine, GeneratedImage, GenerationRequest, create_tiny_model  # noqa: E402
from product_helpers import cutout_photo, opaque_photo, write_tiny_sam  # noqa: E402


class Clock:
    """Wall and CPU seconds spent in ``with`` blocks, added up; the device is synchronised at both ends.

    CPU seconds (this process, all its threads) are the steadier number on a machine other jobs share.
    """

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Clock:
        _sync()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc_info: object) -> None:
        _sync()
        self.wall += time.perf_counter() - self._wall
        self.cpu += time.process_time() - self._cpu


class TimedBackend:
    """The in-process backend with a clock around each generation (the rest of a shot is compositing)."""

    def __init__(self, backend: EngineBackend) -> None:
        self.backend = backend
        self.model_name = backend.model_name
        self.model_hash = backend.model_hash
        self.clock = Clock()

    def generate(self, request: GenerationRequest) -> GeneratedImage:
        with self.clock:
            return self.backend.generate(request)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def write_sam_base(folder: Path) -> Path:
    """SAM ViT-B's layout (facebook/sam-vit-base) with random weights, at its real 1024-pixel input."""
    import transformers

    config = transformers.SamConfig(
        vision_config={
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "global_attn_indexes": [2, 5, 8, 11],
        }
    )
    transformers.SamModel(config).eval().save_pretrained(str(folder), safe_serialization=True)
    transformers.SamImageProcessorPil().save_pretrained(str(folder))
    return folder


def run(
    model: Path, sam_folder: Path, *, device: str, dtype: torch.dtype, size: int, steps: int, runs: int
) -> dict:
    engine = Engine(device=device, dtype=dtype)
    backend = TimedBackend(EngineBackend(engine, model))
    segmenter = SamSegmenter(read_segmentation_model(sam_folder), device=device)
    photo, _ = opaque_photo((size, size))
    cut_out_png, _ = cutout_photo((size, size))
    scene = scene_preset("studio")
    settings = ShotSettings(
        size=(size, size), inpaint=InpaintSettings(steps=steps, sampler="Euler a", schedule_type=None, seed=7)
    )
    # The plain path: the same photo, size, steps and sampler, with a hand-made mask of the same area.
    plain_mask = Image.eval(opaque_photo((size, size))[1], lambda value: 255 - value)
    story = channel("story")
    steps_timed = ("sam", "alpha", "generation", "compositing", "shot", "plain", "story", "upscale")
    times: dict[str, list[tuple[float, float]]] = {key: [] for key in steps_timed}
    for index in range(runs + 1):  # the first round warms the models up and is not counted
        clocks = {key: Clock() for key in steps_timed}
        with clocks["sam"]:
            product_mask(photo, segmenter=segmenter)
        with clocks["alpha"]:
            cutout = cut_out(cut_out_png, product_mask(cut_out_png))
        # The plain inpaint runs before the shot in one round and after it in the next, so drift evens out.
        plain_request = settings.inpaint.request(
            photo.convert("RGB"), prompt=scene.prompt, negative=scene.negative, mask=plain_mask, seed=7
        )
        if index % 2:
            with clocks["plain"]:
                backend.backend.generate(plain_request)
        backend.clock = clocks["generation"]
        with clocks["shot"]:
            shots = shoot(cutout, backend, scene, settings=settings)
        if not index % 2:
            with clocks["plain"]:
                backend.backend.generate(plain_request)
        backend.clock = Clock()
        with clocks["story"]:
            shot_to_channel(shots[0], cutout, story, backend, scene, settings=settings.inpaint)
        with clocks["upscale"]:
            upscale_shot(shots[0], cutout, 2.0)
        if index == 0:
            continue
        for key, clock in clocks.items():
            times[key].append((clock.wall, clock.cpu))
        shot, generation = clocks["shot"], clocks["generation"]
        times["compositing"][-1] = (shot.wall - generation.wall, shot.cpu - generation.cpu)
    medians = {
        key: (statistics.median(wall for wall, _ in values), statistics.median(cpu for _, cpu in values))
        for key, values in times.items()
    }
    return medians


def report(label: str, row: dict) -> None:
    print(f"\n{label}")
    print("| step | wall (median) | CPU (median) |\n| --- | ---: | ---: |")
    for key, title in (
        ("sam", "cut-out, opaque photo (SAM)"),
        ("alpha", "cut-out, PNG with transparency (alpha)"),
        ("generation", "shot: generation (inpaint through the backend)"),
        ("compositing", "shot: compositing (placement, edge light, shadow, exact product)"),
        ("shot", "shot: total without cut-out"),
        ("plain", "plain inpaint, same size, mask and steps"),
        ("story", "expand the shot to story 1080x1920"),
        ("upscale", "upscale the shot 2x (Lanczos) with the product re-laid"),
    ):
        print(f"| {title} | {row[key][0]:.3f} s | {row[key][1]:.3f} s |")
    wall_ratio = row["shot"][0] / row["plain"][0]
    cpu_ratio = row["shot"][1] / row["plain"][1]
    print(f"| ratio shot / plain inpaint | {wall_ratio:.3f} | {cpu_ratio:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sam", choices=("tiny", "base"), default="tiny")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sam = write_sam_base(root / "sam-base") if args.sam == "base" else write_tiny_sam(root / "sam-tiny")
        tiny = create_tiny_model("sd15", root / "tiny-sd15")
        row = run(
            tiny, sam, device="cpu", dtype=torch.float32, size=args.size, steps=args.steps, runs=args.runs
        )
        report(
            f"tiny sd15, cpu, {args.size}x{args.size}, {args.steps} steps, SAM {args.sam}, {args.threads} threads",
            row,
        )
        if torch.cuda.is_available():
            from engine_vs_diffusers import _full_size_model  # the same random-weight full layout

            full = _full_size_model("sd15", root)
            sam_base = write_sam_base(root / "sam-base-cuda")
            row = run(
                full, sam_base, device="cuda", dtype=torch.float16, size=args.size, steps=30, runs=args.runs
            )
            report(f"sd15 full layout, cuda fp16, {args.size}x{args.size}, 30 steps, SAM base", row)


if __name__ == "__main__":
    main()
