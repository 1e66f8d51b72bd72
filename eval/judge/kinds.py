"""Judge kinds: each judging protocol as one registered object (prompts, request settings, reply parser, choices)."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.metrics.pairwise import parse_scores

PROMPT_DIR = Path(__file__).resolve().parent.parent / "judge_prompts"
SCORE_VALUES = tuple(range(1, 11))
# A preference reply names one output: "a", "(b)", "Output (a)", ...
PREFERENCE_REPLY = re.compile(r"^\W*(?:output\s*)?\(?\s*([ab])\s*\)?(?:\W|$)", re.IGNORECASE)
# alpaca_eval's model identifiers: "m" names output_1 (shown first), "M" output_2.
ALPACA_EVAL_2_TOKENS = ("m", "M")
# Arena-Hard-Auto v0.1's verdict patterns (arena-hard-v0.1.yaml) and the labels its show_result.py scores.
ARENA_HARD_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")
ARENA_HARD_VERDICTS = ("A>>B", "A>B", "A=B", "A<B", "A<<B", "B>>A", "B>A", "B=A", "B<A", "B<<A")
ARENA_HARD_LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")  # the five the official prompt offers
# Arena-Hard's judge reasons before its verdict; a small local model is asked for the verdict directly, after this.
ARENA_HARD_VERDICT_PREFIX = "My final verdict is: [["
ANSWERS = ("scores", "p_second", "verdict")  # the Annotation field a kind's reading fills

Reading = tuple[dict[str, Any], str]  # (Annotation fields, why the reply could not be read; "" when it could)
Weigh = Callable[[Any], float | None]  # first-token top log-probabilities (OpenAI's layout) → P(second output)


@dataclass(frozen=True)
class JudgeKind:
    """One judging protocol, the way alpaca_eval's annotator configs hold one: everything that differs by kind."""

    name: str
    answer: str  # the Annotation field its reading fills: scores | p_second | verdict
    prompt: str  # judge_prompts/<prompt>.txt, the user turn
    system: str  # judge_prompts/<system>.txt; "" = the prompt is an alpaca_eval chatml template holding both turns
    placeholders: tuple[str, str, str]  # the prompt's names for the question, the answer shown first, the second
    parse: Callable[[str], Reading]  # a text reply → what it says
    # What the openai backend sends beyond the configured model: the official settings where there are some.
    api: Mapping[str, Any] = field(default_factory=dict)
    weigh: Weigh | None = None  # P(second) from the first reply token's log-probabilities, when the endpoint gives them
    weigh_only: bool = False  # the text is ignored, the log-probabilities are the reading (alpaca_eval's weighted one)
    # What a reply chooses among (each score, each output's identifier, each verdict label): a local judge reads their
    # probabilities, each followed by choice_end, after reply_opening (its reply so far).
    choices: tuple[str, ...] = ()
    reply_opening: str = ""
    choice_end: str = ""
    # Where the replay judge finds replies already written: "review_logs" (the authors' pairwise logs, looked up by
    # question and answers) | "judgment_files" (arena-hard-auto's jsonl, by the exact prompt) | "" (nowhere).
    recorded_in: str = ""

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ValueError(f"judge kind {self.name!r}: answer must be one of {ANSWERS}, got {self.answer!r}")

    def messages(self, question: str, answer_1: str, answer_2: str) -> tuple[str, str]:
        """(system, user) text of the judge prompt."""
        values = dict(zip(self.placeholders, (question, answer_1, answer_2), strict=True))
        if not self.system:
            return _chatml_messages(judge_prompt(self.prompt), values)
        # str.format on the template only, as Arena-Hard's gen_judgment.py does: braces in the answers are left alone.
        return judge_prompt(self.system), judge_prompt(self.prompt).format(**values)


JUDGE_KINDS: dict[str, JudgeKind] = {}


def register_kind(kind: JudgeKind) -> JudgeKind:
    if kind.name in JUDGE_KINDS:
        raise ValueError(f"judge kind {kind.name!r} is registered twice")
    JUDGE_KINDS[kind.name] = kind
    return kind


def judge_kind(name: str) -> JudgeKind:
    if name not in JUDGE_KINDS:
        raise ValueError(f"judge request kind must be one of {tuple(JUDGE_KINDS)}, got {name!r}")
    return JUDGE_KINDS[name]


@functools.cache
def judge_prompt(name: str) -> str:
    return (PROMPT_DIR / f"{name}.txt").read_text().strip()


def _chatml_messages(template: str, values: dict[str, str]) -> tuple[str, str]:
    """Fill an alpaca_eval prompt template and split it into (system, user) exactly as alpaca_eval does: each
    placeholder's first occurrence replaced in turn (utils.make_prompts), then utils.prompt_to_chatml."""
    for name in dict.fromkeys(re.findall(r"{([^ \s]+?)}", template)):
        template = template.replace("{" + name + "}", values[name], 1)
    turns = {}
    for part in template.strip().split("<|im_start|>")[1:]:
        role, content = part.split("\n", 1)
        turns[role.strip()] = content.split("<|im_end|>", 1)[0].strip()
    return turns["system"], turns["user"]


def _first_line(raw: str) -> str:
    return raw.split("\n", 1)[0].strip()


def _read_scores(raw: str) -> Reading:
    scores = parse_scores(raw)
    if scores is None:
        return {}, f"first line is not two scores: {_first_line(raw)[:80]!r}"
    return {"scores": list(scores)}, ""


def _read_preference(raw: str) -> Reading:
    match = PREFERENCE_REPLY.match(_first_line(raw))
    if match is None:
        return {}, f"reply names neither a nor b: {_first_line(raw)[:80]!r}"
    return {"p_second": 1.0 if match.group(1).lower() == "b" else 0.0}, ""


def _read_alpaca_eval_2(raw: str) -> Reading:
    token = raw.strip()
    if token not in ALPACA_EVAL_2_TOKENS:
        return {}, f"reply is neither m nor M: {_first_line(raw)[:80]!r}"
    return {"p_second": float(token == ALPACA_EVAL_2_TOKENS[1])}, ""


def _read_arena_hard(raw: str) -> Reading:
    verdict = arena_hard_verdict(raw)
    if verdict not in ARENA_HARD_VERDICTS:
        return {}, "no [[verdict]] label" if verdict is None else f"verdict {verdict!r} is not a known label"
    return {"verdict": verdict}, ""


def arena_hard_verdict(judgment: str, patterns: Sequence[str] = ARENA_HARD_PATTERNS) -> str | None:
    """The last verdict of the first pattern that matches the upper-cased judgment [gen_judgment.py's get_score]."""
    for pattern in patterns:
        matches = [m for m in re.findall(pattern, judgment.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


def _top_logprobs(logprobs: Any) -> list[Any]:
    """The first reply token's top log-probabilities; raises KeyError, IndexError or TypeError when absent."""
    return logprobs["content"][0]["top_logprobs"]


def preference_weight(logprobs: Any) -> float | None:
    """P(b) / (P(a) + P(b)) from the first reply token's top log-probabilities, when the endpoint gave them."""
    try:
        top = _top_logprobs(logprobs)
    except (TypeError, KeyError, IndexError):
        return None
    mass = {"a": 0.0, "b": 0.0}
    for entry in top:
        token = str(entry.get("token", "")).strip().strip("()").lower()
        if token in mass:
            mass[token] += math.exp(float(entry["logprob"]))
    total = mass["a"] + mass["b"]
    return mass["b"] / total if total > 0 else None


def alpaca_eval_2_preference(logprobs: Any) -> float | None:
    """P(M) / (P(m) + P(M)) from the first token's top log-probabilities: alpaca_eval's logprob_parser (numerator
    "m", denominators "m" and "M", a token absent from the top 5 has probability 0), as 1 - (2 - preference)."""
    try:
        found = {t["token"]: float(t["logprob"]) for t in _top_logprobs(logprobs) if t["token"] in ALPACA_EVAL_2_TOKENS}
    except (TypeError, KeyError, IndexError, ValueError):
        return None
    if not found:
        return None
    p_first, p_second = (math.exp(found.get(t, -math.inf)) for t in ALPACA_EVAL_2_TOKENS)
    return p_second / (p_first + p_second)


# Two 1-10 scores, one per answer, on the reply's first line: the paper's pairwise protocol (Vicuna's prompt).
register_kind(JudgeKind(
    "scores", answer="scores", prompt="pairwise", system="pairwise_system",
    placeholders=("question", "answer_1", "answer_2"), parse=_read_scores,
    choices=tuple(str(v) for v in SCORE_VALUES), recorded_in="review_logs",
))
# Which of two outputs is better, a or b: the AlpacaEval 1 protocol.
register_kind(JudgeKind(
    "preference", answer="p_second", prompt="preference", system="preference_system",
    placeholders=("question", "answer_1", "answer_2"), parse=_read_preference,
    api={"max_tokens": 8, "logprobs": True, "top_logprobs": 5}, weigh=preference_weight, choices=("a", "b"),
))
# weighted_alpaca_eval_gpt4_turbo: its prompt, and (configs.yaml) one token, its top-5 log-probabilities, temperature 1.
register_kind(JudgeKind(
    "alpaca_eval_2", answer="p_second", prompt="alpaca_eval_2", system="",
    placeholders=("instruction", "output_1", "output_2"), parse=_read_alpaca_eval_2,
    api={"max_tokens": 1, "temperature": 1.0, "logprobs": True, "top_logprobs": 5},
    weigh=alpaca_eval_2_preference, weigh_only=True, choices=ALPACA_EVAL_2_TOKENS,
))
# Arena-Hard-Auto v0.1 (arena-hard-v0.1.yaml): temperature 0, up to 4096 tokens, as the judge writes its own answer
# before the verdict label.
register_kind(JudgeKind(
    "arena_hard", answer="verdict", prompt="arena_hard", system="arena_hard_system",
    placeholders=("QUESTION", "ANSWER_A", "ANSWER_B"), parse=_read_arena_hard,
    api={"max_tokens": 4096, "temperature": 0.0}, choices=ARENA_HARD_LABELS,
    reply_opening=ARENA_HARD_VERDICT_PREFIX, choice_end="]]", recorded_in="judgment_files",
))
