"""The eval stage: run the suites in eval.suites (eval/suites/) on a trained model; writes eval/*.json."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from eval.config import EvalConfig
from eval.generation import generate
from eval.registry import Context, Prompts, Result, get, section
from superfilter.artifacts import write_json_atomic, write_text_atomic
from superfilter.contracts import EVAL_SUMMARY_FILE, JUDGE_DIR, JUDGE_SUMMARY_FILE, REPORT_COLUMNS
from superfilter.runs import subset_label
from superfilter.runtime import RuntimeConfig, release_memory, resolve_device
from superfilter.stats import PAIRED, verdict_lines
from superfilter.tracking import StageRun

log = logging.getLogger(__name__)


def check(cfg: EvalConfig) -> None:
    """Every check that needs no model: config values, then each selected suite's files, task names and sources."""
    cfg.validate()
    for name in cfg.suites:
        suite = get(name)
        if suite.preflight is not None:
            suite.preflight(section(cfg, name), cfg)


def eval_stage(
    model_dir: Path, reference_dir: Path | None, cfg: EvalConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    started = time.perf_counter()
    check(cfg)
    device = str(resolve_device(runtime.device))
    out_dir = Path(out_dir)
    # Generations and annotations outlive any one stage folder: <artifact_root>/cache unless told otherwise.
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out_dir.parent.parent / "cache"
    reference = Path(reference_dir) if reference_dir else None
    ctx = Context(Path(model_dir), reference, cfg, device, out_dir, cache_root, model_label(Path(model_dir)),
                  model_label(reference) if reference else "none")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    generate_all(ctx)
    if ctx.generation_stats:
        timings["generation"] = round(time.perf_counter() - clock, 1)
    # Suites run one after another, each loading what it needs, so memory holds one model at a time; what one
    # freed goes back to the OS before the next loads its own.
    results: dict[str, Result] = {}
    for name in cfg.suites:
        release_memory()
        clock = time.perf_counter()
        results[name] = get(name).run(ctx, section(cfg, name))
        timings[name] = round(time.perf_counter() - clock, 1)
        write_json_atomic(ctx.eval_dir / f"{name}.json", results[name].result)
    if ctx.judge_summaries:
        write_json_atomic(out_dir / JUDGE_DIR / JUDGE_SUMMARY_FILE, ctx.judge_summaries)
    metrics: dict[str, Any] = {name: r.metrics for name, r in results.items()}
    metrics[REPORT_COLUMNS] = report_columns(results)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["seconds_by_phase"] = timings
    write_json_atomic(ctx.eval_dir / "generation.json", ctx.generation_stats)
    table = summary_markdown(ctx, results, metrics["seconds"])
    write_text_atomic(ctx.eval_dir / EVAL_SUMMARY_FILE, table)
    log.info("evaluation summary:\n%s", table)
    mirror(tracker, results)
    return metrics


def model_label(model_dir: Path) -> str:
    """'<filter> <ratio>%' (or '<filter> <N> tokens' for a token budget) from the train stage's upstream select
    stage; the folder name when that is unknown."""
    return subset_label(model_dir) or Path(model_dir).name


def report_columns(results: dict[str, Result]) -> dict[str, list[list[Any]]]:
    """Each suite's report columns (Suite.report) as ordered [column, value] pairs: metrics.json is written with
    sorted keys, and the report reads these instead of importing the suites. Skipped suites have none."""
    columns = {}
    for name, result in results.items():
        report = get(name).report
        if report is not None and "skipped" not in result.metrics:
            columns[name] = [[column, value] for column, value in report(result.metrics).items()]
    return columns


def generate_all(ctx: Context) -> None:
    """One generation pass per model over every prompt the suites need, so each model loads once."""
    wanted: dict[str, Prompts] = {}
    for name in ctx.cfg.suites:
        suite = get(name)
        if suite.prompts is not None:
            wanted[name] = suite.prompts(ctx, section(ctx.cfg, name))
    model = {(s, g): ps for s, p in wanted.items() for g, ps in p.model.items()}
    reference = {(s, g): ps for s, p in wanted.items() for g, ps in p.reference.items()}
    if model:
        ctx.outputs = _generate(ctx, ctx.model_dir, model, "model")
    if reference and ctx.reference_dir is not None:
        ctx.reference_outputs = _generate(ctx, ctx.reference_dir, reference, "reference")


def _generate(ctx: Context, model_dir: Path, groups: dict[tuple[str, str], list], role: str
              ) -> dict[str, dict[str, list[str]]]:

    prompts = [p for ps in groups.values() for p in ps]
    answers, stats = generate(model_dir, prompts, ctx.cfg.generation, ctx.cache_root, ctx.device,
                              ctx.cfg.batch_size, ctx.cfg.template)
    ctx.generation_stats[role] = {"model_dir": str(model_dir), **stats}
    out: dict[str, dict[str, list[str]]] = {}
    start = 0
    for (suite, group), ps in groups.items():
        out.setdefault(suite, {})[group] = answers[start : start + len(ps)]
        start += len(ps)
    return out


def summary_markdown(ctx: Context, results: dict[str, Result], seconds: float) -> str:
    """The run's evaluation table (eval/summary.md), also printed at the end of the stage."""
    lines = [f"## Evaluation of {ctx.model_name}", "", f"model: `{ctx.model_dir}`"]
    paired = paired_lines(ctx, results)
    if paired:
        lines += ["", "### Paired comparisons (mean per-item difference, 95% bootstrap CI over items)", "", *paired]
    for result in results.values():
        if result.summary:
            lines += ["", *result.summary]
    notes = [n for r in results.values() for n in r.notes]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", f"evaluation time: {seconds:.0f} s", ""]
    return "\n".join(lines)


def paired(results: dict[str, Result]) -> list[tuple[str, dict[str, Any]]]:
    """(suite, comparison) for every comparison a suite put under metrics[<suite>][PAIRED]."""
    return [(name, c) for name, r in results.items() if isinstance(r.metrics, dict)
            for c in r.metrics.get(PAIRED, [])]


def paired_lines(ctx: Context, results: dict[str, Result]) -> list[str]:
    """One verdict line per comparison, led by '<model> vs <partner>'."""
    return [line for _, c in paired(results) for line in verdict_lines([c], f"{ctx.model_name} vs {c['partner']}")]


PAIRED_COLUMNS = ["suite", "measure", "partner", "delta", "lo", "hi", "n", "verdict"]


def mirror(tracker: StageRun, results: dict[str, Result]) -> None:
    """Results are on disk first; the tracker gets each suite's headline numbers, tables, paired comparisons and
    images."""
    tracker.log({k: v for r in results.values() for k, v in r.headline.items()})
    for result in results.values():
        for t in result.tables:
            tracker.table(t.name, t.columns, t.rows)
    comparisons = paired(results)
    if comparisons:
        tracker.table(PAIRED, PAIRED_COLUMNS, [[suite, *(c.get(k) for k in PAIRED_COLUMNS[1:])]
                                               for suite, c in comparisons])
    for result in results.values():
        for name, path in result.images.items():
            if Path(path).exists():
                tracker.image(name, Path(path))
