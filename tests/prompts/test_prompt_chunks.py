"""Chunking follows A1111's tokenize_line: 75 tokens a chunk, BREAK, and the comma backtrack."""

from __future__ import annotations

import pytest

from atelier.prompts import (
    BREAK_WEIGHT,
    chunk_prompt,
    chunk_tokens,
    chunk_tokens_with_count,
    pad_chunk,
    token_runs,
)

COMMA = 9
WORD = 1
BREAK = ([], BREAK_WEIGHT)


def test_short_prompt_is_one_chunk() -> None:
    assert chunk_tokens_with_count([([1, 2, 3], 1.0), ([4], 1.2)], COMMA) == (
        [([1, 2, 3, 4], [1.0, 1.0, 1.0, 1.2])],
        4,
    )


def test_empty_prompt_is_one_empty_chunk() -> None:
    assert chunk_tokens_with_count([], COMMA) == ([([], [])], 0)


def test_long_prompt_without_commas_is_cut_at_75() -> None:
    chunks, count = chunk_tokens_with_count([([WORD] * 80, 1.0)], COMMA)
    assert [len(tokens) for tokens, _weights in chunks] == [75, 5]
    assert count == 80


def test_words_after_a_late_comma_move_to_the_next_chunk() -> None:
    # 70 words, a comma at index 70, then 10 more words: the chunk is full at the 76th token and the comma is
    # 5 tokens back, so the 4 words after it move on with the rest.
    runs = [([WORD] * 70, 1.0), ([COMMA], 1.0), ([2] * 10, 1.3)]
    chunks, count = chunk_tokens_with_count(runs, COMMA)
    assert chunks[0] == ([WORD] * 70 + [COMMA], [1.0] * 71)
    assert chunks[1] == ([2] * 10, [1.3] * 10)
    assert count == 85


def test_comma_further_back_than_20_tokens_is_ignored() -> None:
    runs = [([WORD] * 50, 1.0), ([COMMA], 1.0), ([WORD] * 30, 1.0)]
    assert [len(tokens) for tokens, _weights in chunk_tokens(runs, COMMA)] == [75, 6]


def test_comma_exactly_20_tokens_back_still_counts() -> None:
    runs = [([WORD] * 55, 1.0), ([COMMA], 1.0), ([WORD] * 30, 1.0)]
    assert [len(tokens) for tokens, _weights in chunk_tokens(runs, COMMA)] == [56, 30]


def test_backtrack_can_be_disabled() -> None:
    runs = [([WORD] * 70, 1.0), ([COMMA], 1.0), ([WORD] * 10, 1.0)]
    assert [len(tokens) for tokens, _weights in chunk_tokens(runs, COMMA, backtrack=0)] == [75, 6]
    assert [len(tokens) for tokens, _weights in chunk_tokens(runs, None)] == [75, 6]


def test_comma_as_the_76th_token_starts_the_next_chunk() -> None:
    runs = [([WORD] * 75, 1.0), ([COMMA], 1.0), ([WORD] * 3, 1.0)]
    chunks = chunk_tokens(runs, COMMA)
    assert [tokens for tokens, _weights in chunks] == [[WORD] * 75, [COMMA, WORD, WORD, WORD]]


def test_break_ends_the_chunk_and_counts_as_a_full_one() -> None:
    chunks, count = chunk_tokens_with_count([([1], 1.0), BREAK, ([2], 1.0)], COMMA)
    assert chunks == [([1], [1.0]), ([2], [1.0])]
    assert count == 76


def test_trailing_break_adds_no_empty_chunk_but_counts_75() -> None:
    assert chunk_tokens_with_count([([1], 1.0), BREAK], COMMA) == ([([1], [1.0])], 75)


def test_leading_and_double_breaks_make_empty_chunks() -> None:
    chunks = chunk_tokens([BREAK, ([1], 1.0), BREAK, BREAK, ([2], 1.0)], COMMA)
    assert [tokens for tokens, _weights in chunks] == [[], [1], [], [2]]


def test_break_forgets_the_previous_comma() -> None:
    # Were the comma at index 70 remembered, the second chunk would be cut after 71 tokens.
    runs = [([WORD] * 70, 1.0), ([COMMA], 1.0), BREAK, ([WORD] * 80, 1.0)]
    assert [len(tokens) for tokens, _weights in chunk_tokens(runs, COMMA)] == [71, 75, 5]


def _encode_words(texts: list[str]) -> list[list[int]]:
    """A stand-in tokenizer: one token per word, commas 9, everything else 1."""
    return [[COMMA if word == "," else WORD for word in text.replace(",", " , ").split()] for text in texts]


def test_token_runs_keep_break_and_drop_empty_runs() -> None:
    attention = [("a b", 1.0), ("BREAK", -1), ("", 1.1), (" ", 1.2), ("c", 1.3)]
    assert token_runs(attention, _encode_words) == [([1, 1], 1.0), ([], -1), ([1], 1.3)]


def test_break_inside_brackets_is_just_a_word() -> None:
    chunks, count = chunk_prompt("(a BREAK b)", _encode_words, COMMA)
    assert chunks == [([1, 1, 1], [1.1, -1.1, 1.1])]
    assert count == 3


def test_chunk_prompt_from_text() -> None:
    chunks, count = chunk_prompt("a, (b:1.5) BREAK c", _encode_words, COMMA)
    assert chunks == [([1, COMMA, 1], [1.0, 1.0, 1.5]), ([1], [1.0])]
    assert count == 76


def test_pad_chunk_frames_and_fills_like_a1111() -> None:
    tokens, weights = pad_chunk(([5, 6], [1.2, 0.8]), start_token=100, end_token=101)
    assert len(tokens) == len(weights) == 77
    assert tokens[:4] == [100, 5, 6, 101]
    assert set(tokens[3:]) == {101}
    assert weights[:3] == [1.0, 1.2, 0.8]
    assert set(weights[3:]) == {1.0}


def test_pad_chunk_with_a_separate_pad_token() -> None:
    tokens, _weights = pad_chunk(([5], [1.0]), start_token=100, end_token=101, pad_token=0)
    assert tokens[:3] == [100, 5, 101]
    assert set(tokens[3:]) == {0}


def test_pad_chunk_refuses_an_overfull_chunk() -> None:
    with pytest.raises(ValueError, match="76 tokens"):
        pad_chunk(([1] * 76, [1.0] * 76), start_token=100, end_token=101)
