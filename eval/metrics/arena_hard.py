"""Arena-Hard-Auto v0.1: 500 hard prompts, each judged twice against gpt-4-0314's answer; score = mean battle result."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.judge import Annotation, JudgeRequest
from eval.judge.arena_files import jsonl_records as _jsonl
from eval.judge.arena_files import required_field as _field
from superfilter.errors import DataError

BENCH = "arena-hard-v0.1"
BASELINE = "gpt-4-0314"
OFFICIAL_JUDGE = "gpt-4-1106-preview"
DATA_DIR = "data/arena_hard"  # question.jsonl and <baseline>.jsonl, as in arena-hard-auto's data/arena-hard-v0.1/
STRONG_WEIGHT = 3  # show_result.py: a strong verdict (A>>B) counts as three battles
BOOTSTRAP_ROUNDS = 100
CI_QUANTILES = (0.05, 0.95)  # show_result.py's interval: the 5% and 95% quantiles of the bootstrap means
# show_result.py's label_to_score, for Assistant A; game 1 shows the baseline as A, game 2 shows it as B.
LABEL_SCORE = {"A>B": 1.0, "A>>B": 1.0, "A=B": 0.5, "A<<B": 0.0, "A<B": 0.0,
               "B>A": 0.0, "B>>A": 0.0, "B=A": 0.5, "B<<A": 1.0, "B<A": 1.0}
STRONG = {"A>>B", "A<<B", "B>>A", "B<<A"}


@dataclass(frozen=True)
class Question:
    uid: str
    category: str
    prompt: str


def load_questions(path: Path, limit: int = 0) -> list[Question]:
    """question.jsonl (uid, category, prompt; the v0.1-era question_id/turns layout too), first `limit` (0 = all)."""
    questions = []
    for number, r in _jsonl(path):
        if limit and len(questions) >= limit:
            break
        if isinstance(r, dict) and "question_id" in r and "uid" not in r:  # the layout before the 2025 rewrite
            uid, category = str(r["question_id"]), str(r.get("category", BENCH))
            prompt = _field(path, number, (r.get("turns") or [{}])[0], "content")
        else:
            uid, category = str(_field(path, number, r, "uid")), str(r.get("category", BENCH))
            prompt = _field(path, number, r, "prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{path}:{number}: field 'prompt' is missing or empty")
        questions.append(Question(uid, category, prompt))
    return questions


def load_answers(path: Path) -> tuple[str, dict[str, str]]:
    """(model, {uid: answer}) of a model_answer/<model>.jsonl file, current or v0.1-era layout."""
    model, answers = "", {}
    for number, r in _jsonl(path):
        model = model or str(_field(path, number, r, "model"))
        if "messages" in r:
            uid = str(_field(path, number, r, "uid"))
            content = r["messages"][-1].get("content") if r["messages"] else None
            answer = content.get("answer") if isinstance(content, dict) else content
        else:
            uid = str(_field(path, number, r, "question_id"))
            try:
                answer = r["choices"][0]["turns"][0]["content"]
            except (KeyError, IndexError, TypeError) as e:
                raise DataError(f"{path}:{number}: missing field 'choices[0].turns[0].content'") from e
        if not isinstance(answer, str):
            raise DataError(f"{path}:{number}: field 'messages[-1].content.answer' is missing or not text")
        answers[uid] = answer
    return model, answers


def judge_requests(questions: Sequence[Question], baseline: dict[str, str], answers: Sequence[str]
                   ) -> list[JudgeRequest]:
    """Two games per question, all game-1 requests then all game-2 ones: the baseline as Assistant A, then as B."""
    missing = [q.uid for q in questions if q.uid not in baseline]
    if missing:
        raise DataError(f"the baseline answers lack {len(missing)} question(s), e.g. uid {missing[0]}")
    pairs = list(zip(questions, answers, strict=True))
    return ([JudgeRequest("arena_hard", q.prompt, baseline[q.uid], a, "baseline_first") for q, a in pairs]
            + [JudgeRequest("arena_hard", q.prompt, a, baseline[q.uid], "model_first") for q, a in pairs])


def model_answer_records(questions: Sequence[Question], answers: Sequence[str], model: str) -> list[dict[str, Any]]:
    """model_answer/<model>.jsonl records, the layout gen_answer.py writes."""
    now = time.time()
    return [{"uid": q.uid, "ans_id": f"{q.uid}-{slug(model)}", "model": model, "tstamp": now,
             "messages": [{"role": "user", "content": q.prompt}, {"role": "assistant", "content": {"answer": a}}]}
            for q, a in zip(questions, answers, strict=True)]


def judgment_records(questions: Sequence[Question], requests: Sequence[JudgeRequest], judged: Sequence[Annotation],
                     model: str, judge: str, baseline: str = BASELINE) -> list[dict[str, Any]]:
    """model_judgment/<judge>/<model>.jsonl records, the layout gen_judgment.py writes; an unreadable verdict is
    written as score null, which show_result.py leaves out."""
    n = len(questions)
    records = []
    for i, q in enumerate(questions):
        games = []
        for request, a in ((requests[i], judged[i]), (requests[n + i], judged[n + i])):
            system, user = request.messages()
            games.append({"score": a.verdict if a.ok else None, "judgment": {"answer": a.raw},
                          "prompt": [{"role": "system", "content": system}, {"role": "user", "content": user}]})
        records.append({"uid": q.uid, "category": q.category, "judge": judge, "model": model, "baseline": baseline,
                        "games": games})
    return records


def battle_scores(record: dict[str, Any]) -> list[float] | None:
    """The model's battle outcomes for one question (show_result.py): game 2 as scored for A, game 1 flipped; a
    strong verdict repeated STRONG_WEIGHT times. None when a game is missing or its verdict unreadable."""
    labels = [g.get("score") if isinstance(g, dict) else None for g in record["games"]]
    if any(label not in LABEL_SCORE for label in labels):
        return None
    first, second = labels

    def weighted(label: str) -> list[float]:
        return [LABEL_SCORE[label]] * (STRONG_WEIGHT if label in STRONG else 1)

    return weighted(second) + [1.0 - s for s in weighted(first)]


@dataclass
class Standing:
    model: str
    score: float  # mean battle outcome, 0-1
    lower: float
    upper: float
    n: int  # questions with both games readable
    battles: int
    unparseable: int  # questions left out: a game missing or its verdict unreadable

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "score": 100 * self.score, "ci_lower": 100 * self.lower,
                "ci_upper": 100 * self.upper, "n": self.n, "battles": self.battles, "unparseable": self.unparseable}


def standings(records: Sequence[dict[str, Any]], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> list[Standing]:
    """One row per model (its name after the last '/', as show_result.py does), best first. The score is the mean
    over battles; the CI, the 5%/95% quantiles of `rounds` bootstrap means over that model's battles."""

    by_model: dict[str, list[float]] = {}
    readable: dict[str, int] = {}
    unreadable: dict[str, int] = {}
    for r in records:
        model = str(r["model"]).split("/")[-1]
        scores = battle_scores(r)
        by_model.setdefault(model, [])
        counts = unreadable if scores is None else readable
        counts[model] = counts.get(model, 0) + 1
        by_model[model] += scores or []
    rng = np.random.default_rng(seed)
    rows = []
    for model, scores in by_model.items():
        x = np.asarray(scores, dtype=float)
        if len(x) == 0:
            rows.append(Standing(model, math.nan, math.nan, math.nan, 0, 0, unreadable.get(model, 0)))
            continue
        means = x[rng.integers(0, len(x), size=(rounds, len(x)))].mean(axis=1)
        rows.append(Standing(model, float(x.mean()), float(np.quantile(means, CI_QUANTILES[0])),
                             float(np.quantile(means, CI_QUANTILES[1])), readable.get(model, 0), len(x),
                             unreadable.get(model, 0)))
    return sorted(rows, key=lambda s: -s.score if not math.isnan(s.score) else math.inf)


def format_table(rows: Sequence[Standing], baseline: str = BASELINE) -> str:
    lines = ["| model | score (%) | 90% CI (%) | n | unparseable |", "|---|---|---|---|---|"]
    for s in rows:
        ci = f"(-{100 * (s.score - s.lower):.1f} / +{100 * (s.upper - s.score):.1f})"
        lines.append(f"| {s.model} | {100 * s.score:.1f} | {ci} | {s.n} | {s.unparseable} |")
    lines.append(f"| {baseline} (baseline) | 50.0 | (-0.0 / +0.0) | | |")
    return "\n".join(lines)


def slug(name: str) -> str:
    """A file-name-safe form of a model or judge name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
