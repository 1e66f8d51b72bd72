"""What every judge shares: requests, annotations and how replies are read, the cache, the backends' registry."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from eval.cache import JsonlCache
from eval.judge.kinds import judge_kind
from eval.settings import JudgeConfig
from superfilter.artifacts import canonical_json
from superfilter.errors import ConfigError, UserError

log = logging.getLogger(__name__)


class JudgeError(UserError):
    """Judge requests that could not be answered (after bounded retries), or a judge that cannot run."""


@dataclass(frozen=True)
class JudgeRequest:
    kind: str  # a registered JudgeKind (eval/judge/kinds.py)
    question: str
    answer_1: str  # shown first ("Assistant 1" / "Output (a)" / model "m" / "Assistant A")
    answer_2: str
    # Pairwise: "model_first" | "reference_first"; Arena-Hard: "baseline_first" | "model_first". Part of the cache
    # key, so that two identical answers are still judged once per order, as the protocols ask.
    order: str = ""

    def __post_init__(self) -> None:
        judge_kind(self.kind)

    def messages(self) -> tuple[str, str]:
        """(system, user) text of the judge prompt for this request."""
        return judge_kind(self.kind).messages(self.question, self.answer_1, self.answer_2)


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


def parse_reply(key: str, kind: str, raw: str, **usage: Any) -> Annotation:
    """Read a text reply with its kind's parser: two scores on the first line, an output's identifier, a verdict."""
    fields, error = judge_kind(kind).parse(raw)
    return Annotation(key, kind, raw, error=error, **fields, **usage)


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


JudgeFactory = Callable[[JudgeConfig, str], Judge]  # (config, device)
Describe = Callable[[JudgeConfig], str]


@dataclass(frozen=True)
class JudgeBackend:
    """A registered backend: how to build its judge, and how to name and describe that judge in files and reports."""

    name: str
    factory: JudgeFactory
    label: Describe | None = None  # the judge's name in file names and leaderboards; None: the backend's name
    note: Describe | None = None  # one line for reports; None: "<backend> judge"

    def judge_label(self, cfg: JudgeConfig) -> str:
        return self.label(cfg) if self.label is not None else self.name

    def describe(self, cfg: JudgeConfig) -> str:
        return self.note(cfg) if self.note is not None else f"{self.name} judge"


JUDGES: dict[str, JudgeBackend] = {}


def register_judge(name: str, *, label: Describe | None = None, note: Describe | None = None
                   ) -> Callable[[JudgeFactory], JudgeFactory]:
    """Add a backend under `name` (the value of eval.judge.backend); one module per backend registers itself."""

    def add(factory: JudgeFactory) -> JudgeFactory:
        if name in JUDGES:
            raise ValueError(f"judge backend {name!r} is registered twice")
        JUDGES[name] = JudgeBackend(name, factory, label, note)
        return factory

    return add


def judge_backend(cfg: JudgeConfig) -> JudgeBackend:
    if cfg.backend not in JUDGES:
        raise ConfigError(f"eval.judge.backend: unknown {cfg.backend!r}; choose from {sorted(JUDGES)}")
    return JUDGES[cfg.backend]


def make_judge(cfg: JudgeConfig, device: str = "cpu") -> Judge:
    return judge_backend(cfg).factory(cfg, device)


def judge_label(cfg: JudgeConfig) -> str:
    """The judge's name in file names and leaderboards: the API model, the local model's name, or the backend."""
    return judge_backend(cfg).judge_label(cfg)


def describe(cfg: JudgeConfig) -> str:
    """One line naming the judge for reports, with the caveat its results need (a small local judge's)."""
    return judge_backend(cfg).describe(cfg)
