"""The prompt language gives AUTOMATIC1111's results: expected values follow A1111's doctests and its code."""

from __future__ import annotations

import time

import pytest

from atelier.errors import AtelierError
from atelier.prompts import (
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

# --------------------------------------------------------------------------------------------------------------
# Emphasis
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("[x]", [("x", 0.9090909090909091)]),
        ("[[x]]", [("x", 0.8264462809917354)]),
        ("((x))", [("x", 1.2100000000000002)]),
        (
            "[a] (b) [c:2]",
            [("a", 0.9090909090909091), (" ", 1.0), ("b", 1.1), (" ", 1.0), ("c:2", 0.9090909090909091)],
        ),
        ("(x: 1.5 )", [("x", 1.5)]),
    ],
)
def test_emphasis_weights_match_a1111(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert parse_attention(prompt) == expected


def test_unclosed_round_brackets_apply_before_unclosed_square_ones() -> None:
    # 1.1 * 1.1 * 1.1 / 1.1 in A1111's order; applying the square bracket first would give 1.2100000000000002.
    assert parse_attention("[(((x") == [("x", 1.2100000000000004)]


def test_stray_closing_brackets_are_text() -> None:
    assert parse_attention("a) b] c") == [("a) b] c", 1.0)]


def test_escapes_and_lone_backslashes() -> None:
    assert parse_attention("\\\\ and \\[x\\]") == [("\\ and [x]", 1.0)]
    # A backslash escaping nothing is dropped, as in A1111.
    assert parse_attention("a\\b") == [("ab", 1.0)]


def test_break_is_its_own_run() -> None:
    assert parse_attention("a BREAK b") == [("a", 1.0), ("BREAK", -1), ("b", 1.0)]
    assert parse_attention("BREAK a") == [("", 1.0), ("BREAK", -1), ("a", 1.0)]
    assert parse_attention("aBREAKb") == [("aBREAKb", 1.0)]


def test_break_inside_brackets_is_weighted_like_a1111() -> None:
    # A1111 multiplies the BREAK marker too, after which its chunker no longer treats it as a break.
    assert parse_attention("(a BREAK b)") == [("a", 1.1), ("BREAK", -1.1), ("b", 1.1)]


def test_negative_weight() -> None:
    assert parse_attention("a (x:-1) b") == [("a ", 1.0), ("x", -1.0), (" b", 1.0)]


def test_empty_prompt() -> None:
    assert parse_attention("") == [("", 1.0)]


def test_malformed_weight_is_kept_as_text_instead_of_failing() -> None:
    assert parse_attention("(a:1.2.3)") == [("a:1.2.3)", 1.1)]


def test_unicode_and_emoji() -> None:
    assert parse_attention("(🐱 chat:1.2) ünï 漢字") == [("🐱 chat", 1.2), (" ünï 漢字", 1.0)]


# --------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        # A1111's doctest for this one is stale ("not handling this right now"): since "|" became alternation,
        # its parser rejects the prompt and uses it literally, as here.
        ("a [{b|d{:.5] c", [(10, "a [{b|d{:.5] c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("a [b::3] c", [(3, "a b c"), (10, "a  c")]),
        ("[a:b:1.0]", [(10, "a")]),
        ("[a:b:50]", [(10, "a")]),
        ("[a:b:0]", [(10, "b")]),
        ("[a:b:-3]", [(10, "b")]),
        ("[a:b:4e0]", [(4, "a"), (10, "b")]),
        ("\\[a:b:3\\]", [(10, "\\[a:b:3\\]")]),
    ],
)
def test_prompt_editing_matches_a1111(prompt: str, expected: list[tuple[int, str]]) -> None:
    assert schedule_prompt(prompt, 10) == expected


def test_alternation_changes_every_step() -> None:
    assert schedule_prompt("[a|(b:1.1)]", 4) == [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]


def test_alternation_with_empty_options() -> None:
    assert schedule_prompt("[fe|]male", 10) == [
        (1, "female"),
        (2, "male"),
        (3, "female"),
        (4, "male"),
        (5, "female"),
        (6, "male"),
        (7, "female"),
        (8, "male"),
        (9, "female"),
        (10, "male"),
    ]
    assert schedule_prompt("[fe|||]male", 6) == [
        (1, "female"),
        (2, "male"),
        (3, "male"),
        (4, "male"),
        (5, "female"),
        (6, "male"),
    ]


def test_edit_nested_in_alternation() -> None:
    assert schedule_prompt("[[a:b:2]|c]", 4) == [(1, "a"), (2, "c"), (3, "b"), (4, "c")]


def test_fraction_of_steps() -> None:
    assert schedule_prompt("a [cat:dog:0.25] photo", 20) == [(5, "a cat photo"), (20, "a dog photo")]


@pytest.mark.parametrize("prompt", ["a|b", "a [b|c", "ends with a backslash \\", "(a|b)"])
def test_unparseable_scheduling_syntax_is_used_literally(prompt: str) -> None:
    assert schedule_prompt(prompt, 10) == [(10, prompt)]


def test_hires_pass_counts_from_the_end_of_the_first_pass() -> None:
    assert schedule_prompt("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert schedule_prompt("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule_prompt("a [b:13] c", 10, hires_steps=10) == [(3, "a  c"), (10, "a b c")]


def test_steps_must_be_positive() -> None:
    with pytest.raises(AtelierError, match="steps"):
        schedule_prompt("a", 0)


def test_deep_nesting_neither_crashes_nor_hangs() -> None:
    deep_emphasis = "(" * 5000 + "x" + ")" * 5000
    assert schedule_prompt(deep_emphasis, 20) == [(20, deep_emphasis)]
    deep_edits = "[" * 3000 + "a" + ":b:1]" * 3000
    assert schedule_prompt(deep_edits, 5) == [(1, "a"), (5, "b")]
    unclosed = "[" * 5000 + "a, b" * 1000
    assert schedule_prompt(unclosed, 5) == [(5, unclosed)]


def test_text_at_step_follows_a1111_sampler_counting() -> None:
    schedule = [(3, "a "), (10, "a b")]
    assert [text_at_step(schedule, step) for step in (0, 3, 4, 10)] == ["a ", "a ", "a b", "a b"]
    # Past the last entry A1111 falls back to the first one.
    assert text_at_step(schedule, 11) == "a "


# --------------------------------------------------------------------------------------------------------------
# AND
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a AND b", [("a", 1.0), (" b", 1.0)]),
        ("a:0.5 AND b :1.5 AND c", [("a", 0.5), (" b", 1.5), (" c", 1.0)]),
        ("x:1 AND  y :2. AND z\n", [("x", 1.0), ("  y", 2.0), (" z", 1.0)]),
        ("(x:1.2) AND y: -0.5", [("(x:1.2)", 1.0), (" y", -0.5)]),
        ("ANDROID and sand AND x", [("ANDROID and sand", 1.0), (" x", 1.0)]),
        ("a AND", [("a", 1.0), ("", 1.0)]),
        ("just one:1.3", [("just one", 1.3)]),
    ],
)
def test_split_and(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert split_and(prompt) == expected


def test_schedule_and_parts() -> None:
    assert schedule_and_parts("a [b:c:0.5] AND d:0.3", 4) == [
        ScheduledPart(text="a [b:c:0.5]", weight=1.0, schedule=[(2, "a b"), (4, "a c")]),
        ScheduledPart(text=" d", weight=0.3, schedule=[(4, " d")]),
    ]


# --------------------------------------------------------------------------------------------------------------
# Comments and LoRA tags
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("no comment", "no comment"),
        ("a # comment\nb", "a \nb"),
        ("# whole line\nb", "\nb"),
        ("a\n# whole line\nb", "a\nb"),
        ("a\n#x\n#y\nb", "a\n\nb"),
        ("a # at the end", "a \n"),
        ("a \\# b", "a \\\n"),
    ],
)
def test_strip_comments_like_a1111(prompt: str, expected: str) -> None:
    assert strip_comments(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "text", "loras"),
    [
        ("a <lora:foo:0.8> b", "a  b", [LoraTag("foo", 0.8, 0.8)]),
        ("<lora:foo>", "", [LoraTag("foo", 1.0, 1.0)]),
        ("<lora:foo:0.5:0.2>x", "x", [LoraTag("foo", 0.5, 0.2)]),
        ("<lora:foo:te=0.3:unet=0.9>", "", [LoraTag("foo", 0.3, 0.9)]),
        ("<lora:foo:0.5:unet=0.1>", "", [LoraTag("foo", 0.5, 0.1)]),
        ("<lora:foo:te=0.3>", "", [LoraTag("foo", 0.3, 0.3)]),
        ("<lyco:bar:-0.4>", "", [LoraTag("bar", -0.4, -0.4)]),
        ("<lora:my lora v2:1>, <lora:ü:2>", ", ", [LoraTag("my lora v2", 1.0, 1.0), LoraTag("ü", 2.0, 2.0)]),
        ("[<lora:a:1>:3]", "[:3]", [LoraTag("a", 1.0, 1.0)]),
        ("<hypernet:x:1> cat", " cat", []),
        ("a < b > c", "a < b > c", []),
    ],
)
def test_extract_loras(prompt: str, text: str, loras: list[LoraTag]) -> None:
    assert extract_loras(prompt) == (text, loras)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("<lora:foo:abc>", "not a number"),
        ("<lora:foo:1:te=x>", "not a number"),
        ("<lora:foo:inf>", "not a finite number"),
        ("<lora::0.5>", "no LoRA name"),
        ("<lora:te=1>", "no LoRA name"),
    ],
)
def test_bad_lora_tags_are_user_errors(prompt: str, message: str) -> None:
    with pytest.raises(AtelierError, match=message) as caught:
        extract_loras(prompt)
    assert "\n" not in str(caught.value)


def test_parse_prompt_strips_comments_before_taking_tags() -> None:
    parsed = parse_prompt("cat <lora:a:0.5> <hypernet:h> # <lora:b:1>\ndog")
    assert parsed == ParsedPrompt(
        text="cat   \ndog", loras=[LoraTag("a", 0.5, 0.5)], ignored_tags=["<hypernet:h>"]
    )


# --------------------------------------------------------------------------------------------------------------
# Long prompts
# --------------------------------------------------------------------------------------------------------------


def _long_prompt() -> str:
    phrases = [
        "masterpiece, best quality",
        "(detailed product photo:1.2)",
        "[red:blue:0.4] bottle",
        "[studio|outdoor] lighting",
        "((soft shadows))",
        "[[background]]",
        "🍾 ünïcode",
        "(negative:-1)",
        "BREAK",
        "<lora:style:0.6>",
        "# a comment\n",
        "AND",
    ]
    words = []
    while sum(len(word) + 1 for word in words) < 10_000:
        words.append(phrases[len(words) % len(phrases)])
    return " ".join(words)[:10_000]


def test_ten_thousand_character_prompt_is_fast() -> None:
    prompt = _long_prompt()
    assert len(prompt) == 10_000
    started = time.perf_counter()
    parsed = parse_prompt(prompt)
    parts = schedule_and_parts(parsed.text, 30)
    runs = [parse_attention(text) for part in parts for _step, text in part.schedule]
    whole = schedule_prompt(parsed.text, 30)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert len(parsed.loras) == prompt.count("<lora:style:0.6>") > 40
    assert len(parts) == prompt.count(" AND ") + 1
    # The alternation makes every step its own entry.
    assert [step for step, _text in whole] == list(range(1, 31))
    assert "[studio|outdoor]" not in whole[0][1]
    assert any(("BREAK", -1) in attention for attention in runs)
