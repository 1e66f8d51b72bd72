"""Pairwise judging as in the paper: both answer orders, win/tie/lose per prompt, winning score, W/T/L chart."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from superfilter.contracts import PAIRWISE_SETS
from superfilter.errors import DataError

OUTCOMES = ("win", "tie", "lose")
# The review's first line holds the two scores, separated by a space (a comma is tolerated, as the authors did).
SCORE_LINE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:,\s*|\s+)(\d+(?:\.\d+)?)\s*$")
# Where each test set keeps its prompt, in the authors' files.
PROMPT_FIELDS = {"vicuna": "text", "koala": "prompt", "wizardlm": "Instruction", "sinstruct": "instruction",
                 "lima": "conversations"}


@dataclass(frozen=True)
class TestPrompt:
    id: str
    instruction: str
    input: str = ""

    @property
    def question(self) -> str:
        """What the judge sees: the instruction and, when there is one, its input."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def load_test_set(name: str, data_dir: Path, limit: int = 0) -> list[TestPrompt]:
    """The first `limit` (0 = all) prompts of one of the paper's test sets, from <data_dir>/<name>_test_set.jsonl."""
    path = Path(data_dir) / f"{name}_test_set.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (the pairwise test sets ship in data/pairwise_test_sets)")
    prompts: list[TestPrompt] = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if limit and len(prompts) >= limit:
                break
            if line.strip():
                prompts.append(_test_prompt(name, path, number, line))
    return prompts


def _test_prompt(name: str, path: Path, number: int, line: str) -> TestPrompt:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{number}: not JSON: {e}") from e
    key = PROMPT_FIELDS[name]
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, list):  # LIMA's conversations: the first turn is the prompt
        value = value[0] if value else None
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{path}:{number}: field {key!r} is missing or empty")
    input_text = ""
    if name == "sinstruct":  # the authors fill Alpaca's input slot from the first instance
        instances = record.get("instances")
        if not isinstance(instances, list) or not instances or not isinstance(instances[0], dict):
            raise DataError(f"{path}:{number}: field 'instances' must be a non-empty list of objects")
        input_text = str(instances[0].get("input") or "")
    item_id = str(record.get("id", record.get("question_id", record.get("idx", number))))
    return TestPrompt(f"{name}_{item_id}" if not item_id.startswith(name) else item_id, value, input_text)


def parse_scores(review: str) -> tuple[float, float] | None:
    """The two scores on the review's first line, or None when that line is not exactly two numbers."""
    match = SCORE_LINE.match(review.split("\n", 1)[0])
    return (float(match.group(1)), float(match.group(2))) if match else None


def compare(model: float, reference: float, tie_margin: float = 0.0) -> int:
    """+1 when the model's score is higher, -1 when lower, 0 when within `tie_margin` (0: exactly equal)."""
    tied = model == reference if tie_margin == 0 else abs(model - reference) < tie_margin
    if tied:
        return 0
    return 1 if model > reference else -1


def outcome(forward: tuple[float, float], reverse: tuple[float, float], tie_margin: float = 0.0) -> str:
    """Win/tie/lose for one prompt judged in both orders.

    forward = (model, reference) scores with the model's answer shown first; reverse = (reference, model) with the
    reference shown first. The model wins when it wins both orders or wins one and ties the other, loses
    likewise, and every other combination is a tie [the authors' review_eval_score.py].
    """
    total = compare(forward[0], forward[1], tie_margin) + compare(reverse[1], reverse[0], tie_margin)
    return "win" if total > 0 else "lose" if total < 0 else "tie"


@dataclass
class Tally:
    """Win/tie/lose counts of one test set (or all of them); unparseable prompts are kept out of N."""

    name: str
    win: int = 0
    tie: int = 0
    lose: int = 0
    unparseable: int = 0
    unparseable_ids: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float:
        """(#win − #lose) / #all + 1: 1.0 is parity with the reference [paper §4]."""
        return (self.win - self.lose) / self.n + 1 if self.n else math.nan

    def add(self, result: str | None, item_id: str = "") -> None:
        if result is None:
            self.unparseable += 1
            self.unparseable_ids.append(item_id)
        else:
            setattr(self, result, getattr(self, result) + 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n": self.n, "winning_score": self.winning_score}


def pooled(tallies: Iterable[Tally], name: str = "overall") -> Tally:
    """All sets together, as the authors summed W/T/L before computing the score."""
    total = Tally(name)
    for t in tallies:
        total.win, total.tie, total.lose = total.win + t.win, total.tie + t.tie, total.lose + t.lose
        total.unparseable += t.unparseable
        total.unparseable_ids += [f"{t.name}/{i}" for i in t.unparseable_ids]
    return total


def tally_reviews(name: str, reviews: Sequence[tuple[str, str | None, str | None]], tie_margin: float = 0.0) -> Tally:
    """Count (item id, review with the model first, review with the reference first) triples."""
    tally = Tally(name)
    for item_id, review, review_reverse in reviews:
        forward = parse_scores(review) if review is not None else None
        reverse = parse_scores(review_reverse) if review_reverse is not None else None
        tally.add(outcome(forward, reverse, tie_margin) if forward and reverse else None, item_id)
    return tally


def read_review_log(path: Path) -> tuple[str, list[tuple[str, str | None, str | None]], dict[str, Any]]:
    """(set name, reviews, Meta_Info) of a log in the authors' format; fails naming the file and record."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read review log: {e}") from e
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise DataError(f"{path}: expected {{'Meta_Info': {{...}}, 'data': [...]}} (the authors' review log format)")
    meta = payload.get("Meta_Info") or {}
    name = str(meta.get("dataset_name") or Path(path).name.split("_")[0])
    reviews = []
    for i, record in enumerate(payload["data"]):
        if not isinstance(record, dict) or "review" not in record or "review_reverse" not in record:
            raise DataError(f"{path}: record {i} lacks the field 'review' or 'review_reverse'")
        reviews.append((str(i), record["review"], record["review_reverse"]))
    return name, reviews, meta


def judge_tag(judge: str) -> str:
    """The judge's part of a review log's name, as the authors wrote it: gpt4 / gpt3.5 for those APIs (their
    review_eval_score.py looks for 'reviews_gpt4' or 'reviews_gpt3.5'), else the judge's name made file-safe."""
    if judge.startswith("gpt-4"):
        return "gpt4"
    if judge.startswith("gpt-3.5"):
        return "gpt3.5"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", judge).strip("-") or "judge"


def review_log_name(set_name: str, judge: str) -> str:
    """<set>_wrap_reviews_<judge>.json, the authors' file name (their script matches the set's lower-case name)."""
    return f"{set_name}_wrap_reviews_{judge_tag(judge)}.json"


def review_log(set_name: str, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """A review log in the authors' layout: Meta_Info (dataset_name, average_scores, average_scores_reverse, as
    strings of two numbers) and data (records with review/scores/review_reverse/scores_reverse, unreadable scores
    written as the authors' "[-1, -1]"). The averages are over readable reviews only, not over those -1 markers."""

    def average(key: str) -> str:
        pairs = [parsed for r in records if (parsed := _score_pair(r[key])) is not None]
        if not pairs:
            return str([math.nan, math.nan])
        return str([sum(p[k] for p in pairs) / len(pairs) for k in (0, 1)])

    readable = sum(_score_pair(r["scores"]) is not None for r in records)
    info = {"dataset_name": set_name, **meta, "average_scores": average("scores"),
            "average_scores_reverse": average("scores_reverse"),
            "averages_over": f"readable reviews only ({readable} of {len(records)} in the first order)"}
    return {"Meta_Info": info, "data": list(records)}


def _score_pair(text: str) -> tuple[float, float] | None:
    match = re.fullmatch(r"\[\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\]", text.strip())
    if match is None or float(match.group(1)) < 0:
        return None
    return float(match.group(1)), float(match.group(2))


def plot_wtl(tallies: Sequence[Tally], path: Path, model: str = "model", reference: str = "reference") -> Path:
    """Stacked horizontal win/tie/lose bars, one per test set (the authors' figure)."""
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    labels = [f"{PAIRWISE_SETS.get(t.name, t.name)} ({t.winning_score:.3f})" for t in tallies]
    counts = [[t.win, t.tie, t.lose] for t in tallies]
    colors = ("#4c72b0", "#c8c8c8", "#dd8452")
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(tallies) + 1.5), dpi=150)
    ax.invert_yaxis()
    left = [0] * len(tallies)
    for k, (label, color) in enumerate(zip((f"{model} wins", "tie", f"{reference} wins"), colors, strict=True)):
        widths = [c[k] for c in counts]
        bars = ax.barh(labels, widths, left=left, height=0.6, label=label, color=color)
        ax.bar_label(bars, labels=[str(w) if w else "" for w in widths], label_type="center")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("prompts")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=3, fontsize="small")
    ax.set_title(f"{model} vs {reference} (winning score per test set)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def format_table(tallies: Sequence[Tally]) -> str:
    """A markdown table: one row per set, then the pooled row."""
    rows = ["| test set | win | tie | lose | N | unparseable | winning score |", "|---|---|---|---|---|---|---|"]
    for t in tallies:
        rows.append(f"| {PAIRWISE_SETS.get(t.name, t.name)} | {t.win} | {t.tie} | {t.lose} | {t.n} | {t.unparseable} "
                    f"| {t.winning_score:.3f} |")
    return "\n".join(rows)
