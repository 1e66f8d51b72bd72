"""Suite `open_llm`: Open LLM Leaderboard v1 (ARC-C, HellaSwag, MMLU, TruthfulQA) with lm-evaluation-harness."""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass, field
from typing import Any

from eval.open_llm_tasks import run_open_llm
from eval.registry import Context, Result, Suite, register
from superfilter.data import resolve_path
from superfilter.errors import check_limit, one_of

OPEN_LLM_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
OPEN_LLM_SOURCES = ("auto", "hub", "local")
COLUMNS = {"arc_challenge": "ARC-C (25-shot acc_norm)", "hellaswag": "HellaSwag (10-shot acc_norm)",
           "mmlu": "MMLU (5-shot acc)", "truthfulqa_mc2": "TruthfulQA (0-shot mc2)"}


@dataclass
class OpenLLMConfig:
    tasks: list[str] = field(default_factory=lambda: list(OPEN_LLM_TASKS))
    source: str = "auto"  # auto (Hub tasks when the Hub answers, else local) | hub | local
    data_dir: str = "data/eval"  # local benchmark files (same layout as the upstream releases)
    mmlu_subjects: list[str] = field(default_factory=list)  # empty = every subject found in data_dir
    limit: int = 0  # examples per task (per subject for MMLU); 0 = eval.limit
    share_prefix: bool = True  # run each multiple-choice context once (same scores, several times faster)


def validate(cfg: OpenLLMConfig, eval_cfg: Any) -> None:
    one_of("eval.open_llm.tasks", cfg.tasks, OPEN_LLM_TASKS)
    one_of("eval.open_llm.source", [cfg.source], OPEN_LLM_SOURCES)
    check_limit("eval.open_llm.limit", cfg.limit)


def run(ctx: Context, cfg: OpenLLMConfig) -> Result:
    model, tokenizer = ctx.load_model()
    try:
        result = run_open_llm(model, tokenizer, cfg.tasks, cfg.source, cfg.mmlu_subjects, cfg.share_prefix,
                              resolve_path(cfg.data_dir), ctx.limit(cfg.limit), ctx.device,
                              ctx.cfg.lm_eval_batch_size, ctx.eval_dir)
    finally:
        del model
        gc.collect()
    cells = [f"{100 * result['benchmarks'][n]['value']:.2f}" if n in result["benchmarks"] else "–" for n in COLUMNS]
    limit = f", limit {result['limit']}" if result["limit"] else ""
    summary = [f"### Open LLM (leaderboard v1 settings; lm-eval {result['lm_eval_version']}, {result['source']} tasks"
               f"{limit})", "", f"| {' | '.join(COLUMNS.values())} | average |", "|---|---|---|---|---|",
               f"| {' | '.join(cells)} | {100 * result['average']:.2f} |", *[f"- {n}" for n in result["notes"]]]
    return Result(result=result,
                  metrics={"average": result["average"], "source": result["source"], "limit": result["limit"],
                           **{name: b["value"] for name, b in result["benchmarks"].items()}},
                  headline={"open_llm_average": result["average"]}, summary=summary)


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    average = metrics.get("average")
    return {"Open LLM avg %": None if average is None or not math.isfinite(average) else 100 * average}


register(Suite("open_llm", OpenLLMConfig, run, validate=validate, report=report,
               description="Open LLM Leaderboard v1 average (ARC-C, HellaSwag, MMLU, TruthfulQA) with lm-eval"))
