"""A1111's "X/Y/Z plot" script over ``/sdapi/v1/txt2img`` and ``img2img``: one generation per cell, a labelled grid.

``script_name: "x/y/z plot"`` with A1111's ``script_args`` layout (1.7 and later; 1.6's 16 arguments, without
the three ``vary_seeds``, are read too)::

    [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
     z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
     vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]

An axis type is an index into A1111's axis list for that tab (the order of ``scripts/xyz_grid.py``: txt2img
and img2img lists differ) or its label. Values are comma-separated, with A1111's ranges for numbers
(``1-5``, ``1-10 (+2)``, ``1-10 [4]``). Each cell becomes a job of its own, so the cells spread over every
generation worker; the answer has the grid first (with ``Script``, ``X Type``, ``X Values``... in its infotext),
then, with ``include_lone_images``, each cell's picture.

Axes Atelier can vary: Nothing, Seed, Steps, Hires steps, CFG Scale, Prompt S/R, Sampler, Hires sampler,
Checkpoint name, Schedule type, Clip skip, Denoising, Hires upscaler, Styles, Refiner checkpoint, Refiner
switch at. The others (variation seeds, sigma settings, VAE, face restore, ...) are refused with 422 naming the
axis. Prompt S/R covers LoRA weight and epoch comparisons: ``<lora:parka-000004:0.8>`` with values
``000004, 000008``.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from atelier.errors import AtelierError, JobFailedError
from atelier.service.api.a1111_requests import Img2ImgRequest, ProcessingRequest
from atelier.service.job_types import GenerateResult
from atelier.service.studio import Studio

SCRIPT_NAME = "x/y/z plot"
MAX_CELLS = 100

# A1111's axis lists (scripts/xyz_grid.py): shared entries, then per-tab ones, in A1111's order.
_SHARED, _TXT2IMG, _IMG2IMG = "shared", "txt2img", "img2img"
_AXES = (
    ("Nothing", _SHARED),
    ("Seed", _SHARED),
    ("Var. seed", _SHARED),
    ("Var. strength", _SHARED),
    ("Steps", _SHARED),
    ("Hires steps", _TXT2IMG),
    ("CFG Scale", _SHARED),
    ("Image CFG Scale", _IMG2IMG),
    ("Prompt S/R", _SHARED),
    ("Prompt order", _SHARED),
    ("Sampler", _TXT2IMG),
    ("Hires sampler", _TXT2IMG),
    ("Sampler", _IMG2IMG),
    ("Checkpoint name", _SHARED),
    ("Negative Guidance minimum sigma", _SHARED),
    ("Sigma Churn", _SHARED),
    ("Sigma min", _SHARED),
    ("Sigma max", _SHARED),
    ("Sigma noise", _SHARED),
    ("Schedule type", _SHARED),
    ("Schedule min sigma", _SHARED),
    ("Schedule max sigma", _SHARED),
    ("Schedule rho", _SHARED),
    ("Eta", _SHARED),
    ("Clip skip", _SHARED),
    ("Denoising", _SHARED),
    ("Initial noise multiplier", _SHARED),
    ("Extra noise", _SHARED),
    ("Hires upscaler", _TXT2IMG),
    ("Cond. Image Mask Weight", _IMG2IMG),
    ("VAE", _SHARED),
    ("Styles", _SHARED),
    ("UniPC Order", _SHARED),
    ("Face restore", _SHARED),
    ("Token merging ratio", _SHARED),
    ("Token merging ratio high-res", _SHARED),
    ("Always discard next-to-last sigma", _SHARED),
    ("SGM noise multiplier", _SHARED),
    ("Refiner checkpoint", _SHARED),
    ("Refiner switch at", _SHARED),
    ("RNG source", _SHARED),
)


def axis_labels(tab: str) -> list[str]:
    """The axis types of a tab, indexed as A1111's API indexes them."""
    return [label for label, where in _AXES if where in (_SHARED, tab)]


def _override(key: str) -> Callable[[dict[str, Any], Any], None]:
    def apply(values: dict[str, Any], value: Any) -> None:
        values["override_settings"] = {**(values.get("override_settings") or {}), key: value}

    return apply


def _field(name: str) -> Callable[[dict[str, Any], Any], None]:
    def apply(values: dict[str, Any], value: Any) -> None:
        values[name] = value

    return apply


def _styles(values: dict[str, Any], value: Any) -> None:
    values["styles"] = [
        *(values.get("styles") or []),
        *[name.strip() for name in str(value).split(",") if name.strip()],
    ]


@dataclass(frozen=True)
class Axis:
    label: str
    kind: type
    apply: Callable[[dict[str, Any], Any], None]
    # A1111 writes "Label: value" under the pictures for these, the bare value for the others.
    labelled: bool = True


_SUPPORTED: dict[str, Axis] = {
    axis.label: axis
    for axis in (
        Axis("Seed", int, _field("seed")),
        Axis("Steps", int, _field("steps")),
        Axis("Hires steps", int, _field("hr_second_pass_steps")),
        Axis("CFG Scale", float, _field("cfg_scale")),
        Axis("Prompt S/R", str, lambda values, value: None, labelled=False),  # applied with the first value
        Axis("Sampler", str, _field("sampler_name"), labelled=False),
        Axis("Hires sampler", str, _field("hr_sampler_name")),
        Axis("Checkpoint name", str, _override("sd_model_checkpoint"), labelled=False),
        Axis("Schedule type", str, _field("scheduler")),
        Axis("Clip skip", int, _override("CLIP_stop_at_last_layers")),
        Axis("Denoising", float, _field("denoising_strength")),
        Axis("Hires upscaler", str, _field("hr_upscaler")),
        Axis("Styles", str, _styles),
        Axis("Refiner checkpoint", str, _field("refiner_checkpoint"), labelled=False),
        Axis("Refiner switch at", float, _field("refiner_switch_at")),
    )
}

_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
_RANGE_FLOAT = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*"
)
_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*")
_COUNT_FLOAT = re.compile(
    r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*"
)


def _split(text: str) -> list[str]:
    return [item.strip() for row in csv.reader(io.StringIO(text)) for item in row]


def _expand_numbers(items: list[str], kind: type, field: str) -> list[Any]:
    """A1111's number lists: ``1, 5``, ranges ``1-5`` and ``1-9 (+2)``, counts ``1-10 [4]``."""
    expanded: list[Any] = []
    integer = kind is int
    for item in items:
        step_match = (_RANGE if integer else _RANGE_FLOAT).fullmatch(item)
        count_match = (_COUNT if integer else _COUNT_FLOAT).fullmatch(item)
        try:
            if step_match is not None:
                start, end = (kind(group.replace(" ", "")) for group in step_match.group(1, 2))
                step = kind(step_match.group(3)) if step_match.group(3) else kind(1)
                if integer:
                    expanded += list(range(start, end + 1, step))
                else:
                    expanded += np.arange(start, end + step, step).tolist()
            elif count_match is not None:
                start, end = (kind(group.replace(" ", "")) for group in count_match.group(1, 2))
                count = int(float(count_match.group(3) or 1))
                points = np.linspace(start, end, num=count).tolist()
                expanded += [int(point) for point in points] if integer else points
            else:
                expanded.append(kind(item))
        except ValueError:
            raise AtelierError(f"{field}: {item!r} is not a number", field=field) from None
    return expanded


@dataclass
class PlotAxis:
    axis: Axis | None  # None: Nothing
    values: list[Any]
    text: str

    def label_of(self, value: Any) -> str:
        if self.axis is None:
            return ""
        return f"{self.axis.label}: {value}" if self.axis.labelled else str(value)


def _axis(tab: str, kind: Any, values: Any, dropdown: Any, name: str) -> PlotAxis:
    labels = axis_labels(tab)
    field = f"script_args.{name}_type"
    if isinstance(kind, str) and not kind.lstrip("-").isdigit():
        label = kind
        if label not in labels:
            raise AtelierError(f"{field}: {label!r} is not an axis of {tab}", field=field)
    else:
        try:
            index = int(kind)
        except (TypeError, ValueError):
            raise AtelierError(f"{field} must be an axis index or name", field=field) from None
        if not 0 <= index < len(labels):
            raise AtelierError(
                f"{field}: {index} is not an axis of {tab} (0 to {len(labels) - 1})", field=field
            )
        label = labels[index]
    if label == "Nothing":
        return PlotAxis(None, [None], "")
    axis = _SUPPORTED.get(label)
    if axis is None:
        raise AtelierError(f"{field}: the {label!r} axis is not available in Atelier", field=field)
    listed = dropdown if isinstance(dropdown, list) else []
    text = values if isinstance(values, str) and values.strip() else ", ".join(map(str, listed))
    items = _split(text)
    if not items:
        raise AtelierError(f"script_args.{name}_values: give the values of the {label} axis", field=field)
    parsed = (
        _expand_numbers(items, axis.kind, f"script_args.{name}_values") if axis.kind is not str else items
    )
    return PlotAxis(axis, parsed, text)


def _margin(value: Any) -> int:
    """A1111's grid margin slider: 0 to 500 px."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 500:
        raise AtelierError("script_args.margin_size must be 0 to 500 (pixels)", field="script_args")
    return int(value)


@dataclass
class XyzPlan:
    x: PlotAxis
    y: PlotAxis
    z: PlotAxis
    draw_legend: bool
    include_lone_images: bool
    include_sub_grids: bool
    margin: int
    vary_seeds: list[bool]  # per axis: each value of it gets the next seed, as A1111's "Vary seeds for X"
    no_fixed_seeds: bool = False  # A1111's "Keep -1 for seeds": every cell draws its own random seed

    @classmethod
    def from_request(cls, body: ProcessingRequest) -> XyzPlan:
        tab = _IMG2IMG if isinstance(body, Img2ImgRequest) else _TXT2IMG
        given = len(body.script_args)
        if given > 18:
            raise AtelierError("script_args: the X/Y/Z plot takes at most 18 arguments", field="script_args")
        args = list(body.script_args) + [None] * 18
        # A1111 1.7 and later put vary_seeds_x/y/z after no_fixed_seeds (18 arguments); 1.6 had 16.
        vary = [bool(args[13]), bool(args[14]), bool(args[15])] if given >= 17 else [False, False, False]
        margin_at = 16 if given >= 17 else 13
        plan = cls(
            x=_axis(tab, args[0], args[1] or "", args[2], "x"),
            y=_axis(tab, args[3], args[4] or "", args[5], "y"),
            z=_axis(tab, args[6], args[7] or "", args[8], "z"),
            draw_legend=True if args[9] is None else bool(args[9]),
            include_lone_images=bool(args[10]),
            include_sub_grids=bool(args[11]),
            margin=_margin(args[margin_at]),
            vary_seeds=vary,
        )
        cells = len(plan.x.values) * len(plan.y.values) * len(plan.z.values)
        if cells > MAX_CELLS:
            raise AtelierError(f"the plot would have {cells} cells; at most {MAX_CELLS}", field="script_args")
        no_fixed_seeds = plan.no_fixed_seeds = bool(args[12])
        if not no_fixed_seeds:
            for axis in (plan.x, plan.y, plan.z):
                if axis.axis is not None and axis.axis.label == "Seed":
                    axis.values = [
                        random.randrange(4294967294) if value == -1 else value for value in axis.values
                    ]
        return plan

    def cells(self) -> list[tuple[int, int, int]]:
        """(ix, iy, iz) in A1111's image order: X fastest, then Y, then Z."""
        return [
            (ix, iy, iz)
            for iz in range(len(self.z.values))
            for iy in range(len(self.y.values))
            for ix in range(len(self.x.values))
        ]


def cell_request(body: ProcessingRequest, plan: XyzPlan, ix: int, iy: int, iz: int) -> ProcessingRequest:
    """The request of one cell: the body with each axis's value applied (one image per cell)."""
    values = body.model_dump()
    values.update(script_name=None, script_args=[], batch_size=1, n_iter=1)
    columns, rows = len(plan.x.values), len(plan.y.values)
    offsets = (ix, iy * columns, iz * columns * rows)
    values["seed"] = body.seed + sum(
        offset for offset, vary in zip(offsets, plan.vary_seeds, strict=True) if vary
    )
    for axis, index in ((plan.x, ix), (plan.y, iy), (plan.z, iz)):
        if axis.axis is None:
            continue
        value = axis.values[index]
        if axis.axis.label == "Prompt S/R":
            search = axis.values[0]
            if search not in values["prompt"] and search not in (values.get("negative_prompt") or ""):
                raise AtelierError(
                    f"Prompt S/R: {search!r} (the first value) is not in the prompt or the negative prompt",
                    field="script_args",
                )
            values["prompt"] = values["prompt"].replace(search, value)
            values["negative_prompt"] = (values.get("negative_prompt") or "").replace(search, value)
        else:
            axis.axis.apply(values, value)
    return type(body).model_validate(values)


async def run_xyz(
    request: Any,
    body: ProcessingRequest,
    prepare: Any,
    submit: Callable[[Any], Any],
    info: Callable[..., str],
) -> dict[str, Any]:
    """Plan the cells, queue one job each, wait for all, and answer with the labelled grid (A1111's shape)."""
    from atelier.campaign.comparison_grid import labelled_grid, side_by_side

    plan = XyzPlan.from_request(body)
    if body.seed == -1 and not plan.no_fixed_seeds:
        body = body.model_copy(update={"seed": random.randrange(4294967294)})  # one seed for every cell
    cells = plan.cells()
    requests = [cell_request(body, plan, ix, iy, iz) for ix, iy, iz in cells]
    prepared, finished, results, pictures = await run_cells(request, requests, prepare, submit, what="plot")
    per_z = len(plan.x.values) * len(plan.y.values)
    x_labels = [plan.x.label_of(value) for value in plan.x.values] if plan.draw_legend else []
    y_labels = [plan.y.label_of(value) for value in plan.y.values] if plan.draw_legend else []
    sub_grids = [
        labelled_grid(
            pictures[iz * per_z : (iz + 1) * per_z],
            columns=len(plan.x.values),
            x_labels=x_labels,
            y_labels=y_labels,
            title=plan.z.label_of(value) if plan.draw_legend else "",
            margin=plan.margin,
        )
        for iz, value in enumerate(plan.z.values)
    ]
    grid = sub_grids[0] if len(sub_grids) == 1 else side_by_side(sub_grids, gap=max(plan.margin, 8))
    first_infotext = results[0].infotexts[0]
    extra = {"Script": "X/Y/Z plot"}
    for name, axis in (("X", plan.x), ("Y", plan.y), ("Z", plan.z)):
        if axis.axis is not None:
            extra[f"{name} Type"] = axis.axis.label
            extra[f"{name} Values"] = axis.text
    grid_infotext = first_infotext + "".join(f", {key}: {_quoted(value)}" for key, value in extra.items())
    images = [grid]
    infotexts = [grid_infotext]
    seeds = [results[0].seeds[0]]
    if plan.include_sub_grids and len(sub_grids) > 1:
        images += sub_grids
        infotexts += [grid_infotext] * len(sub_grids)
        seeds += [results[0].seeds[0]] * len(sub_grids)
    if plan.include_lone_images:
        images += pictures
        infotexts += [result.infotexts[0] for result in results]
        seeds += [result.seeds[0] for result in results]
    signer = request.app.state.studio.signer
    encoded = await run_in_threadpool(
        lambda: [png_base64(image, text, signer) for image, text in zip(images, infotexts, strict=True)]
    )
    return {
        "images": encoded if body.send_images else [],
        "parameters": body.model_dump(exclude={"init_images", "mask"}),
        "info": info(finished[0], prepared[0], body, infotexts=infotexts, seeds=seeds),
    }


async def run_cells(
    request: Any,
    requests: Sequence[ProcessingRequest],
    prepare: Any,
    submit: Callable[[Any], Any],
    *,
    what: str,
) -> tuple[list[Any], list[Any], list[GenerateResult], list[Any]]:
    """Queue one job per request and wait for all: (prepared, finished jobs, results, first pictures).

    Everything is checked before anything is queued, so a mistake in the last cell costs no generation; the jobs
    spread over every generation worker.
    """
    studio: Studio = request.app.state.studio
    prepared = [await run_in_threadpool(prepare, studio, cell) for cell in requests]
    jobs = [await run_in_threadpool(submit, item) for item in prepared]
    timeout = studio.config.request_timeout_seconds
    finished = await asyncio.wait_for(
        asyncio.gather(*(request.app.state.waiter.wait(job.id) for job in jobs)), timeout=timeout
    )
    failed = next((job for job in finished if job.state != "succeeded"), None)
    if failed is not None:
        raise JobFailedError(
            f"a cell of the {what} ({failed.id}) {failed.state}: {failed.error}", field="job_id"
        )
    results = [GenerateResult.model_validate(job.result) for job in finished]
    pictures = await run_in_threadpool(lambda: [_open(studio, result.images[0].key) for result in results])
    return prepared, finished, results, pictures


def png_base64(image: Any, infotext: str, signer: Any = None) -> str:
    """A picture as base64 PNG with A1111's ``parameters`` infotext and its AI disclosure, signed with the
    studio's signer: a cell keeps what its stored file declares; a grid or a redrawn upscale is a composite."""
    from atelier.engine import COMPOSITE, Provenance, encode_image, source_type_of

    provenance = Provenance(source_type_of(image) or COMPOSITE)
    data = encode_image(image, provenance, infotext=infotext, signer=signer)
    return base64.b64encode(data).decode("ascii")


def _open(studio: Studio, key: str) -> Any:
    from atelier.images import open_image

    return open_image(studio.storage.get_bytes(key), field=key, max_pixels=studio.config.max_image_pixels)


def _quoted(value: str) -> str:
    # A1111 quotes infotext values that hold a comma or a colon (as JSON strings), so the line still parses.
    return json.dumps(value) if any(mark in value for mark in ',:"') else value
