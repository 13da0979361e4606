"""Live previews: the weight-free linear decode, TAESD when its folder is there, and previews during sampling."""

from __future__ import annotations

import pytest
import torch

from atelier.engine import Engine, LinearPreview, PreviewDecoders, TaesdPreview
from atelier.engine.previews import LATENT_RGB_FACTORS
from atelier.engine.request import GenerationRequest


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_linear_preview_mixes_latent_channels_into_colours(family):
    latents = torch.zeros(2, 4, 6, 10)
    latents[0, 0, :, :5] = 1.0  # left half: channel 1 only
    latents[0, 3, :, 5:] = -1.0  # right half: minus channel 4
    picture = LinearPreview(family)(latents)
    assert picture.size == (10, 6)  # one pixel per latent pixel, the first image of the batch
    factors = LATENT_RGB_FACTORS[family]
    expected_left = tuple(int((1 + f) * 127.5) for f in factors[0])
    expected_right = tuple(int((1 - f) * 127.5) for f in factors[3])
    assert all(abs(a - b) <= 1 for a, b in zip(picture.getpixel((0, 0)), expected_left, strict=True))
    assert all(abs(a - b) <= 1 for a, b in zip(picture.getpixel((9, 5)), expected_right, strict=True))


def test_taesd_is_used_when_its_folder_is_there_and_matches_diffusers(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    tiny = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    tiny.save_pretrained(tmp_path / "taesd")
    decoders = PreviewDecoders(tmp_path)
    decoder = decoders.for_architecture("sd15-inpaint", device="cpu", dtype=torch.float32)
    assert isinstance(decoder, TaesdPreview)
    # No taesdxl folder: SDXL falls back to the linear decode instead of failing.
    assert isinstance(decoders.for_architecture("sdxl", device="cpu", dtype=torch.float32), LinearPreview)
    latents = torch.randn(1, 4, 8, 8)
    picture = decoder(latents)
    with torch.no_grad():
        reference = tiny.decode(latents).sample[0].clamp(-1, 1)
    expected = ((reference + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert picture.size == (64, 64)
    assert abs(int(picture.getpixel((10, 20))[1]) - int(expected[20, 10, 1])) <= 1


def test_previews_arrive_every_n_steps_while_sampling(tiny_models):
    engine = Engine(device="cpu")
    seen: list[tuple[int, int, tuple[int, int]]] = []
    request = GenerationRequest(
        prompt="a bottle", steps=12, width=64, height=64, seed=3, model=str(tiny_models("sd15"))
    )
    plain = engine.generate(request)
    with_previews = engine.generate(
        request,
        on_preview=lambda picture, done, total: seen.append((done, total, picture.size)),
        preview_every=5,
    )
    assert seen == [(5, 12, (8, 8)), (10, 12, (8, 8))]  # none at the last step: the image follows
    # Watching does not change the picture.
    assert with_previews.images[0].image.tobytes() == plain.images[0].image.tobytes()
