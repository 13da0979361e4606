"""A1111's "SD upscale" script over ``/sdapi/v1/img2img``: upscale, then re-draw the picture tile by tile.

``script_name: "sd upscale"`` with A1111's ``script_args``: ``[info, overlap, upscaler_index, scale_factor]``
(the first is the script's description text, ignored). The init image is enlarged by ``scale_factor`` with the
upscaler at ``upscaler_index`` of ``/sdapi/v1/upscalers``, cut into tiles of the request's width x height that
overlap by ``overlap`` pixels, each tile is denoised again as an img2img job of its own (so a size no GPU holds
at once is made from pieces it does, and the pieces spread over every worker), and the tiles are joined with
linear fades across the overlaps. Every tile uses the request's seed, as A1111 does within one batch.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from atelier.errors import AtelierError
from atelier.service.api.a1111_requests import Img2ImgRequest, ProcessingRequest
from atelier.service.api.a1111_xyz import png_base64, run_cells
from atelier.service.security import decode_image
from atelier.service.studio import Studio

SCRIPT_NAME = "sd upscale"
MAX_TILES = 64


def _settings(body: ProcessingRequest) -> tuple[int, str, float]:
    from atelier.engine import BUILTIN_UPSCALERS

    args = list(body.script_args) + [None] * 4
    overlap, index, scale = args[1], args[2], args[3]
    overlap = 64 if overlap is None else overlap
    index = 0 if index is None else index
    scale = 2.0 if scale is None else scale
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= 256:
        raise AtelierError("script_args[1] (tile overlap) must be 0 to 256 pixels", field="script_args")
    names = list(BUILTIN_UPSCALERS)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(names):
        raise AtelierError(
            f"script_args[2] (upscaler) must be an index of /sdapi/v1/upscalers: 0 to {len(names) - 1}",
            field="script_args",
        )
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1.0 <= scale <= 4.0:
        raise AtelierError("script_args[3] (scale factor) must be 1 to 4", field="script_args")
    return overlap, names[index], float(scale)


async def run_sd_upscale(
    request: Any,
    body: ProcessingRequest,
    prepare: Any,
    submit: Callable[[Any], Any],
    info: Callable[..., str],
) -> dict[str, Any]:
    from atelier.engine import merge_tiles, tile_boxes, upscale

    if not isinstance(body, Img2ImgRequest) or not body.init_images:
        raise AtelierError("SD upscale works on img2img's init_images", field="init_images")
    studio: Studio = request.app.state.studio
    overlap, upscaler, scale = _settings(body)
    limit = studio.config.max_image_pixels
    source = decode_image(body.init_images[0], field="init_images", max_pixels=limit)
    target = (int(source.width * scale), int(source.height * scale))
    if target[0] * target[1] > limit:
        raise AtelierError(
            f"the upscaled image would be {target[0]}x{target[1]}, over this studio's limit of {limit} pixels",
            field="script_args",
        )
    tile = (body.width // 8 * 8, body.height // 8 * 8)
    if overlap >= min(tile):
        raise AtelierError(
            "script_args[1] (tile overlap) must be smaller than the tile (width, height)", field="script_args"
        )
    enlarged = await run_in_threadpool(upscale, source, upscaler, scale=scale)
    boxes = tile_boxes(enlarged.size, tile, overlap)
    if len(boxes) > MAX_TILES:
        raise AtelierError(
            f"{len(boxes)} tiles of {tile[0]}x{tile[1]}; at most {MAX_TILES}: raise width and height",
            field="width",
        )
    seed = body.seed if body.seed != -1 else random.randrange(4294967294)
    requests = []
    for box in boxes:
        piece = enlarged.crop(box)
        buffer = io.BytesIO()
        piece.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        values = body.model_dump()
        values.update(
            script_name=None,
            script_args=[],
            init_images=[encoded],
            mask=None,
            width=box[2] - box[0],
            height=box[3] - box[1],
            resize_mode=0,
            batch_size=1,
            n_iter=1,
            seed=seed,
        )
        requests.append(Img2ImgRequest.model_validate(values))
    prepared, finished, results, pictures = await run_cells(
        request, requests, prepare, submit, what="upscale"
    )
    merged = await run_in_threadpool(
        merge_tiles, enlarged.size, list(zip(boxes, pictures, strict=True)), overlap
    )
    infotext = (
        results[0].infotexts[0]
        + f", Script: SD upscale, SD upscale overlap: {overlap}, SD upscale upscaler: {upscaler}"
    )
    encoded_result = await run_in_threadpool(png_base64, merged, infotext, studio.signer)
    return {
        "images": [encoded_result] if body.send_images else [],
        "parameters": body.model_dump(exclude={"init_images", "mask"}),
        "info": info(finished[0], prepared[0], body, infotexts=[infotext], seeds=[seed]),
    }
