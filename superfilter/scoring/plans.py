"""Token plans: which ids each pass of a record sees and which of them carry a loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from superfilter.data import Example, is_blank
from superfilter.errors import UserError
from superfilter.prompts import scoring_prompt
from superfilter.scoring.config import ScoreConfig


@dataclass(frozen=True)
class Pass:
    """One forward pass: `ids`, and the first target position; ids[start:] are scored, each given what precedes."""

    ids: tuple[int, ...]
    start: int

    @property
    def n_targets(self) -> int:
        return max(0, len(self.ids) - self.start)


@dataclass(frozen=True)
class TurnPlan:
    n_prompt_tokens: int  # tokens before the first response token of the conditioned pass, BOS included
    conditioned: Pass
    direct: Pass
    skip_reason: str  # "" when both passes have targets


@dataclass(frozen=True)
class TurnText:
    prompt: str  # the conditioning text x; the conditioned text is prompt + output
    prefix: str  # the response-only pass reads prefix + output ("" for Superfiltering)
    output: str
    lead: tuple[int, ...]  # ids before the text in both passes (the tokenizer's BOS)


@dataclass(frozen=True)
class Tokenization:
    """How the tokenizer wraps a text in special tokens, found by probing it once."""

    lead: tuple[int, ...]
    tail: tuple[int, ...]
    bos_text: str
    bos_id: int | None


def probe_tokenization(tokenizer: Any) -> Tokenization:
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return Tokenization(tuple(full[:i]), tuple(full[i + len(bare):]), tokenizer.bos_token or "",
                                tokenizer.bos_token_id)
    raise UserError(f"{type(tokenizer).__name__}: cannot find a text's tokens among the special tokens it adds")


def record_turns(example: Example, cfg: ScoreConfig, tokenizer: Any, tokenization: Tokenization) -> list[TurnText]:
    """The turns to score: the last reply (given the full history), or every reply with turns=each."""
    if cfg.turns == "each" and example.history:
        parts = [Example(example.id, u, "", a, example.history[:i], example.system)
                 for i, (u, a) in enumerate(example.history)] + [example]
    else:
        parts = [example]
    texts = []
    for part in parts:
        prompt, prefix = scoring_prompt(part, cfg.prompt, tokenizer)
        lead = tokenization.lead
        # Chat templates that write BOS themselves (Gemma) would get a second one from the tokenizer; the BOS
        # becomes an id in both passes instead, so the response-only pass starts the same way.
        if cfg.prompt == "chat" and tokenization.bos_text and prompt.startswith(tokenization.bos_text):
            prompt = prompt[len(tokenization.bos_text):]
            lead = lead or ((tokenization.bos_id,) if tokenization.bos_id is not None else ())
        texts.append(TurnText(prompt, prefix, part.output, lead))
    return texts


def _truncate(content: Sequence[int], lead: Sequence[int], tail: Sequence[int], max_length: int) -> tuple[int, ...]:
    # What `tokenizer.encode(text, truncation=True, max_length=m)` returns: content cut so specials still fit.
    keep = max(0, max_length - len(lead) - len(tail))
    return (*lead, *content[:keep], *tail)


def _direct_length(max_length: int, n_prompt: int, n_direct_prefix: int) -> int:
    # The authors truncate the response-only text to max_length − len(prompt) + 1 [Superfiltering code], so both
    # passes score about the same response tokens; with a direct prefix (Cherry) the prefix's length replaces 1.
    return max_length - min(n_prompt, max_length) + max(n_direct_prefix, 1)


def plan_turn(text: TurnText, encoded: dict[str, list[int]], cfg: ScoreConfig, tail: Sequence[int]) -> TurnPlan:
    """Both passes of one turn under cfg.boundary, and why it cannot be scored (if so)."""
    max_length, lead = cfg.max_length, text.lead
    if cfg.boundary == "reference":
        # The authors' rule: encode the whole text, mask len(encode(text[:text.rfind(output)])) leading labels.
        # rfind of a suffix always lands at len(prompt), so that prefix is the prompt.
        n_prompt = len(lead) + len(encoded[text.prompt]) + len(tail)
        conditioned = Pass(_truncate(encoded[text.prompt + text.output], lead, tail, max_length), max(n_prompt, 1))
        n_prompt_truncated = len(_truncate(encoded[text.prompt], lead, tail, max_length))
        n_direct_prefix = len(lead) + len(encoded[text.prefix]) + len(tail) if text.prefix else 0
        direct_content = encoded[text.prefix + text.output]
        direct_ids = _truncate(direct_content, lead, tail, _direct_length(max_length, n_prompt_truncated,
                                                                          n_direct_prefix))
        n_direct_full = len(lead) + len(direct_content) + len(tail)
    else:
        prompt_ids, output_ids, prefix_ids = encoded[text.prompt], encoded[text.output], encoded[text.prefix]
        n_prompt = len(lead) + len(prompt_ids)
        conditioned = Pass((*lead, *prompt_ids, *output_ids)[:max_length], max(n_prompt, 1))
        n_direct_prefix = len(lead) + len(prefix_ids)
        direct_full = (*lead, *prefix_ids, *output_ids)
        direct_ids = direct_full[:_direct_length(max_length, n_prompt, n_direct_prefix)]
        n_direct_full = len(direct_full)
    direct = Pass(direct_ids, max(n_direct_prefix, 1))
    return TurnPlan(n_prompt, conditioned, direct, _skip_reason(text, n_prompt, conditioned, direct, n_direct_full,
                                                                max_length))


def _skip_reason(text: TurnText, n_prompt: int, conditioned: Pass, direct: Pass, n_direct_full: int,
                 max_length: int) -> str:
    if is_blank(text.output):
        return "empty_response"
    if n_prompt > max_length:
        return "prompt_too_long"
    if conditioned.n_targets == 0:
        return "response_truncated"
    if direct.n_targets == 0:
        return "response_truncated" if n_direct_full > len(direct.ids) else "response_too_short"
    return ""


def texts_to_encode(text: TurnText, boundary: str) -> list[str]:
    if boundary == "reference":
        return [text.prompt, text.prompt + text.output, text.prefix, text.prefix + text.output]
    return [text.prompt, text.output, text.prefix]


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> dict[str, list[int]]:
    unique = list(dict.fromkeys(texts))
    # verbose=False: long records are truncated by the plan, the "longer than the model" warning is noise here.
    ids = tokenizer(unique, add_special_tokens=False, verbose=False)["input_ids"] if unique else []
    return dict(zip(unique, ids, strict=True))


def plan_records(examples: Sequence[Example], cfg: ScoreConfig, tokenizer: Any,
                 tokenization: Tokenization) -> list[list[TurnPlan]]:
    """Per record, the plan of each turn it scores."""
    turns = [record_turns(ex, cfg, tokenizer, tokenization) for ex in examples]
    encoded = encode_texts(tokenizer, [s for record in turns for t in record for s in texts_to_encode(t, cfg.boundary)])
    return [[plan_turn(t, encoded, cfg, tokenization.tail) for t in record] for record in turns]
