"""A JSON-ready description of how a prompt is read, for ``atelier prompt --json`` and the web UI."""

from __future__ import annotations

from typing import Any

from atelier.prompts.parser import parse_attention, parse_prompt, schedule_prompt, split_and


def inspect_prompt(prompt: str, steps: int = 20) -> dict[str, Any]:
    """Everything the prompt language makes of ``prompt`` over ``steps`` sampling steps.

    Keys: ``prompt`` (as given), ``text`` (comments stripped, extra-network tags removed), ``attention`` and
    ``schedules`` of that whole text (what A1111 encodes for a negative prompt, which it never splits on AND),
    ``and_parts`` (what it encodes for a positive prompt: each part's ``text`` and ``weight`` as split, its
    ``schedules`` and ``attention``), ``loras`` (``name``, ``te``, ``unet``) and ``ignored_tags`` (extra-network
    tags of other kinds, removed but not applied). A ``BREAK`` shows in ``attention`` as ``["BREAK", -1]``.
    """
    parsed = parse_prompt(prompt)
    return {
        "prompt": prompt,
        "text": parsed.text,
        "attention": [[text, weight] for text, weight in parse_attention(parsed.text)],
        "schedules": [[step, text] for step, text in schedule_prompt(parsed.text, steps)],
        "and_parts": [
            {
                "text": part,
                "weight": weight,
                "schedules": [[step, text] for step, text in schedule_prompt(part, steps)],
                "attention": [[text, run_weight] for text, run_weight in parse_attention(part)],
            }
            for part, weight in split_and(parsed.text)
        ],
        "loras": [
            {"name": lora.name, "te": lora.te_weight, "unet": lora.unet_weight} for lora in parsed.loras
        ],
        "ignored_tags": list(parsed.ignored_tags),
    }
