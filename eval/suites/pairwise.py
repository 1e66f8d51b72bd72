"""Suite `pairwise`: the paper's judged comparison with the partner model on five test sets, both answer orders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eval.generation import Prompt
from eval.judge import JudgeRequest, judge_label
from eval.metrics import pairwise
from eval.metrics.pairwise import PROMPT_FIELDS, TestPrompt, review_log, review_log_name
from eval.registry import Context, Prompts, Result, Suite, Table, register
from superfilter.artifacts import write_json_atomic
from superfilter.contracts import JUDGE_DIR, PAIRWISE_SETS
from superfilter.data import resolve_path
from superfilter.errors import check_limit, one_of
from superfilter.stats import OUTCOMES, PAIRED, compare_differences


@dataclass
class PairwiseConfig:
    sets: list[str] = field(default_factory=lambda: list(PAIRWISE_SETS))
    data_dir: str = "data/pairwise_test_sets"  # relative paths resolve against the cwd, then the project
    limit: int = 0  # first N prompts per set; 0 = eval.limit


def validate(cfg: PairwiseConfig, eval_cfg: Any) -> None:
    one_of("eval.pairwise.sets", cfg.sets, tuple(PAIRWISE_SETS))
    check_limit("eval.pairwise.limit", cfg.limit)


def prompts(ctx: Context, cfg: PairwiseConfig) -> Prompts:
    data_dir = resolve_path(cfg.data_dir)
    groups = {name: [Prompt(p.id, p.instruction, p.input)
                     for p in pairwise.load_test_set(name, data_dir, ctx.limit(cfg.limit))] for name in cfg.sets}
    return Prompts(model=groups, reference=groups if ctx.reference_dir is not None else {})


def run(ctx: Context, cfg: PairwiseConfig) -> Result:
    if ctx.reference_dir is None:
        skipped = {"skipped": "eval.reference=none (or the model is its own reference): no pairwise partner"}
        return Result(result=skipped, metrics=skipped, notes=["pairwise skipped: no reference model"])
    margin = ctx.cfg.judge.tie_margin
    tallies, samples = [], []
    outcomes: dict[str, float] = {}
    for name, prompts_ in prompts(ctx, cfg).model.items():
        tests = [TestPrompt(p.id, p.instruction, p.input) for p in prompts_]
        ours, theirs = ctx.outputs["pairwise"][name], ctx.reference_outputs["pairwise"][name]
        triples = list(zip(tests, ours, theirs, strict=True))
        # Every prompt twice: the model's answer shown first, then the reference's [paper §4].
        requests = [JudgeRequest("scores", p.question, a, b, "model_first") for p, a, b in triples]
        requests += [JudgeRequest("scores", p.question, b, a, "reference_first") for p, a, b in triples]
        judged = ctx.judge_all(f"pairwise/{name}", requests)
        forward, reverse = judged[: len(tests)], judged[len(tests) :]
        reviews = [(p.id, f.raw if f.ok else None, r.raw if r.ok else None)
                   for p, f, r in zip(tests, forward, reverse, strict=True)]
        tallies.append(pairwise.tally_reviews(name, reviews, margin))
        samples += [[name, p.question, a, b, verdict(f, r, margin)]
                    for (p, a, b), (_, f, r) in zip(triples, reviews, strict=True)]
        outcomes.update(item_outcomes(name, reviews, margin))
        _write_review_log(ctx, name, tests, ours, theirs, forward, reverse)
    total = pairwise.pooled(tallies)
    chart = pairwise.plot_wtl(tallies, ctx.eval_dir / "pairwise_wtl.png", ctx.model_name, ctx.reference_name)
    result = {
        "model": ctx.model_name, "reference": ctx.reference_name, "judge": ctx.judge_note(),
        "tie_margin": margin, "limit_per_set": ctx.limit(cfg.limit) or None,
        "sets": {t.name: t.to_dict() for t in tallies}, "overall": total.to_dict(), "chart": chart.name,
        "rule": "both answer orders; win = win both or win one and tie the other, lose likewise, else tie; "
                "winning score = (W - L) / N + 1; prompts with an unparseable review are left out of N",
    }
    rows = [[t.name, t.win, t.tie, t.lose, t.unparseable, t.winning_score] for t in [*tallies, total]]
    notes = ([f"pairwise: {total.unparseable} prompt(s) with an unparseable review, not counted"]
             if total.unparseable else [])
    comparison = compare_differences(outcomes, "pairwise judge, win +1 / tie 0 / lose −1 per prompt",
                                     higher_is_better=True, partner=ctx.reference_name).to_dict()
    result["paired"] = comparison
    return Result(
        result=result,
        metrics={"winning_score": total.winning_score, "win": total.win, "tie": total.tie, "lose": total.lose,
                 "n": total.n, "unparseable": total.unparseable, "sets": {t.name: t.winning_score for t in tallies},
                 PAIRED: [comparison]},
        headline={"pairwise_winning_score": total.winning_score},
        summary=[f"### Pairwise vs {ctx.reference_name} (both orders; winning score = (W - L) / N + 1)",
                 f"judge: {ctx.judge_note()}", "", pairwise.format_table([*tallies, total])],
        tables=[Table("pairwise", ["set", "win", "tie", "lose", "unparseable", "winning_score"], rows),
                Table("pairwise_samples", ["set", "prompt", "answer", "partner answer", "verdict"], samples)],
        images={"pairwise_wtl": chart}, notes=notes,
    )


def verdict(review: str | None, review_reverse: str | None, margin: float) -> str:
    """One prompt's win/tie/lose for the tracker's samples table, as tally_reviews counts it."""
    forward = pairwise.parse_scores(review) if review is not None else None
    reverse = pairwise.parse_scores(review_reverse) if review_reverse is not None else None
    return pairwise.outcome(forward, reverse, margin) if forward and reverse else "unparseable"


def item_outcomes(name: str, reviews: list[tuple[str, str | None, str | None]], margin: float) -> dict[str, float]:
    """'<set>/<id>' → +1 win, 0 tie, −1 lose, counted as pairwise.tally_reviews counts (unparseable left out), so
    their mean is the winning score − 1."""
    out = {}
    for item_id, review, review_reverse in reviews:
        forward = pairwise.parse_scores(review) if review is not None else None
        reverse = pairwise.parse_scores(review_reverse) if review_reverse is not None else None
        if forward and reverse:
            out[f"{name}/{item_id}"] = OUTCOMES[pairwise.outcome(forward, reverse, margin)]
    return out


def _write_review_log(ctx: Context, name: str, prompts_, ours, theirs, forward, reverse) -> None:
    """judge/<set>_wrap_reviews_<judge>.json in the authors' format and name, so their review_eval_score.py and
    `python -m eval.commands.pairwise` recompute W/T/L from it."""

    data = [{"id": p.id, PROMPT_FIELDS[name]: p.question, "Answer1": a, "Answer2": b,
             "review": f.raw, "scores": str(f.scores or [-1, -1]),
             "review_reverse": r.raw, "scores_reverse": str(r.scores or [-1, -1])}
            for p, a, b, f, r in zip(prompts_, ours, theirs, forward, reverse, strict=True)]
    meta = {"tie_margin": ctx.cfg.judge.tie_margin, "judge": ctx.judge_note(),
            "Answer1": ctx.model_name, "Answer2": ctx.reference_name}
    write_json_atomic(ctx.out_dir / JUDGE_DIR / review_log_name(name, judge_label(ctx.cfg.judge)),
                      review_log(name, data, meta))


register(Suite("pairwise", PairwiseConfig, run, prompts=prompts, validate=validate, needs_reference=True,
               description="judged win/tie/lose vs the partner model on Vicuna, Koala, WizardLM, Self-Instruct, LIMA"))
