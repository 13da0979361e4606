"""Splitting a tokenized prompt into the 75-token chunks CLIP text encoders take, the way A1111 does.

CLIP reads 77 tokens at a time: a start token, 75 prompt tokens and an end token. Longer prompts are cut into
chunks that are encoded separately and concatenated. A1111 ends a chunk early at ``BREAK``, and when a chunk
fills up it moves the words after the last comma (if that comma is among the chunk's last 20 tokens) to the
next chunk, so a phrase is not cut in half. This module reproduces that logic (A1111's ``tokenize_line``,
without textual-inversion embeddings) on plain token ids, so it works with any tokenizer and without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from atelier.prompts.parser import BREAK_WEIGHT, parse_attention

CHUNK_SIZE = 75
"""Prompt tokens per chunk, the start and end tokens not counted."""
COMMA_BACKTRACK = 20
"""How far back (in tokens) from a full chunk's end A1111 looks for a comma to break at (its default setting)."""

TokenChunk = tuple[list[int], list[float]]
"""A chunk's token ids and the emphasis weight of each, without start, end or padding tokens."""


def token_runs(
    attention: Sequence[tuple[str, float]], encode: Callable[[list[str]], list[list[int]]]
) -> list[tuple[list[int], float]]:
    """Tokenize the runs of :func:`~atelier.prompts.parser.parse_attention` for :func:`chunk_tokens`.

    ``encode`` turns texts into token ids without start/end tokens. A ``BREAK`` run becomes
    ``([], BREAK_WEIGHT)``; runs that tokenize to nothing are dropped, so they cannot be mistaken for one.
    """
    encoded = encode([text for text, _weight in attention])
    runs: list[tuple[list[int], float]] = []
    for (text, weight), ids in zip(attention, encoded, strict=True):
        if text == "BREAK" and weight == BREAK_WEIGHT:
            runs.append(([], BREAK_WEIGHT))
        elif ids:
            runs.append((list(ids), weight))
    return runs


def chunk_tokens_with_count(
    runs: Sequence[tuple[Sequence[int], float]],
    comma_token: int | None,
    chunk_size: int = CHUNK_SIZE,
    backtrack: int = COMMA_BACKTRACK,
) -> tuple[list[TokenChunk], int]:
    """Like :func:`chunk_tokens`, also returning A1111's token count for the prompt.

    That count is what A1111's token counter shows: ``chunk_size`` for every chunk ended by ``BREAK`` or by
    filling up, plus the length of the final chunk.
    """
    chunks: list[TokenChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    token_count = 0
    last_comma = -1

    def finish_chunk(is_last: bool) -> None:
        nonlocal tokens, weights, token_count, last_comma
        token_count += len(tokens) if is_last else chunk_size
        chunks.append((tokens, weights))
        tokens, weights = [], []
        last_comma = -1

    for run_tokens, weight in runs:
        if weight == BREAK_WEIGHT and not run_tokens:
            finish_chunk(is_last=False)
            continue
        for token in run_tokens:
            if token == comma_token:
                last_comma = len(tokens)
            elif (
                backtrack
                and len(tokens) == chunk_size
                and last_comma != -1
                and chunk_size - last_comma <= backtrack
            ):
                # Full, and a comma is close to the end: carry the words after it over to the next chunk.
                carried_tokens, carried_weights = tokens[last_comma + 1 :], weights[last_comma + 1 :]
                del tokens[last_comma + 1 :], weights[last_comma + 1 :]
                finish_chunk(is_last=False)
                tokens, weights = carried_tokens, carried_weights
            if len(tokens) == chunk_size:
                finish_chunk(is_last=False)
            tokens.append(token)
            weights.append(weight)

    if tokens or not chunks:
        finish_chunk(is_last=True)
    return chunks, token_count


def chunk_tokens(
    runs: list[tuple[list[int], float]],
    comma_token: int | None,
    chunk_size: int = CHUNK_SIZE,
    backtrack: int = COMMA_BACKTRACK,
) -> list[TokenChunk]:
    """Split tokenized runs into chunks of at most ``chunk_size`` tokens, like A1111's ``tokenize_line``.

    ``runs`` are ``(token_ids, weight)`` pairs in prompt order (see :func:`token_runs`); a run
    ``([], BREAK_WEIGHT)`` is a ``BREAK`` and ends the current chunk. ``comma_token`` is the id of ``,`` (``None``
    disables the comma rule, as does ``backtrack=0``). Chunks come back unpadded; an empty prompt gives one
    empty chunk. See :func:`pad_chunk` for the 77-token form the text encoder takes.
    """
    chunks, _token_count = chunk_tokens_with_count(runs, comma_token, chunk_size, backtrack)
    return chunks


def chunk_prompt(
    text: str,
    encode: Callable[[list[str]], list[list[int]]],
    comma_token: int | None,
    chunk_size: int = CHUNK_SIZE,
    backtrack: int = COMMA_BACKTRACK,
) -> tuple[list[TokenChunk], int]:
    """Emphasis-parse one scheduled prompt text, tokenize it and chunk it; returns the chunks and token count."""
    runs = token_runs(parse_attention(text), encode)
    return chunk_tokens_with_count(runs, comma_token, chunk_size, backtrack)


def pad_chunk(
    chunk: TokenChunk,
    start_token: int,
    end_token: int,
    pad_token: int | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> TokenChunk:
    """The ``chunk_size + 2`` tokens and weights the text encoder reads for one chunk, as A1111 builds them.

    The chunk is filled up with ``end_token`` and framed by ``start_token`` and ``end_token``, all with weight
    1.0. Text encoders whose padding token differs from their end token (OpenCLIP) get ``pad_token`` after the
    first end token.
    """
    tokens, weights = chunk
    if len(tokens) > chunk_size:
        raise ValueError(f"chunk has {len(tokens)} tokens, more than {chunk_size}")
    filler = chunk_size - len(tokens)
    padded_tokens = [start_token, *tokens, *[end_token] * (filler + 1)]
    padded_weights = [1.0, *weights, *[1.0] * (filler + 1)]
    if pad_token is not None and pad_token != end_token:
        first_end = padded_tokens.index(end_token)
        padded_tokens[first_end + 1 :] = [pad_token] * (len(padded_tokens) - first_end - 1)
    return padded_tokens, padded_weights
