"""The replay judge: reviews and judgments already written by someone else's judge, looked up by what was asked."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.judge.arena_files import game_prompt_and_judgment, read_judgments
from eval.judge.base import JudgeError, JudgeRequest, OnResult, parse_reply, register_judge
from eval.judge.kinds import judge_kind
from eval.metrics.pairwise import PROMPT_FIELDS
from eval.settings import JudgeConfig
from superfilter.artifacts import canonical_json
from superfilter.data import resolve_path
from superfilter.errors import ConfigError, DataError


def _replay_key(*texts: str) -> str:
    return hashlib.sha256(canonical_json([t.strip() for t in texts]).encode()).hexdigest()


class ReplayJudge:
    """Pairwise reviews from logs in the authors' format (*_wrap_reviews_*.json; Answer1 is the model), looked up by
    (question, answers in the order shown, order), or by the answers and order alone when the question is worded
    differently (e.g. without its input) and that is unambiguous. Arena-Hard judgments from arena-hard-auto's jsonl
    files, looked up by the exact judge prompt of each game."""

    name = "replay"

    def __init__(self, files: Sequence[str | Path]) -> None:
        self.files = [Path(f) for f in files]
        self.by_question: dict[str, str] = {}
        self.by_pair: dict[str, set[str]] = {}
        self.by_prompt: dict[str, str] = {}
        for path in self.files:
            if path.suffix == ".jsonl":
                self._read_judgments(path)
            else:
                self._read_review_log(path)
        self._identity = {"backend": "replay",
                          "logs": sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in self.files)}

    def _read_review_log(self, path: Path) -> None:
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

    def _read_judgments(self, path: Path) -> None:
        for line, record in read_judgments(path):
            for game in record["games"]:
                found = game_prompt_and_judgment(path, line, game)
                if found is not None:
                    self.by_prompt[_replay_key(found[0])] = found[1]

    def identity(self) -> dict[str, Any]:
        return self._identity

    def review(self, request: JudgeRequest) -> str | None:
        if judge_kind(request.kind).recorded_in == "judgment_files":
            return self.by_prompt.get(_replay_key(request.messages()[1]))
        found = self.by_question.get(_replay_key(request.question, request.answer_1, request.answer_2, request.order))
        if found is not None:
            return found
        candidates = self.by_pair.get(_replay_key(request.answer_1, request.answer_2, request.order), set())
        return next(iter(candidates)) if len(candidates) == 1 else None

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        if any(not judge_kind(r.kind).recorded_in for r in requests):
            raise ConfigError("eval.judge.backend=replay reads pairwise reviews and Arena-Hard judgments only; "
                              "not for alpaca_eval")
        reviews = [self.review(r) for r in requests]
        absent = [r for r, review in zip(requests, reviews, strict=True) if review is None]
        if absent:
            raise JudgeError(f"{len(absent)} request(s) have no (unambiguous) review in "
                             f"{[str(f) for f in self.files]}; first question: {absent[0].question[:80]!r}")
        for i, (review, key, request) in enumerate(zip(reviews, keys, requests, strict=True)):
            on_result(i, parse_reply(key, request.kind, review))

    def stats(self) -> dict[str, Any]:
        return {}


@register_judge("replay")
def _replay(cfg: JudgeConfig, device: str) -> ReplayJudge:
    return ReplayJudge([resolve_path(f) for f in cfg.replay_files])
