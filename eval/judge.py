"""Judges of answer pairs (openai | hf | replay | fake) behind one interface, with a content-hashed annotation cache."""

from __future__ import annotations

import asyncio
import copy
import functools
import hashlib
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from eval.cache import JsonlCache
from eval.config import JudgeConfig
from eval.lm import forward_tail
from eval.pairwise import PROMPT_FIELDS, parse_scores
from superfilter.artifacts import canonical_json
from superfilter.errors import ConfigError, DataError, UserError

log = logging.getLogger(__name__)

KINDS = ("scores", "preference")  # two 1-10 scores (pairwise) | which of two outputs is better (AlpacaEval)
PROMPT_DIR = Path(__file__).resolve().parent / "judge_prompts"
SCORE_VALUES = tuple(range(1, 11))
# A preference reply names one output: "a", "(b)", "Output (a)", ...
PREFERENCE_REPLY = re.compile(r"^\W*(?:output\s*)?\(?\s*([ab])\s*\)?(?:\W|$)", re.IGNORECASE)
SMALL_JUDGE_NOTE = (
    "judged by a small local model, not GPT-4: a smoke test of the protocol, not comparable to the paper's numbers"
)


class JudgeError(UserError):
    """Judge requests that could not be answered (after bounded retries), or a judge that cannot run."""


@functools.cache
def judge_prompt(name: str) -> str:
    return (PROMPT_DIR / f"{name}.txt").read_text().strip()


@dataclass(frozen=True)
class JudgeRequest:
    kind: str
    question: str
    answer_1: str  # shown first ("Assistant 1" / "Output (a)")
    answer_2: str
    # Pairwise: "model_first" | "reference_first". Part of the cache key, so that two identical answers are
    # still judged once per order, as the protocol asks.
    order: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"judge request kind must be one of {KINDS}, got {self.kind!r}")

    def messages(self) -> tuple[str, str]:
        """(system, user) text of the judge prompt for this request."""
        template = "pairwise" if self.kind == "scores" else "preference"
        user = judge_prompt(template).format(question=self.question, answer_1=self.answer_1, answer_2=self.answer_2)
        return judge_prompt(f"{template}_system"), user


@dataclass
class Annotation:
    key: str
    kind: str
    raw: str  # the judge's reply (hf: the expected scores it computed, then the distributions)
    scores: list[float] | None = None  # kind=scores: [first answer, second answer]
    p_second: float | None = None  # kind=preference: probability that the second output is better
    error: str = ""  # why the reply could not be read; such a review is counted and reported, never a tie
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error


def parse_reply(key: str, kind: str, raw: str, **usage: Any) -> Annotation:
    """Read a text reply: two scores on the first line, or the letter of the better output."""
    first_line = raw.split("\n", 1)[0].strip()
    if kind == "scores":
        scores = parse_scores(raw)
        if scores is None:
            return Annotation(key, kind, raw, error=f"first line is not two scores: {first_line[:80]!r}", **usage)
        return Annotation(key, kind, raw, scores=list(scores), **usage)
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


# ---------------------------------------------------------------------------------------------------------------------
# Annotation cache: one JSON line per annotation, appended as it arrives, so a crash loses nothing.


class AnnotationCache:
    """Annotations by key, appended to a .jsonl file as they arrive."""

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


# ---------------------------------------------------------------------------------------------------------------------
# fake: deterministic, for tests. Replies are text, read by the same parser as a real judge's.


def length_reply(request: JudgeRequest) -> str:
    """Prefers the longer answer: a stand-in with a known, checkable behaviour."""
    if request.kind == "preference":
        return "b" if len(request.answer_2) > len(request.answer_1) else "a"
    score = [min(10, 1 + len(a.split()) // 10) for a in (request.answer_1, request.answer_2)]
    return f"{score[0]} {score[1]}\nlonger answers score higher"


class FakeJudge:
    name = "fake"

    def __init__(self, reply: Callable[[JudgeRequest], str] = length_reply) -> None:
        self.reply = reply

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "reply": getattr(self.reply, "__name__", "custom")}

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
            on_result(i, parse_reply(key, request.kind, self.reply(request)))

    def stats(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------------------------------
# replay: reviews from logs in the authors' format, looked up by the answer pair in the order shown.


def _replay_key(*texts: str) -> str:
    return hashlib.sha256(canonical_json([t.strip() for t in texts]).encode()).hexdigest()


class ReplayJudge:
    """Looks a review up by (question, answers in the order shown, order); by the answers and order alone when the
    question is worded differently (e.g. without its input) and that is unambiguous. Answer1 is the model."""

    name = "replay"

    def __init__(self, files: Sequence[str | Path]) -> None:
        self.files = [Path(f) for f in files]
        self.by_question: dict[str, str] = {}
        self.by_pair: dict[str, set[str]] = {}
        for path in self.files:
            try:
                records = json.loads(path.read_text())["data"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}: not a review log in the authors' format ({e})") from e
            for i, r in enumerate(records):
                question = next((r[f] for f in PROMPT_FIELDS.values() if isinstance(r.get(f), str)), "")
                try:
                    shown = [(r["Answer1"], r["Answer2"], "model_first", r["review"]),
                             (r["Answer2"], r["Answer1"], "reference_first", r["review_reverse"])]
                except KeyError as e:
                    raise DataError(f"{path}: record {i} lacks the field {e}") from e
                for first, second, order, review in shown:
                    self.by_question[_replay_key(question, first, second, order)] = review
                    self.by_pair.setdefault(_replay_key(first, second, order), set()).add(review)
        self._identity = {"backend": "replay",
                          "logs": sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in self.files)}

    def identity(self) -> dict[str, Any]:
        return self._identity

    def review(self, request: JudgeRequest) -> str | None:
        found = self.by_question.get(_replay_key(request.question, request.answer_1, request.answer_2, request.order))
        if found is not None:
            return found
        candidates = self.by_pair.get(_replay_key(request.answer_1, request.answer_2, request.order), set())
        return next(iter(candidates)) if len(candidates) == 1 else None

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        if any(r.kind != "scores" for r in requests):
            raise ConfigError("eval.judge.backend=replay reads pairwise score reviews only; not for alpaca_eval")
        reviews = [self.review(r) for r in requests]
        absent = [r for r, review in zip(requests, reviews, strict=True) if review is None]
        if absent:
            raise JudgeError(f"{len(absent)} request(s) have no (unambiguous) review in "
                             f"{[str(f) for f in self.files]}; first question: {absent[0].question[:80]!r}")
        for i, (review, key) in enumerate(zip(reviews, keys, strict=True)):
            on_result(i, parse_reply(key, "scores", review))

    def stats(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------------------------------------------------------------
# openai: any OpenAI-compatible chat-completions endpoint, with bounded retries and token/cost accounting.

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_BACKOFF_S = 60.0


class _GaveUp(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OpenAIJudge:
    name = "openai"

    def __init__(self, cfg: JudgeConfig, concurrency: int = 8, backoff_s: float = 1.0) -> None:
        self.cfg = cfg
        self.concurrency = concurrency
        self.backoff_s = backoff_s
        self.retries: Counter[str] = Counter()
        self.http_requests = 0
        self.failed = 0
        self.api_key = os.environ.get(cfg.api_key_env, "")
        if not self.api_key and "api.openai.com" in cfg.base_url:
            raise ConfigError(f"eval.judge.backend=openai: set the environment variable {cfg.api_key_env} "
                              "(or point eval.judge.api_key_env at the variable holding your key)")

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.cfg.api_model, "base_url": self.cfg.base_url.rstrip("/"),
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def stats(self) -> dict[str, Any]:
        return {"http_requests": self.http_requests, "retries": dict(self.retries),
                "retries_total": sum(self.retries.values()), "failed": self.failed,
                "max_retries": self.cfg.max_retries, "api_model": self.cfg.api_model}

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        failures = asyncio.run(self._annotate(requests, keys, on_result))
        if failures:
            self.failed = len(failures)
            reasons = Counter(failures)
            raise JudgeError(
                f"{len(failures)} of {len(requests)} judge requests failed after {self.cfg.max_retries} retries "
                f"({dict(reasons)}); the others are cached, a rerun asks only these"
            )

    async def _annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult
                        ) -> list[str]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limit = asyncio.Semaphore(self.concurrency)
        failures: list[str] = []
        async with httpx.AsyncClient(base_url=self.cfg.base_url.rstrip("/"), headers=headers,
                                     timeout=self.cfg.timeout_s) as client:

            async def one(i: int) -> None:
                async with limit:
                    try:
                        payload = await self._post(client, self._body(requests[i]))
                    except _GaveUp as e:
                        failures.append(e.reason)
                        return
                on_result(i, self._annotation(keys[i], requests[i].kind, payload))

            await asyncio.gather(*(one(i) for i in range(len(requests))))
        return failures

    def _body(self, request: JudgeRequest) -> dict[str, Any]:
        system, user = request.messages()
        body: dict[str, Any] = {
            "model": self.cfg.api_model, "temperature": self.cfg.temperature,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": self.cfg.max_tokens,
        }
        if request.kind == "preference":
            # AlpacaEval 2 weighs the preference by the verdict token's probability; a short reply suffices.
            body.update(max_tokens=8, logprobs=True, top_logprobs=5)
        return body

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(self.cfg.max_retries + 1):
            retry_after = 0.0
            self.http_requests += 1
            try:
                response = await client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                reason = "timeout"
            except httpx.TransportError as e:
                reason = f"transport:{type(e).__name__}"
            else:
                status = response.status_code
                if status in RETRY_STATUS or status >= 500:
                    reason = f"http_{status}"
                    retry_after = _retry_after(response.headers.get("retry-after"))
                elif status >= 400:
                    raise JudgeError(f"judge endpoint {self.cfg.base_url} answered HTTP {status}: "
                                     f"{response.text[:300]}")
                else:
                    try:
                        payload = response.json()
                        payload["choices"][0]["message"]["content"].strip()
                        return payload
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        reason = "malformed_body"
            self.retries[reason] += 1
            if attempt == self.cfg.max_retries:
                raise _GaveUp(reason)
            await asyncio.sleep(min(MAX_BACKOFF_S, max(retry_after, self.backoff_s * 2**attempt)))
        raise AssertionError("unreachable")

    def _annotation(self, key: str, kind: str, payload: dict[str, Any]) -> Annotation:
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = (prompt_tokens * self.cfg.usd_per_1k_prompt_tokens
                + completion_tokens * self.cfg.usd_per_1k_completion_tokens) / 1000
        choice = payload["choices"][0]
        annotation = parse_reply(key, kind, choice["message"]["content"], prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens, cost_usd=cost)
        if kind == "preference":
            weighted = _weighted_preference(choice.get("logprobs"))
            if weighted is not None:
                annotation = replace(annotation, p_second=weighted, error="")
        return annotation


def _retry_after(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _weighted_preference(logprobs: Any) -> float | None:
    """P(b) / (P(a) + P(b)) from the first reply token's top log-probabilities, when the endpoint gave them."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (TypeError, KeyError, IndexError):
        return None
    mass = {"a": 0.0, "b": 0.0}
    for entry in top:
        token = str(entry.get("token", "")).strip().strip("()").lower()
        if token in mass:
            mass[token] += math.exp(float(entry["logprob"]))
    total = mass["a"] + mass["b"]
    return mass["b"] / total if total > 0 else None


# ---------------------------------------------------------------------------------------------------------------------
# hf: a local causal LM. Scores are expected values over the score tokens' probabilities, so nothing fails to parse.


@dataclass
class _Trie:
    """Next-token distributions needed to score a set of candidate continuations exactly."""

    candidates: list[tuple[int, ...]]
    nodes: list[tuple[int, ...]] = field(init=False)  # proper prefixes of candidates, where a distribution is read
    runs: list[tuple[int, ...]] = field(init=False)  # token chains whose forward pass yields all those distributions

    def __post_init__(self) -> None:
        nodes = {c[:i] for c in self.candidates for i in range(len(c))}
        self.nodes = sorted(nodes, key=len)
        self.runs = [n for n in self.nodes if not any(m != n and m[: len(n)] == n for m in self.nodes)]

    def log_probs(self, dists: dict[tuple[int, ...], Any]) -> list[float]:
        """log P(candidate, then something that is not a longer candidate) for each candidate."""
        out = []
        for c in self.candidates:
            lp = sum(float(dists[c[:i]][c[i]]) for i in range(len(c)))
            if c in dists:  # c is itself a prefix of longer candidates: they must not continue it
                children = {m[len(c)] for m in self.candidates if len(m) > len(c) and m[: len(c)] == c}
                cont = sum(math.exp(float(dists[c][t])) for t in children)
                lp += math.log(max(1.0 - cont, 1e-12))
            out.append(lp)
        return out


class HFJudge:
    """One request at a time: the prompt runs once, and every score or verdict token is read from its cached
    keys/values (a CPU gains nothing from batching, and the second score needs the first one's text)."""

    name = "hf"

    def __init__(self, cfg: JudgeConfig, device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = device
        self.model: Any = None
        self.tokenizer: Any = None
        self.truncated = 0
        model = {k: v for k, v in asdict(cfg.model).items() if k not in ("name", "attn_implementation")}
        self._identity = {"backend": "hf", "method": "expected-score-v1", "max_judge_tokens": cfg.max_judge_tokens,
                          "model": model}

    def identity(self) -> dict[str, Any]:
        return self._identity

    def stats(self) -> dict[str, Any]:
        return {"judge_model": self.cfg.model.name, "truncated_prompts": self.truncated}

    def _load(self) -> None:
        if self.model is None:
            from superfilter.models import load_model

            self.model, self.tokenizer = load_model(self.cfg.model, self.device)

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        import torch

        self._load()
        with torch.inference_mode():
            for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
                on_result(i, self._annotate_one(request, key))

    def _annotate_one(self, request: JudgeRequest, key: str) -> Annotation:
        prefix = self._prefix(self._fit(request))
        ids = self._encode(prefix)
        root, cache = forward_tail(self.model, [ids])
        if request.kind == "preference":
            p = self._candidate_probs(prefix, ids, root[0, -1], cache, ["a", "b"])
            return Annotation(key, "preference", f"P(a)={p[0]:.4f} P(b)={p[1]:.4f}", p_second=p[1])
        first = self._candidate_probs(prefix, ids, root[0, -1], cache, [str(v) for v in SCORE_VALUES])
        # The second score is read after the most likely first score, as the judge would have written it.
        best = str(SCORE_VALUES[max(range(len(first)), key=first.__getitem__)])
        extra = self._continuation(prefix, ids, best)
        after, cache = forward_tail(self.model, [extra], copy.deepcopy(cache))
        second = self._candidate_probs(prefix + best, ids + extra, after[0, -1], cache,
                                       [f" {v}" for v in SCORE_VALUES])
        s1, s2 = _expected(first), _expected(second)
        raw = (f"{s1:.4f} {s2:.4f}\nexpected scores over the score tokens' probabilities; "
               f"P(first)={[round(x, 4) for x in first]} P(second)={[round(x, 4) for x in second]}")
        return Annotation(key, "scores", raw, scores=[s1, s2])

    def _prefix(self, request: JudgeRequest) -> str:
        """The judge prompt up to where its reply starts (the chat template's assistant turn, when it has one)."""
        system, user = request.messages()
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{system}\n\n{user}\n\n"

    def _encode(self, text: str) -> list[int]:
        # A chat template writes its own special tokens (BOS included), so the tokenizer must not add them again.
        special = not getattr(self.tokenizer, "chat_template", None)
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _fit(self, request: JudgeRequest) -> JudgeRequest:
        """Shorten the longest of question/answers until the prompt fits max_judge_tokens (the task text stays)."""
        budget = self.cfg.max_judge_tokens
        for _ in range(16):
            excess = len(self._encode(self._prefix(request))) - budget
            if excess <= 0:
                return request
            name = max(("question", "answer_1", "answer_2"), key=lambda f: len(getattr(request, f)))
            text = getattr(request, name)
            request = replace(request, **{name: text[: max(0, len(text) - 4 * excess - 16)] + " [...]"})
            self.truncated += 1
        raise JudgeError(f"cannot fit a judge prompt into eval.judge.max_judge_tokens={budget}")

    def _candidate_probs(self, text: str, ids: list[int], next_token: Any, cache: Any, candidates: list[str]
                         ) -> list[float]:
        """P(candidate | text), renormalised over the candidates, exact over each candidate's token path.

        `next_token` is the log-distribution after `ids`, whose keys/values are in `cache`; a multi-token candidate
        (e.g. "10" = "1" "0") costs one short extra pass from a copy of the cache.
        """
        import torch

        trie = _Trie([tuple(self._continuation(text, ids, c)) for c in candidates])
        dists: dict[tuple[int, ...], Any] = {(): next_token}
        for chain in trie.runs:
            if chain:
                log_probs, _ = forward_tail(self.model, [list(chain)], copy.deepcopy(cache), len(chain))
                for depth in range(1, len(chain) + 1):
                    dists[chain[:depth]] = log_probs[0, depth - 1]
        lps = torch.tensor(trie.log_probs(dists), dtype=torch.float64)
        return torch.softmax(lps, dim=0).tolist()

    def _continuation(self, prefix: str, prefix_ids: list[int], text: str) -> list[int]:
        """Token ids of `text` as they follow `prefix` (BPE may merge across the boundary, so tokenize jointly)."""
        full = self._encode(prefix + text)
        if full[: len(prefix_ids)] == prefix_ids and len(full) > len(prefix_ids):
            return full[len(prefix_ids) :]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(probs: Sequence[float]) -> float:
    return float(sum(p * v for p, v in zip(probs, SCORE_VALUES, strict=True)))


def make_judge(cfg: JudgeConfig, device: str = "cpu", concurrency: int = 8, backoff_s: float = 1.0) -> Judge:
    if cfg.backend == "openai":
        return OpenAIJudge(cfg, concurrency, backoff_s)
    if cfg.backend == "hf":
        return HFJudge(cfg, device)
    if cfg.backend == "replay":
        from superfilter.data import resolve_path

        return ReplayJudge([resolve_path(f) for f in cfg.replay_files])
    if cfg.backend == "fake":
        return FakeJudge()
    raise ConfigError(f"eval.judge.backend: unknown {cfg.backend!r}")
