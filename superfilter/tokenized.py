"""Tokenised training examples: a record → input ids and response-only labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from superfilter.data import Example
from superfilter.prompts import render

IGNORE = -100  # label of a token that carries no loss (prompt, padding)


@dataclass(frozen=True)
class Encoded:
    """One record as the model sees it; `labels[i]` is the target of position i (IGNORE on prompt tokens)."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trainable(self) -> int:
        # The first token is never predicted (nothing precedes it), so it never counts.
        return sum(label != IGNORE for label in self.labels[1:])


def add_special_tokens_for(template: str) -> bool:
    # Chat templates write BOS themselves; the plain templates rely on the tokenizer adding it (Gemma needs <bos>).
    return template != "chat"


def segment_boundaries(
    tokenizer: Any, text: str, ends: Sequence[int], add_special: bool,
) -> tuple[list[int], list[int]]:
    """Token ids of `text` and, for each character offset in `ends`, how many leading tokens lie before it.

    The prefix text[:end] is tokenised on its own: a token that merges across a boundary belongs to the later
    segment (the longest common prefix decides), so prompt tokens are exactly the tokens the prompt alone gives,
    which is also what generation sees at evaluation.
    """
    ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    counts = []
    for end in ends:
        prefix = tokenizer(text[:end], add_special_tokens=add_special)["input_ids"]
        n = 0
        for a, b in zip(prefix, ids, strict=False):
            if a != b:
                break
            n += 1
        counts.append(n)
    return ids, counts


def encode(example: Example, template: str, tokenizer: Any) -> Encoded:
    """Render with the shared template and label every token of every assistant reply (all turns)."""
    segments = render(example, template, tokenizer)
    text = "".join(s.text for s in segments)
    ends, offset = [], 0
    for s in segments:
        offset += len(s.text)
        ends.append(offset)
    ids, counts = segment_boundaries(tokenizer, text, ends[:-1], add_special_tokens_for(template))
    starts = [0, *counts]
    stops = [*counts, len(ids)]
    labels = [IGNORE] * len(ids)
    for seg, start, stop in zip(segments, starts, stops, strict=True):
        if seg.trainable:
            labels[start:stop] = ids[start:stop]
    return Encoded(example.id, tuple(ids), tuple(labels))
