"""AUTOMATIC1111's prompt language, read without torch.

Prompts written for AUTOMATIC1111's web UI must mean the same thing here, so every function below reproduces
what A1111 does with the same text, quirks included (the exact float products of nested emphasis, the literal
fallback of unparseable scheduling syntax, the way comments and extra-network tags leave their newlines and
spaces behind). Where A1111 would crash (a malformed emphasis weight such as ``(a:1.2.3)``), the text is kept
literally instead: a prompt is never an error because of its brackets.

The order A1111 applies these steps in, and the order :func:`parse_prompt` and the engine follow:

1. :func:`strip_comments` on the whole prompt;
2. :func:`extract_loras` removes ``<lora:...>`` and every other ``<kind:...>`` extra-network tag;
3. :func:`split_and` splits the positive prompt on ``AND`` (negative prompts are not split);
4. :func:`schedule_prompt` turns each part into the texts used at each sampling step;
5. :func:`parse_attention` turns each of those texts into weighted runs for the text encoder.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from atelier.errors import AtelierError

# ---------------------------------------------------------------------------------------------------------------
# Comments and extra-network tags
# ---------------------------------------------------------------------------------------------------------------

# A1111 removes a comment together with the newline ending it and puts one newline back, so a prompt ending in a
# comment gains a trailing newline. A `#` cannot be escaped there, so it cannot be here either.
_WHOLE_LINE_COMMENT = re.compile(r"(?:^|\n)#[^\n]*(?:\n|$)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(?:\n|$)")

_EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
# A1111 registers its LoRA network as "lora" and keeps "lyco" as an alias from the LyCORIS extension days.
_LORA_TAG_KINDS = frozenset({"lora", "lyco"})


@dataclass(frozen=True)
class LoraTag:
    """A ``<lora:name:weight>`` tag: the LoRA to apply and its strength on the text encoder and on the UNet."""

    name: str
    te_weight: float
    unet_weight: float


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt ready for scheduling: comments stripped, extra-network tags taken out of the text."""

    text: str
    loras: list[LoraTag]
    # Tags of extra-network kinds other than LoRA (hypernetworks, ...), removed from the text like A1111 does
    # but not applied; kept so callers can tell the user they were ignored.
    ignored_tags: list[str] = field(default_factory=list)


def strip_comments(text: str) -> str:
    """Remove ``#`` comments the way A1111's "Enable comments" option does: from ``#`` to the end of the line."""
    text = _WHOLE_LINE_COMMENT.sub("\n", text)
    return _TRAILING_COMMENT.sub("\n", text)


def _parse_lora_weight(tag: str, value: str) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise AtelierError(f"LoRA tag {tag}: weight {value!r} is not a number", field="prompt") from None
    if not math.isfinite(weight):
        raise AtelierError(f"LoRA tag {tag}: weight {value!r} is not a finite number", field="prompt")
    return weight


def _lora_from_arguments(tag: str, arguments: str) -> LoraTag:
    # A1111 splits on ":" and treats an item as named only when it has exactly one "=" ("te=0.5"); anything
    # else, including "a=b=c", is positional: name, text-encoder weight, UNet weight.
    positional: list[str] = []
    named: dict[str, str] = {}
    for item in arguments.split(":"):
        key_value = item.split("=", 2)
        if len(key_value) == 2:
            named[key_value[0]] = key_value[1]
        else:
            positional.append(item)
    if not positional or not positional[0].strip():
        raise AtelierError(f"LoRA tag {tag} has no LoRA name", field="prompt")
    te_weight = _parse_lora_weight(tag, positional[1]) if len(positional) > 1 else 1.0
    if "te" in named:
        te_weight = _parse_lora_weight(tag, named["te"])
    unet_weight = _parse_lora_weight(tag, positional[2]) if len(positional) > 2 else te_weight
    if "unet" in named:
        unet_weight = _parse_lora_weight(tag, named["unet"])
    return LoraTag(name=positional[0], te_weight=te_weight, unet_weight=unet_weight)


def _extract_extra_networks(text: str) -> tuple[str, list[LoraTag], list[str]]:
    loras: list[LoraTag] = []
    ignored: list[str] = []

    def take_tag(match: re.Match[str]) -> str:
        kind, arguments = match.group(1), match.group(2)
        if kind in _LORA_TAG_KINDS:
            loras.append(_lora_from_arguments(match.group(0), arguments))
        else:
            ignored.append(match.group(0))
        # The tag goes, the spaces around it stay: A1111 replaces it with nothing.
        return ""

    remaining = _EXTRA_NETWORK_TAG.sub(take_tag, text)
    return remaining, loras, ignored


def extract_loras(text: str) -> tuple[str, list[LoraTag]]:
    """Remove every ``<kind:...>`` extra-network tag from ``text``; return the text and the LoRA tags found.

    ``<lora:name>`` has weight 1.0, ``<lora:name:w>`` weight w for both text encoder and UNet,
    ``<lora:name:te:unet>`` or ``<lora:name:te=w1:unet=w2>`` separate weights. A weight that is not a number
    raises :class:`~atelier.errors.AtelierError`.
    """
    remaining, loras, _ignored = _extract_extra_networks(text)
    return remaining, loras


def parse_prompt(text: str) -> ParsedPrompt:
    """Strip comments, then take the extra-network tags out, in A1111's order."""
    remaining, loras, ignored = _extract_extra_networks(strip_comments(text))
    return ParsedPrompt(text=remaining, loras=loras, ignored_tags=ignored)


# ---------------------------------------------------------------------------------------------------------------
# Emphasis: (x), [x], (x:w), BREAK
# ---------------------------------------------------------------------------------------------------------------

_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]              # an escaped bracket or backslash stands for itself
    | \\                        # any other backslash is dropped
    | [(\[]                     # opens emphasis
    | :\s*([+-]?[.\d]+)\s*\)    # ":weight)" closes a round bracket with that weight
    | [)\]]                     # closes emphasis
    | [^\\()\[\]:]+             # plain text
    | :                         # a colon that does not introduce a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")

_ROUND_MULTIPLIER = 1.1
# A1111 multiplies by the reciprocal rather than dividing by 1.1; the products differ in the last bits.
_SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1
"""Weight of the ``("BREAK", BREAK_WEIGHT)`` run :func:`parse_attention` emits where ``BREAK`` ends a chunk."""


def _multiplied_repeatedly(
    weight: float, multiplier: float, times: int, chains: dict[tuple[float, float], list[float]]
) -> float:
    # Keyed on the sign too: 0.0 and -0.0 are equal as dict keys but their products keep their signs.
    chain = chains.setdefault((weight, math.copysign(1.0, weight)), [weight])
    while len(chain) <= times:
        chain.append(chain[-1] * multiplier)
    return chain[times]


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Split ``text`` into runs of equal emphasis, like A1111's ``parse_prompt_attention``.

    ``(x)`` multiplies the weight of x by 1.1, ``[x]`` by 1/1.1 and ``(x:w)`` by w; nesting multiplies.
    A bracket never closed applies to the end of the text; a closing bracket with nothing open is text.
    ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal. ``BREAK`` becomes the run ``("BREAK", -1)``.
    Adjacent runs of equal weight are merged; an empty prompt gives ``[("", 1.0)]``.
    """
    runs: list[list] = []  # [text, weight] pairs, mutable because enclosing brackets multiply them later
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply_from(start: int, multiplier: float) -> None:
        for run in runs[start:]:
            run[1] *= multiplier

    def add_text(chunk: str) -> None:
        for index, part in enumerate(_BREAK.split(chunk)):
            if index > 0:
                runs.append(["BREAK", BREAK_WEIGHT])
            runs.append([part, 1.0])

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        weight_text = match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:], 1.0])
        elif token == "(":
            open_round.append(len(runs))
        elif token == "[":
            open_square.append(len(runs))
        elif weight_text is not None and open_round:
            try:
                weight = float(weight_text)
            except ValueError:
                # "(a:1.2.3)": A1111 raises here; keeping the text literally is the kinder reading.
                add_text(token)
            else:
                multiply_from(open_round.pop(), weight)
        elif token == ")" and open_round:
            multiply_from(open_round.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            multiply_from(open_square.pop(), _SQUARE_MULTIPLIER)
        else:
            add_text(token)

    # Unclosed brackets apply to the end: A1111 multiplies by every open round bracket, then by every open
    # square one. A run after k of them is multiplied k times in a row, one multiplication at a time (float
    # products depend on the order), so the chains are computed once per starting weight and shared: a prompt
    # with thousands of unclosed brackets stays linear.
    round_chains: dict[tuple[float, float], list[float]] = {}
    square_chains: dict[tuple[float, float], list[float]] = {}
    for index, run in enumerate(runs):
        rounds = bisect.bisect_right(open_round, index)
        squares = bisect.bisect_right(open_square, index)
        if rounds:
            run[1] = _multiplied_repeatedly(run[1], _ROUND_MULTIPLIER, rounds, round_chains)
        if squares:
            run[1] = _multiplied_repeatedly(run[1], _SQUARE_MULTIPLIER, squares, square_chains)

    if not runs:
        return [("", 1.0)]

    merged: list[tuple[str, float]] = []
    group_texts = [runs[0][0]]
    group_weight = runs[0][1]
    for run_text, run_weight in runs[1:]:
        if run_weight == group_weight:
            group_texts.append(run_text)
        else:
            merged.append(("".join(group_texts), group_weight))
            group_texts = [run_text]
            group_weight = run_weight
    merged.append(("".join(group_texts), group_weight))
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation: [from:to:when], [a|b]
# ---------------------------------------------------------------------------------------------------------------
#
# A1111 reads this syntax with a Lark Earley grammar in which a prompt is a sequence of plain text, whitespace,
# emphasis "( p )", "( p : p )", "[ p ]", editing "[ p : p : N ]" / "[ p : N ]" and alternation "[ p | p | ... ]",
# and in which brackets and colons may also stand alone, but only outside every group. Any text the grammar
# cannot read (a "|" outside alternation, a backslash at the end) makes A1111 use the whole prompt unchanged.
#
# Inside a group the grammar is deterministic: what follows the first inner prompt (":", "|", "]" or ")")
# says which kind of group it is, and a bracket inside a group must open a complete group. Outside groups,
# A1111 reads a bracket as the start of a group whenever one can be completed there. (When stray brackets or
# colons follow an edit outside groups, its Earley parser can also read the edit as plain text, and which
# reading wins varies from run to run with the lark version A1111 pins; this parser always takes the edit.)
# The parser below works in one left-to-right pass with an explicit stack, so deep nesting cannot exhaust
# Python's recursion limit and a 10,000-character prompt parses in milliseconds (A1111's Earley parser takes
# minutes on such prompts).

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_SPACES = re.compile(r"\s*")
# Lark's SIGNED_NUMBER, tried in its order: an integer with exponent, a decimal with optional exponent, an integer.
_STEP_NUMBER = re.compile(
    r"[+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+)"
)


@dataclass
class _Emphasis:
    """A ``(...)``, ``(...:...)`` or ``[...]`` group: kept as text, brackets included, for :func:`parse_attention`."""

    nodes: list[_Node]


@dataclass
class _Edit:
    """``[before:after:when]``: ``before`` (``None`` when omitted) up to step ``when``, ``after`` from then on."""

    before: list[_Node] | None
    after: list[_Node]
    when_text: str
    when: int = 0


@dataclass
class _Alternation:
    """``[a|b|c]``: option (step - 1) % len(options) at each step."""

    options: list[list[_Node]]


_Node = str | _Emphasis | _Edit | _Alternation


@dataclass
class _OpenGroup:
    start: int
    bracket: str  # "[" or "("
    finished_prompts: list[list[_Node]] = field(default_factory=list)
    separators: list[str] = field(default_factory=list)
    current: list[_Node] = field(default_factory=list)
    edit: _Edit | None = None  # set when the group closed as a prompt edit


class _ScheduleParser:
    def __init__(self, text: str) -> None:
        self.text = text
        # Where a group opening at a position ends and what it reads as; None when no group can be completed
        # there. A group's reading does not depend on what encloses it, so a failed outer attempt keeps the
        # groups it completed and the next attempt reuses them: the whole parse stays linear.
        self.groups: dict[int, tuple[int, _Node] | None] = {}

    def parse(self) -> list[_Node] | None:
        text = self.text
        nodes: list[_Node] = []
        position = 0
        while position < len(text):
            plain = _PLAIN.match(text, position)
            if plain:
                nodes.append(plain.group(0))
                position = plain.end()
                continue
            char = text[position]
            if char in "[(":
                group = self._group_at(position)
                if group is not None:
                    position, group_node = group
                    nodes.append(group_node)
                    continue
                nodes.append(char)
                position += 1
            elif char in "]):":
                nodes.append(char)
                position += 1
            else:
                # A "|" outside alternation, or a backslash with nothing (or a newline) to escape.
                return None
        return nodes

    def _group_at(self, start: int) -> tuple[int, _Node] | None:
        if start not in self.groups:
            self._parse_group(start)
        return self.groups[start]

    def _parse_group(self, start: int) -> None:
        text = self.text
        stack = [_OpenGroup(start, text[start])]
        position = start + 1
        while stack:
            group = stack[-1]
            plain = _PLAIN.match(text, position)
            if plain:
                group.current.append(plain.group(0))
                position = plain.end()
                continue
            char = text[position] if position < len(text) else ""
            if char in ("[", "("):
                if position not in self.groups:
                    stack.append(_OpenGroup(position, char))
                    position += 1
                    continue
                known = self.groups[position]
                if known is None:
                    break
                position, group_node = known
                group.current.append(group_node)
                continue
            step = self._step_group(group, char, position)
            if step is None:
                break
            position, group_closed = step
            if not group_closed:
                continue
            group_node = self._group_node(group)
            stack.pop()
            self.groups[group.start] = (position, group_node)
            if stack:
                stack[-1].current.append(group_node)
        # A bracket inside a group must open a complete group, so one failure fails every enclosing group.
        for failed in stack:
            self.groups[failed.start] = None

    def _step_group(self, group: _OpenGroup, char: str, position: int) -> tuple[int, bool] | None:
        """Handle the character that ended the group's current inner prompt.

        Returns where to continue and whether the group closed there, or ``None`` when the group cannot be
        completed.
        """
        separators = group.separators
        if group.bracket == "(":
            if char == ")":
                return position + 1, True
            if char == ":" and not separators:
                self._next_prompt(group, char)
                return position + 1, False
            return None
        if char == ":" and separators in ([], [":"]):
            edit_end = self._edit_end(group, position)
            if edit_end is not None:
                return edit_end, True
            if separators:
                return None
            self._next_prompt(group, char)
            return position + 1, False
        if char == "|" and ":" not in separators:
            self._next_prompt(group, char)
            return position + 1, False
        if char == "]" and ":" not in separators:
            return position + 1, True
        return None

    def _next_prompt(self, group: _OpenGroup, separator: str) -> None:
        group.finished_prompts.append(group.current)
        group.separators.append(separator)
        group.current = []

    def _edit_end(self, group: _OpenGroup, colon: int) -> int | None:
        """If ``: N]`` follows, close the group as a prompt edit and return the position after it."""
        text = self.text
        spaces = _SPACES.match(text, colon + 1)
        assert spaces is not None  # \s* matches at every position
        number = _STEP_NUMBER.match(text, spaces.end())
        if number is None:
            return None
        spaces = _SPACES.match(text, number.end())
        assert spaces is not None
        close = spaces.end()
        if not text.startswith("]", close):
            return None
        before = group.finished_prompts[0] if group.finished_prompts else None
        group.edit = _Edit(before=before, after=group.current, when_text=number.group(0))
        return close + 1

    @staticmethod
    def _group_node(group: _OpenGroup) -> _Node:
        if group.edit is not None:
            return group.edit
        if "|" in group.separators:
            return _Alternation(options=[*group.finished_prompts, group.current])
        nodes: list[_Node] = [group.bracket]
        for inner in group.finished_prompts:
            nodes.extend(inner)
            nodes.append(":")
        nodes.extend(group.current)
        nodes.append(")" if group.bracket == "(" else "]")
        return _Emphasis(nodes)


def _walk(nodes: list[_Node]) -> Iterator[_Node]:
    """Every node, nested ones included, without recursion (nesting can be thousands deep)."""
    pending = [iter(nodes)]
    while pending:
        node = next(pending[-1], None)
        if node is None:
            pending.pop()
            continue
        yield node
        if isinstance(node, _Emphasis):
            pending.append(iter(node.nodes))
        elif isinstance(node, _Edit):
            if node.before is not None:
                pending.append(iter(node.before))
            pending.append(iter(node.after))
        elif isinstance(node, _Alternation):
            pending.extend(iter(option) for option in node.options)


def _render(nodes: list[_Node], step: int) -> str:
    pieces: list[str] = []
    pending = [iter(nodes)]
    while pending:
        node = next(pending[-1], None)
        if node is None:
            pending.pop()
        elif isinstance(node, str):
            pieces.append(node)
        elif isinstance(node, _Emphasis):
            pending.append(iter(node.nodes))
        elif isinstance(node, _Edit):
            chosen = (node.before or []) if step <= node.when else node.after
            pending.append(iter(chosen))
        else:
            pending.append(iter(node.options[(step - 1) % len(node.options)]))
    return "".join(pieces)


def _edit_step(when_text: str, steps: int, base_steps: int, hires: bool) -> int:
    when = float(when_text)
    if "." in when_text:
        # A fraction of the steps; in a hires pass A1111 counts fractions from 1.0 (the end of the first pass).
        when = (when - (1.0 if hires else 0.0)) * steps
    elif hires:
        when -= base_steps
    if when >= steps:
        return steps
    # Steps below 1 never switch; clamping keeps int() away from -inf, which A1111 would crash on.
    return int(max(when, -1.0))


def schedule_prompt(text: str, steps: int, *, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """The texts to condition on over ``steps`` sampling steps, like A1111's ``get_learned_conditioning_prompt_schedules``.

    Returns ``[(end_step, text), ...]``: ``text`` applies up to and including ``end_step``. ``[from:to:when]``
    switches after step ``when`` (a number with a ``.`` is a fraction of ``steps``), ``[to:when]`` adds,
    ``[from::when]`` removes; ``[a|b]`` alternates every step. Text that is not valid scheduling syntax is
    used unchanged at every step. With ``hires_steps``, the schedule is for the hires pass: whole numbers count
    from the end of the first pass's ``steps`` and fractions from 1.0.
    """
    if steps < 1:
        raise AtelierError(f"steps must be at least 1, got {steps}", field="steps")
    if hires_steps is not None and hires_steps < 1:
        raise AtelierError(f"hires steps must be at least 1, got {hires_steps}", field="hires_steps")
    total_steps = steps if hires_steps is None else hires_steps
    nodes = _ScheduleParser(text).parse()
    if nodes is None:
        return [(total_steps, text)]

    switch_steps = {total_steps}
    for node in _walk(nodes):
        if isinstance(node, _Edit):
            node.when = _edit_step(node.when_text, total_steps, steps, hires_steps is not None)
            if node.when >= 1:
                switch_steps.add(node.when)
        elif isinstance(node, _Alternation):
            switch_steps.update(range(1, total_steps + 1))
    return [(step, _render(nodes, step)) for step in sorted(switch_steps)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text a schedule gives at sampler step ``step``, counted from 0 the way A1111's denoiser counts.

    That is the first entry whose end step is at least ``step``; past the last one A1111 falls back to the
    first entry, and so does this.
    """
    for end_step, text in schedule:
        if step <= end_step:
            return text
    return schedule[0][1]


# ---------------------------------------------------------------------------------------------------------------
# Composable diffusion: a AND b:0.5
# ---------------------------------------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.DOTALL)


def split_and(text: str) -> list[tuple[str, float]]:
    """Split a positive prompt on the word ``AND`` into ``(text, weight)`` parts, like A1111.

    A part ending in ``:number`` has that weight (1.0 otherwise); the weight and trailing whitespace are cut
    from its text, leading whitespace is kept.
    """
    parts: list[tuple[str, float]] = []
    for part in _AND.split(text):
        match = _PART_WEIGHT.match(part)
        assert match is not None  # the pattern matches any text
        weight = match.group(2)
        parts.append((match.group(1), float(weight) if weight is not None else 1.0))
    return parts


@dataclass(frozen=True)
class ScheduledPart:
    """One AND part of a prompt with its weight and its per-step texts."""

    text: str
    weight: float
    schedule: list[tuple[int, str]]


def schedule_and_parts(text: str, steps: int, *, hires_steps: int | None = None) -> list[ScheduledPart]:
    """Split ``text`` on AND and schedule each part: what A1111 encodes for a positive prompt.

    ``text`` should already be cleaned by :func:`parse_prompt`. Each part's texts then go through
    :func:`parse_attention` and the text encoder.
    """
    return [
        ScheduledPart(
            text=part, weight=weight, schedule=schedule_prompt(part, steps, hires_steps=hires_steps)
        )
        for part, weight in split_and(text)
    ]
