"""The prompt language of AUTOMATIC1111's web UI, in pure Python (no torch).

Emphasis ``(x)``, ``[x]``, ``(x:1.3)``; prompt editing ``[from:to:when]``; alternation ``[a|b]``; ``BREAK``;
composable ``AND``; ``#`` comments; ``<lora:name:weight>`` tags. Every function gives A1111's result for the
same text; :mod:`atelier.prompts.parser` lists the order in which the engine applies them.
"""

from atelier.prompts.chunks import (
    CHUNK_SIZE,
    COMMA_BACKTRACK,
    TokenChunk,
    chunk_prompt,
    chunk_tokens,
    chunk_tokens_with_count,
    pad_chunk,
    token_runs,
)
from atelier.prompts.inspect import inspect_prompt
from atelier.prompts.parser import (
    BREAK_WEIGHT,
    LoraTag,
    ParsedPrompt,
    ScheduledPart,
    extract_loras,
    parse_attention,
    parse_prompt,
    schedule_and_parts,
    schedule_prompt,
    split_and,
    strip_comments,
    text_at_step,
)

__all__ = [
    "BREAK_WEIGHT",
    "CHUNK_SIZE",
    "COMMA_BACKTRACK",
    "LoraTag",
    "ParsedPrompt",
    "ScheduledPart",
    "TokenChunk",
    "chunk_prompt",
    "chunk_tokens",
    "chunk_tokens_with_count",
    "extract_loras",
    "inspect_prompt",
    "pad_chunk",
    "parse_attention",
    "parse_prompt",
    "schedule_and_parts",
    "schedule_prompt",
    "split_and",
    "strip_comments",
    "text_at_step",
    "token_runs",
]
