"""The hf judge: a local causal LM whose answers are read from its token probabilities, so nothing fails to parse."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from eval.judge.base import Annotation, JudgeError, JudgeRequest, OnResult, register_judge
from eval.judge.kinds import JudgeKind, judge_kind
from eval.lm import forward_tail
from eval.settings import JudgeConfig
from superfilter.models import load_model

SMALL_JUDGE_NOTE = (
    "judged by a small local model, not GPT-4: a smoke test of the protocol, not comparable to the paper's numbers"
)


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
            self.model, self.tokenizer = load_model(self.cfg.model, self.device)

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        self._load()
        with torch.inference_mode():
            for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
                on_result(i, self._annotate_one(request, key))

    def _annotate_one(self, request: JudgeRequest, key: str) -> Annotation:
        kind = judge_kind(request.kind)
        prefix = self._prefix(self._fit(request)) + kind.reply_opening
        ids = self._encode(prefix)
        root, cache = forward_tail(self.model, [ids])
        p = self._candidate_probs(prefix, ids, root[0, -1], cache, [c + kind.choice_end for c in kind.choices])
        if kind.answer == "p_second":
            # The expected preference: P(second) renormalised over the two identifiers (AlpacaEval 2's weighting).
            first, second = kind.choices
            return Annotation(key, kind.name, f"P({first})={p[0]:.4f} P({second})={p[1]:.4f}", p_second=p[1])
        if kind.answer == "verdict":
            best = kind.choices[max(range(len(p)), key=p.__getitem__)]
            probs = ", ".join(f"{v}: {x:.4f}" for v, x in zip(kind.choices, p, strict=True))
            return Annotation(key, kind.name, f"{kind.reply_opening}{best}{kind.choice_end}\nP(verdict) = {{{probs}}}",
                              verdict=best)
        return self._second_score(kind, key, prefix, ids, cache, p)

    def _second_score(self, kind: JudgeKind, key: str, prefix: str, ids: list[int], cache: Any, first: list[float]
                      ) -> Annotation:
        """Both expected scores: the second is read after the most likely first score, as the judge would have
        written it, then a space."""
        best = kind.choices[max(range(len(first)), key=first.__getitem__)]
        extra = self._continuation(prefix, ids, best)
        after, cache = forward_tail(self.model, [extra], copy.deepcopy(cache))
        second = self._candidate_probs(prefix + best, ids + extra, after[0, -1], cache,
                                       [f" {c}" for c in kind.choices])
        s1, s2 = _expected(kind, first), _expected(kind, second)
        raw = (f"{s1:.4f} {s2:.4f}\nexpected scores over the score tokens' probabilities; "
               f"P(first)={[round(x, 4) for x in first]} P(second)={[round(x, 4) for x in second]}")
        return Annotation(key, kind.name, raw, scores=[s1, s2])

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


def _expected(kind: JudgeKind, probs: Sequence[float]) -> float:
    return float(sum(p * int(v) for p, v in zip(probs, kind.choices, strict=True)))


def _label(cfg: JudgeConfig) -> str:
    return cfg.model.name


def _note(cfg: JudgeConfig) -> str:
    return f"hf judge {cfg.model.name}: {SMALL_JUDGE_NOTE}"


@register_judge("hf", label=_label, note=_note)
def _hf(cfg: JudgeConfig, device: str) -> HFJudge:
    return HFJudge(cfg, device)
