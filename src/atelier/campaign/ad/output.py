"""Writing an ad: PNGs with their metadata, the animated GIF, and the MP4 through ffmpeg when it is installed.

Every file carries the ad's AI disclosure (:func:`ad_provenance`), and Content Credentials when a signer is
given, through the engine's one encoder (PNG) or its finisher for files other writers make (GIF, MP4).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from atelier import __version__
from atelier.campaign.ad.render import AdRenderer, PlacedText
from atelier.campaign.ad.spec import (
    CROSSFADE_FRAMES,
    METADATA_KEY,
    VIDEO_FPS,
    AdSpec,
    AnimationSettings,
    Channel,
)
from atelier.campaign.templates import (
    Template,
)
from atelier.engine import Ingredient, Provenance, combined_source_type, finish_file, source_type_of
from atelier.files import write_atomic
from atelier.images import open_image


def ad_provenance(files: Sequence[tuple[str, Path]], *, with_ingredients: bool) -> Provenance:
    """An ad is a composition: AI-made (``compositeWithTrainedAlgorithmicMedia``) when any of its ``(name,
    file)`` materials says so (its XMP, or A1111 infotext), else a plain ``composite``. The files become the
    ingredients of its Content Credentials when ``with_ingredients`` (only read then)."""
    types, ingredients = [], []
    for name, path in files:
        with open_image(path, field="materials", label=name, load=False) as opened:
            types.append(source_type_of(opened))
        if with_ingredients:
            ingredients.append(Ingredient(name, path.read_bytes()))
    return Provenance(combined_source_type(types), ingredients=tuple(ingredients))


def png_text(
    spec: AdSpec, template: Template, channel: Channel, renderer: AdRenderer, placed: list[PlacedText]
) -> dict[str, str]:
    """The PNG text chunks of a channel's image: what it is made of, and the software."""
    record = {
        "channel": channel.name,
        "size": [channel.width, channel.height],
        "template": template.name,
        "layout": renderer.orientation,
        "materials": list(spec.materials),
        "texts": {"headline": spec.headline, "body": spec.body, "cta": spec.cta},
        "truncated": [text.role for text in placed if text.truncated],
        "logo": spec.logo,
    }
    return {METADATA_KEY: json.dumps(record, ensure_ascii=True), "Software": f"Atelier {__version__}"}


@dataclass(frozen=True)
class _Animation:
    """Key images plus a schedule of (from key, to key, blend amount, milliseconds) steps.

    Frames are blended on demand, so the GIF can blend small copies of the keys and the video can
    stream full-size frames without holding them all in memory.
    """

    keys: list[Image.Image]
    steps: list[tuple[int, int, float, int]]

    def frames(self, size: tuple[int, int] | None = None) -> Iterator[tuple[Image.Image, int]]:
        keys = self.keys
        if size is not None and size != keys[0].size:
            keys = [key.resize(size, Image.Resampling.LANCZOS) for key in keys]
        for first, second, amount, duration in self.steps:
            frame = keys[first] if amount == 0 else Image.blend(keys[first], keys[second], amount)
            yield frame, duration


def build_animation(
    renderer: AdRenderer, materials: list[Image.Image], animation: AnimationSettings
) -> _Animation:
    """Each material held with the text, cross-fading into the next and back to the first (a seamless loop).

    A single material has nothing to cycle, so the text fades in over the bare image instead.
    """
    hold = round(animation.seconds_per_material * 1000)
    fade_steps = CROSSFADE_FRAMES if animation.crossfade_seconds > 0 else 0
    fade = round(animation.crossfade_seconds * 1000 / max(fade_steps, 1))

    def crossfade(first: int, second: int) -> list[tuple[int, int, float, int]]:
        return [(first, second, step / (fade_steps + 1), fade) for step in range(1, fade_steps + 1)]

    if len(materials) == 1:
        keys = [renderer.render(materials, 0, with_text=False)[0], renderer.render(materials, 0)[0]]
        steps = [(0, 0, 0.0, max(hold // 3, 100)), *crossfade(0, 1), (1, 1, 0.0, hold * 2), *crossfade(1, 0)]
        return _Animation(keys, steps)
    keys = [renderer.render(materials, index)[0] for index in range(len(materials))]
    steps = []
    for index in range(len(keys)):
        steps.append((index, index, 0.0, hold))
        steps.extend(crossfade(index, (index + 1) % len(keys)))
    return _Animation(keys, steps)


def save_gif(
    animation: _Animation, path: Path, max_side: int, comment: str, provenance: Provenance, signer: Any = None
) -> None:
    width, height = animation.keys[0].size
    scale = min(1.0, max_side / max(width, height))
    size = (max(round(width * scale), 1), max(round(height * scale), 1))
    paletted, durations = [], []
    for frame, duration in animation.frames(size):
        # Dithering against the frame's own palette avoids visible bands in gradients and skies.
        palette = frame.quantize(256, method=Image.Quantize.FASTOCTREE)
        paletted.append(frame.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG))
        durations.append(duration)

    def write(temp: Path) -> None:
        paletted[0].save(
            temp,
            format="GIF",
            save_all=True,
            append_images=paletted[1:],
            duration=durations,
            loop=0,
            comment=comment,
        )
        finish_file(temp, "image/gif", provenance, title=path.name, signer=signer)

    write_atomic(path, write)


def save_video(animation: _Animation, path: Path, provenance: Provenance, signer: Any = None) -> str | None:
    """Encode the animation to MP4 with ffmpeg; returns why not when it could not."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        return "ffmpeg not found on PATH, so no ad.mp4 was made"
    width, height = animation.keys[0].size
    failure = "ffmpeg failed"
    # libx264 is the codec every player handles; some ffmpeg builds lack it, mpeg4 is always built in.
    for codec in ("libx264", "mpeg4"):

        def encode(temp: Path, codec: str = codec) -> None:
            command = [
                ffmpeg, "-hide_banner", "-loglevel", "error", "-y",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(VIDEO_FPS), "-i", "-",
                # yuv420p, which players expect, needs even dimensions.
                "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", codec, "-pix_fmt", "yuv420p",
                "-movflags", "+faststart", "-f", "mp4", str(temp),
            ]  # fmt: skip
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert process.stdin is not None
                for frame, duration in animation.frames():
                    data = frame.tobytes()
                    for _ in range(max(round(duration * VIDEO_FPS / 1000), 1)):
                        process.stdin.write(data)
                process.stdin.close()
            except BrokenPipeError:
                pass
            stderr = process.stderr.read().decode("utf-8", "replace") if process.stderr else ""
            if process.wait() != 0:
                last_line = (
                    stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"
                )
                raise _VideoError(f"ffmpeg ({codec}) failed: {last_line}")
            finish_file(temp, "video/mp4", provenance, title=path.name, signer=signer)

        try:
            write_atomic(path, encode)
            return None
        except _VideoError as exc:
            failure = str(exc)
    return failure


class _VideoError(Exception):
    pass
