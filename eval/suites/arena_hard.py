"""Suite `arena_hard`: Arena-Hard-Auto v0.1, the model's answers to 500 hard prompts judged against gpt-4-0314's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.generation import Prompt
from eval.judge import judge_label
from eval.metrics import arena_hard
from eval.registry import Context, Prompts, Result, Suite, register
from superfilter.artifacts import write_jsonl
from superfilter.data import resolve_path
from superfilter.errors import ConfigError, DataError, check_limit


@dataclass
class ArenaHardConfig:
    data_dir: str = "data/arena_hard"  # question.jsonl and <baseline>.jsonl (arena-hard-auto's layout)
    baseline: str = "gpt-4-0314"  # the model whose answers every answer is judged against (v0.1's)
    limit: int = 0  # first N of the 500 questions; 0 = eval.limit
    bootstrap_rounds: int = 100  # show_result.py's CI: quantiles over this many bootstrap means


def validate(cfg: ArenaHardConfig, eval_cfg: Any) -> None:
    check_limit("eval.arena_hard.limit", cfg.limit)
    if cfg.bootstrap_rounds < 1:
        raise ConfigError(f"eval.arena_hard.bootstrap_rounds must be >= 1, got {cfg.bootstrap_rounds}")


def _files(cfg: ArenaHardConfig) -> tuple[Path, Path]:
    folder = resolve_path(cfg.data_dir)
    files = folder / "question.jsonl", folder / f"{cfg.baseline}.jsonl"
    for path in files:
        if not path.is_file():
            raise DataError(f"{path}: no such file; eval.arena_hard.data_dir must hold question.jsonl and "
                            f"<eval.arena_hard.baseline>.jsonl (arena-hard-auto's data/arena-hard-v0.1 layout)")
    return files


def preflight(cfg: ArenaHardConfig, eval_cfg: Any) -> None:
    _files(cfg)


def _questions(ctx: Context, cfg: ArenaHardConfig) -> list[Any]:
    return arena_hard.load_questions(_files(cfg)[0], ctx.limit(cfg.limit))


def prompts(ctx: Context, cfg: ArenaHardConfig) -> Prompts:
    return Prompts(model={"questions": [Prompt(q.uid, q.prompt) for q in _questions(ctx, cfg)]})


def run(ctx: Context, cfg: ArenaHardConfig) -> Result:
    questions, answers = _questions(ctx, cfg), ctx.outputs["arena_hard"]["questions"]
    baseline_file = _files(cfg)[1]
    baseline_model, baseline = arena_hard.load_answers(baseline_file)
    if baseline_model != cfg.baseline:
        raise DataError(f"{baseline_file}: field 'model' is {baseline_model!r}, expected {cfg.baseline!r}")
    requests = arena_hard.judge_requests(questions, baseline, answers)
    judged = ctx.judge_all("arena_hard", requests)
    judge = judge_label(ctx.cfg.judge)  # arena-hard-auto's folder layout: model_judgment/<judge>/
    records = arena_hard.judgment_records(questions, requests, judged, ctx.model_name, judge, cfg.baseline)
    folder = ctx.eval_dir / "arena_hard" / arena_hard.BENCH
    answer_file = folder / "model_answer" / f"{arena_hard.slug(ctx.model_name)}.jsonl"
    judgment_file = folder / "model_judgment" / arena_hard.slug(judge) / f"{arena_hard.slug(ctx.model_name)}.jsonl"
    write_jsonl(answer_file, arena_hard.model_answer_records(questions, answers, ctx.model_name))
    write_jsonl(judgment_file, records)
    (standing,) = arena_hard.standings(records, cfg.bootstrap_rounds)
    row = standing.to_dict()
    result = {
        "benchmark": arena_hard.BENCH, "baseline": cfg.baseline, "judge": ctx.judge_note(),
        "official_judge": arena_hard.OFFICIAL_JUDGE, "limit": ctx.limit(cfg.limit) or None,
        "bootstrap_rounds": cfg.bootstrap_rounds, "ci": "5%-95% quantiles of the bootstrap means", **row,
        "judgments": str(judgment_file.relative_to(ctx.out_dir)),
        "rule": "two games per question (baseline as A, then as B); A>>B-type verdicts count 3 times; score = mean "
                "battle outcome vs the baseline (50 = parity); questions with an unreadable verdict are left out",
    }
    notes = ([f"arena_hard: {row['unparseable']} question(s) with an unreadable verdict, not counted"]
             if row["unparseable"] else [])
    summary = [f"### Arena-Hard-Auto v0.1 vs {cfg.baseline} (official judge {arena_hard.OFFICIAL_JUDGE})",
               f"judge: {ctx.judge_note()}", "", arena_hard.format_table([standing], cfg.baseline)]
    return Result(result=result,
                  metrics={k: row[k] for k in ("score", "ci_lower", "ci_upper", "n", "unparseable")},
                  headline={"arena_hard_score": row["score"]}, summary=summary, notes=notes)


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    return {"Arena-Hard %": metrics.get("score")}


register(Suite("arena_hard", ArenaHardConfig, run, prompts=prompts, validate=validate, preflight=preflight,
               report=report, description="Arena-Hard-Auto v0.1: judged battles vs gpt-4-0314 on 500 hard prompts"))
