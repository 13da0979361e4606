"""``atelier prompt``: show how a prompt is read (emphasis, schedule, AND parts, LoRAs, token chunks).

It loads no model and imports no torch, so it answers at once. Token counts use the CLIP tokenizer bundled with
Atelier (or a folder given with ``--tokenizer``, or the Hugging Face cache's copy of SD 1.5's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from atelier.errors import AtelierError
from atelier.prompts import (
    BREAK_WEIGHT,
    CHUNK_SIZE,
    chunk_prompt,
    inspect_prompt,
    parse_attention,
    parse_prompt,
    schedule_and_parts,
)

if TYPE_CHECKING:
    import tokenizers

DEFAULT_STEPS = 20
# Alternation makes one schedule entry per step, so an absurd step count would only exhaust memory.
MAX_STEPS = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prompt",
        help="show how a prompt is parsed: emphasis, schedule, AND parts, LoRAs, token chunks",
        description=(
            "Show how a prompt is read, in AUTOMATIC1111's prompt language: emphasis weights, the text used "
            "at each step, composable AND parts, LoRA tags and the 75-token chunks."
        ),
    )
    parser.add_argument(
        "text", nargs="*", metavar="TEXT", help="the prompt (several words are joined with spaces)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        help=f"sampling steps to schedule over (default {DEFAULT_STEPS})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt, one per line")
    parser.add_argument(
        "--stdin", action="store_true", help="read prompts from standard input, one JSON string per line"
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        metavar="DIR",
        help="a CLIP tokenizer folder to count with instead of the bundled one (tokenizer.json, or vocab.json "
        "and merges.txt; a pipeline folder works too)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.steps <= MAX_STEPS:
        raise AtelierError(f"--steps must be between 1 and {MAX_STEPS}, got {args.steps}", field="steps")
    prompts = _prompts_from_arguments(args)
    if args.json:
        for prompt in prompts:
            print(json.dumps(inspect_prompt(prompt, args.steps)))
        return 0
    tokenizer = _find_tokenizer(args.tokenizer)
    for index, prompt in enumerate(prompts):
        if index:
            print()
        print("\n".join(_describe(prompt, args.steps, tokenizer)))
    return 0


def _prompts_from_arguments(args: argparse.Namespace) -> list[str]:
    if args.stdin and args.text:
        raise AtelierError("give the prompt as TEXT or with --stdin, not both")
    if args.stdin:
        return _prompts_from_lines(sys.stdin)
    if not args.text:
        raise AtelierError(
            "no prompt: give it as TEXT, or use --stdin to read JSON strings from standard input"
        )
    return [" ".join(args.text)]


def _prompts_from_lines(lines: Iterable[str]) -> list[str]:
    prompts = []
    # Everything is checked before anything is printed, so a bad line never leaves half an answer behind.
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            prompt = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AtelierError(
                f"stdin line {number} is not JSON ({exc.msg}); expected a JSON string"
            ) from None
        if not isinstance(prompt, str):
            raise AtelierError(
                f"stdin line {number} is a JSON {type(prompt).__name__}, expected a JSON string"
            )
        prompts.append(prompt)
    return prompts


# -------------------------------------------------------------------------------------------------------------
# Tokenizer
# -------------------------------------------------------------------------------------------------------------


@dataclass
class ClipTokenizer:
    """A CLIP tokenizer seen through the three operations chunking needs."""

    backend: tokenizers.Tokenizer

    @property
    def comma_token(self) -> int | None:
        return self.backend.token_to_id(",</w>")

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        # Some tokenizer.json files carry a byte-level decoder that leaves CLIP's end-of-word marks in.
        return self.backend.decode(ids).replace("</w>", " ").strip()


def load_tokenizer(directory: Path) -> ClipTokenizer:
    """Read a CLIP tokenizer folder: ``tokenizer.json``, or ``vocab.json`` + ``merges.txt``.

    A diffusers pipeline folder is accepted too (its ``tokenizer`` subfolder is used).
    """
    import tokenizers

    if (directory / "tokenizer").is_dir():
        directory = directory / "tokenizer"
    if not directory.is_dir():
        raise AtelierError(f"tokenizer folder {directory} does not exist", field="tokenizer")
    try:
        if (directory / "tokenizer.json").is_file():
            return ClipTokenizer(tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json")))
        if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            # Only the slow-format files: transformers (which does not import torch for this) builds the
            # fast tokenizer with CLIP's exact normalisation and splitting rules.
            from transformers import CLIPTokenizer

            return ClipTokenizer(CLIPTokenizer.from_pretrained(str(directory)).backend_tokenizer)
    except Exception as exc:
        raise AtelierError(f"could not read the tokenizer in {directory}: {exc}", field="tokenizer") from None
    raise AtelierError(
        f"no CLIP tokenizer in {directory}: expected tokenizer.json, or vocab.json and merges.txt",
        field="tokenizer",
    )


def _find_tokenizer(directory: Path | None) -> ClipTokenizer:
    """The tokenizer to count with: the folder given, else the Hugging Face cache's, else the bundled one."""
    from atelier.engine import CLIP_L_REPO, cached_tokenizer_folder, clip_backend

    if directory is not None:
        return load_tokenizer(directory)
    cached = cached_tokenizer_folder(CLIP_L_REPO)
    if cached is not None:
        try:
            return load_tokenizer(cached)
        except AtelierError:
            pass  # the user did not ask for this one; a broken cache should not stop the answer
    return ClipTokenizer(clip_backend())


# -------------------------------------------------------------------------------------------------------------
# Readable view
# -------------------------------------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _steps_label(steps: list[int]) -> str:
    """ "steps 1-3, 7" for the steps a text is used at."""
    spans: list[list[int]] = []
    for step in steps:
        if spans and spans[-1][1] == step - 1:
            spans[-1][1] = step
        else:
            spans.append([step, step])
    words = [f"{first}" if first == last else f"{first}-{last}" for first, last in spans]
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(words)


def _texts_with_steps(schedule: list[tuple[int, str]]) -> list[tuple[str, list[int]]]:
    """Each distinct text of a schedule, in order of first use, with every step it is used at."""
    steps_by_text: dict[str, list[int]] = {}
    first_step = 1
    for end_step, text in schedule:
        steps_by_text.setdefault(text, []).extend(range(first_step, end_step + 1))
        first_step = end_step + 1
    return list(steps_by_text.items())


def _describe(prompt: str, steps: int, tokenizer: ClipTokenizer) -> list[str]:
    """The readable view: for each AND part, each text the schedule uses, its emphasis runs and its chunks."""
    parsed = parse_prompt(prompt)
    lines = [f"prompt: {_quoted(prompt)}"]
    if parsed.text != prompt:
        lines.append(f"text:   {_quoted(parsed.text)}  (comments and extra-network tags removed)")
    for lora in parsed.loras:
        lines.append(f"lora:   {lora.name}  text encoder {lora.te_weight:g}, unet {lora.unet_weight:g}")
    for tag in parsed.ignored_tags:
        lines.append(f"ignored: {tag}  (only LoRA tags are applied)")

    parts = schedule_and_parts(parsed.text, steps)
    for number, part in enumerate(parts, start=1):
        if len(parts) > 1:
            lines.append(f"AND part {number} of {len(parts)}, weight {part.weight:g}: {_quoted(part.text)}")
        elif part.weight != 1.0:
            lines.append(f"weight {part.weight:g}: {_quoted(part.text)}")
        for text, text_steps in _texts_with_steps(part.schedule):
            lines.append(f"  {_steps_label(text_steps)} of {steps}: {_quoted(text)}")
            lines.append("    emphasis:")
            for run_text, weight in parse_attention(text):
                if run_text == "BREAK" and weight == BREAK_WEIGHT:
                    lines.append("      BREAK (starts a new chunk)")
                else:
                    lines.append(f"      {weight:>8.4g}  {_quoted(run_text)}")
            lines.extend(_chunk_lines(text, tokenizer))
    return lines


def _chunk_lines(text: str, tokenizer: ClipTokenizer) -> list[str]:
    chunks, token_count = chunk_prompt(text, tokenizer.encode, tokenizer.comma_token)
    lines = [
        f"    tokens: {token_count}/{len(chunks) * CHUNK_SIZE} in {len(chunks)} chunk(s) of {CHUNK_SIZE}"
    ]
    for chunk_number, (chunk_ids, _weights) in enumerate(chunks, start=1):
        lines.append(
            f"      chunk {chunk_number}: {len(chunk_ids):>2} tokens  {_quoted(tokenizer.decode(chunk_ids))}"
        )
    return lines
