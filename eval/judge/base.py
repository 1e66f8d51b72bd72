"""What every judge shares: requests and prompts, annotations and how replies are read, the cache, the registry."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from eval.cache import JsonlCache
from eval.metrics.pairwise import parse_scores
from eval.settings import JudgeConfig
from superfilter.artifacts import canonical_json
from superfilter.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# scores: two 1-10 scores (pairwise) | preference: which of two outputs is better, a or b (AlpacaEval 1 protocol) |
# alpaca_eval_2: the weighted_alpaca_eval_gpt4_turbo prompt, m or M | arena_hard: Arena-Hard-Auto's verdict label.
KINDS = ("scores", "preference", "alpaca_eval_2", "arena_hard")
PROMPT_DIR = Path(__file__).resolve().parent.parent / "judge_prompts"
# A preference reply names one output: "a", "(b)", "Output (a)", ...
PREFERENCE_REPLY = re.compile(r"^\W*(?:output\s*)?\(?\s*([ab])\s*\)?(?:\W|$)", re.IGNORECASE)
# alpaca_eval's model identifiers: "m" names output_1 (shown first), "M" output_2.
ALPACA_EVAL_2_TOKENS = ("m", "M")
# Arena-Hard-Auto v0.1's verdict patterns (arena-hard-v0.1.yaml) and the labels its show_result.py scores.
ARENA_HARD_PATTERNS = (r"\[\[([AB<>=]+)\]\]", r"\[([AB<>=]+)\]")
ARENA_HARD_VERDICTS = ("A>>B", "A>B", "A=B", "A<B", "A<<B", "B>>A", "B>A", "B=A", "B<A", "B<<A")
# What the openai backend sends for each kind beyond the configured model: the official settings where there are some.
KIND_API: dict[str, dict[str, Any]] = {
    "scores": {},
    "preference": {"max_tokens": 8, "logprobs": True, "top_logprobs": 5},
    # weighted_alpaca_eval_gpt4_turbo/configs.yaml: one token, its top-5 log-probabilities, temperature 1.
    "alpaca_eval_2": {"max_tokens": 1, "temperature": 1.0, "logprobs": True, "top_logprobs": 5},
    # arena-hard-v0.1.yaml: temperature 0, up to 4096 tokens (the judge writes its own answer before the verdict).
    "arena_hard": {"max_tokens": 4096, "temperature": 0.0},
}
SMALL_JUDGE_NOTE = (
    "judged by a small local model, not GPT-4: a smoke test of the protocol, not comparable to the paper's numbers"
)


class JudgeError(UserError):
    """Judge requests that could not be answered (after bounded retries), or a judge that cannot run."""


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


@dataclass(frozen=True)
class JudgeRequest:
    kind: str
    question: str
    answer_1: str  # shown first ("Assistant 1" / "Output (a)" / model "m" / "Assistant A")
    answer_2: str
    # Pairwise: "model_first" | "reference_first"; Arena-Hard: "baseline_first" | "model_first". Part of the cache
    # key, so that two identical answers are still judged once per order, as the protocols ask.
    order: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"judge request kind must be one of {KINDS}, got {self.kind!r}")

    def messages(self) -> tuple[str, str]:
        """(system, user) text of the judge prompt for this request."""
        if self.kind == "alpaca_eval_2":
            return _chatml_messages(judge_prompt("alpaca_eval_2"), {
                "instruction": self.question, "output_1": self.answer_1, "output_2": self.answer_2})
        if self.kind == "arena_hard":
            # str.format on the template only, as gen_judgment.py does: braces inside the answers are left alone.
            user = judge_prompt("arena_hard").format(QUESTION=self.question, ANSWER_A=self.answer_1,
                                                     ANSWER_B=self.answer_2)
            return judge_prompt("arena_hard_system"), user
        template = "pairwise" if self.kind == "scores" else "preference"
        user = judge_prompt(template).format(question=self.question, answer_1=self.answer_1, answer_2=self.answer_2)
        return judge_prompt(f"{template}_system"), user


@dataclass
class Annotation:
    key: str
    kind: str
    raw: str  # the judge's reply (hf: the expected scores it computed, then the distributions)
    scores: list[float] | None = None  # kind=scores: [first answer, second answer]
    p_second: float | None = None  # kind=preference/alpaca_eval_2: probability that the second output is better
    verdict: str | None = None  # kind=arena_hard: the label, e.g. "A>>B"
    error: str = ""  # why the reply could not be read; such a review is counted and reported, never a tie
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


def arena_hard_verdict(judgment: str, patterns: Sequence[str] = ARENA_HARD_PATTERNS) -> str | None:
    """The last verdict of the first pattern that matches the upper-cased judgment [gen_judgment.py's get_score]."""
    for pattern in patterns:
        matches = [m for m in re.findall(pattern, judgment.upper()) if m != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


def parse_reply(key: str, kind: str, raw: str, **usage: Any) -> Annotation:
    """Read a text reply: two scores on the first line, the letter (identifier) of the better output, or a verdict."""
    first_line = raw.split("\n", 1)[0].strip()
    if kind == "scores":
        scores = parse_scores(raw)
        if scores is None:
            return Annotation(key, kind, raw, error=f"first line is not two scores: {first_line[:80]!r}", **usage)
        return Annotation(key, kind, raw, scores=list(scores), **usage)
    if kind == "arena_hard":
        verdict = arena_hard_verdict(raw)
        if verdict not in ARENA_HARD_VERDICTS:
            reason = "no [[verdict]] label" if verdict is None else f"verdict {verdict!r} is not a known label"
            return Annotation(key, kind, raw, error=reason, **usage)
        return Annotation(key, kind, raw, verdict=verdict, **usage)
    if kind == "alpaca_eval_2":
        token = raw.strip()
        if token not in ALPACA_EVAL_2_TOKENS:
            return Annotation(key, kind, raw, error=f"reply is neither m nor M: {first_line[:80]!r}", **usage)
        return Annotation(key, kind, raw, p_second=float(token == "M"), **usage)
    match = PREFERENCE_REPLY.match(first_line)
    if match is None:
        return Annotation(key, kind, raw, error=f"reply names neither a nor b: {first_line[:80]!r}", **usage)
    return Annotation(key, kind, raw, p_second=1.0 if match.group(1).lower() == "b" else 0.0, **usage)


OnResult = Callable[[int, Annotation], None]


class Judge(Protocol):
    name: str

    def identity(self) -> dict[str, Any]:
        """Everything that changes this judge's replies; part of every annotation's cache key."""
        ...

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        """Call on_result(i, annotation) once per request, as soon as each is known."""
        ...

    def stats(self) -> dict[str, Any]: ...


def annotation_key(judge: Judge, request: JudgeRequest) -> str:
    system, user = request.messages()
    payload = {"judge": judge.identity(), "kind": request.kind, "order": request.order, "system": system,
               "user": user}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class AnnotationCache:
    """Annotations by key, appended to a .jsonl file as they arrive, so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        self.store = JsonlCache(path)
        self.path = self.store.path

    def get(self, key: str) -> Annotation | None:
        record = self.store.get(key)
        return Annotation(**record) if record is not None else None

    def put(self, annotation: Annotation) -> None:
        self.store.put(asdict(annotation))

    def __len__(self) -> int:
        return len(self.store)


def judge_all(judge: Judge, requests: Sequence[JudgeRequest], caches: Sequence[AnnotationCache]
              ) -> tuple[list[Annotation], dict[str, Any]]:
    """Annotations for every request, in order: cached ones are reused, only the others are asked."""
    keys = [annotation_key(judge, r) for r in requests]
    found: dict[int, Annotation] = {}
    for i, key in enumerate(keys):
        hit = next((a for c in caches if (a := c.get(key)) is not None), None)
        if hit is not None:
            found[i] = hit
            for cache in caches:
                cache.put(hit)
    missing = [i for i in range(len(requests)) if i not in found]
    # The same request twice (e.g. an answer pair repeated) is asked once.
    unique: dict[str, int] = {}
    for i in missing:
        unique.setdefault(keys[i], i)
    todo = list(unique.values())

    def on_result(j: int, annotation: Annotation) -> None:
        for cache in caches:
            cache.put(annotation)
        found[todo[j]] = annotation

    if todo:
        log.info("judge %s: %d annotations cached, %d to ask", judge.name, len(requests) - len(missing), len(todo))
        judge.annotate([requests[i] for i in todo], [keys[i] for i in todo], on_result)
    for i in missing:
        source = unique[keys[i]]
        if source not in found:
            raise JudgeError(f"the {judge.name} judge returned no annotation for request {keys[i][:12]}")
        found[i] = found[source]
    annotations = [found[i] for i in range(len(requests))]
    new = [found[i] for i in todo]
    summary = {
        "backend": judge.name, "judge": judge.identity(), "requests": len(requests),
        "cached": len(requests) - len(missing), "asked": len(todo),
        "unparseable": sum(not a.ok for a in annotations),
        "prompt_tokens": sum(a.prompt_tokens for a in new), "completion_tokens": sum(a.completion_tokens for a in new),
        "cost_usd": round(sum(a.cost_usd for a in new), 6), **judge.stats(),
    }
    return annotations, summary


def judge_label(cfg: JudgeConfig) -> str:
    """The judge's name in file names and leaderboards: the API model, the local model's name, or the backend."""
    return {"openai": cfg.api_model, "hf": cfg.model.name}.get(cfg.backend, cfg.backend)


JudgeFactory = Callable[[JudgeConfig, str], Judge]  # (config, device)
JUDGES: dict[str, JudgeFactory] = {}


def register_judge(name: str) -> Callable[[JudgeFactory], JudgeFactory]:
    """Add a backend under `name` (the value of eval.judge.backend); one module per backend registers itself."""

    def add(factory: JudgeFactory) -> JudgeFactory:
        if name in JUDGES:
            raise ValueError(f"judge backend {name!r} is registered twice")
        JUDGES[name] = factory
        return factory

    return add


def make_judge(cfg: JudgeConfig, device: str = "cpu") -> Judge:
    if cfg.backend not in JUDGES:
        raise ConfigError(f"eval.judge.backend: unknown {cfg.backend!r}; choose from {sorted(JUDGES)}")
    return JUDGES[cfg.backend](cfg, device)
