"""The score stage: resumable shards in the stage folder, one process or several, then metrics and plots."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from superfilter.contracts import SCORES_FILE
from superfilter.errors import ConfigError, UserError
from superfilter.models import ModelConfig, load_model
from superfilter.runtime import RuntimeConfig, choose_dtype, resolve_device
from superfilter.scoring.config import SKIP_REASONS, ScoreConfig
from superfilter.scoring.engine import make_engine
from superfilter.scoring.launcher import balance_shards, launch_workers
from superfilter.scoring.plots import HISTOGRAM_FILE, plot_ifd_histogram
from superfilter.scoring.shards import (
    SHARD_DIR,
    ExampleFile,
    load_or_plan_layout,
    merge_shards,
    score_shards_to_dir,
    shard_done,
    write_parquet_atomic,
)
from superfilter.tracking import StageRun

log = logging.getLogger(__name__)


def score_metrics(scores: pd.DataFrame, cfg: ScoreConfig) -> dict[str, Any]:
    ifd = scores["ifd"].to_numpy(dtype=np.float64)
    finite = ifd[np.isfinite(ifd)]
    reasons = scores.loc[scores["skip_reason"] != "", "skip_reason"].value_counts()
    quantiles = {f"p{int(q * 100):02d}": float(np.quantile(finite, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)
                 if len(finite)}
    return {
        "n_records": len(scores),
        "n_scored": int(len(finite)),
        "n_skipped": int(len(scores) - len(finite)),
        "skip_fraction": float(1 - len(finite) / len(scores)) if len(scores) else 0.0,
        "skip_reasons": {str(k): int(v) for k, v in reasons.items()},
        "ifd_quantiles": ({"min": float(finite.min()), **quantiles, "max": float(finite.max())}
                          if len(finite) else {}),
        "ifd_mean": float(finite.mean()) if len(finite) else None,
        "share_ifd_ge_1": float((finite >= 1).mean()) if len(finite) else None,
        "mean_response_tokens": float(scores["n_response_tokens"].mean()) if len(scores) else None,
        "ifd_form": cfg.ifd_form,
        "prompt": cfg.prompt,
        "boundary": cfg.boundary,
        "turns": cfg.turns,
    }


def _log_skips(scores: pd.DataFrame) -> None:
    skipped = scores[scores["skip_reason"] != ""]
    for reason, group in skipped.groupby("skip_reason"):
        log.warning("score: %d records skipped, %s (%s), e.g. ids %s", len(group), reason,
                    SKIP_REASONS.get(str(reason), ""), ", ".join(group["id"].head(3)))


def score_stage(
    examples_path: Path, model: ModelConfig, cfg: ScoreConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Write out_dir/scores.parquet (+ plots) for the records in examples_path; return metrics."""
    cfg.validate()
    if cfg.prompt == "chat" and not model.chat_template:
        raise ConfigError(f"score.prompt=chat but model {model.name} has chat_template=false")
    examples = ExampleFile(examples_path)
    shard_dir = Path(out_dir) / SHARD_DIR
    layout = load_or_plan_layout(shard_dir, examples, cfg.shard_size)
    todo = [s for s in range(len(layout)) if not shard_done(shard_dir, s)]
    n_todo = sum(len(layout[s]) for s in todo)
    if len(todo) < len(layout):
        log.info("score: resuming, %d of %d shards already scored; %d records left",
                 len(layout) - len(todo), len(layout), n_todo)
    device = resolve_device(runtime.device)
    dtype = choose_dtype(model.dtype, device)
    log.info("score: %s in %s on %s (%s)", model.name, dtype.name, device, dtype.reason)
    seconds = 0.0
    if todo and runtime.world_size > 1:
        costs = [float(examples.costs[layout[s]].sum()) for s in todo]
        started = time.perf_counter()
        launch_workers(examples_path, model, cfg, runtime, shard_dir,
                       balance_shards(todo, costs, runtime.world_size))
        seconds = time.perf_counter() - started
    elif todo:
        engine = make_engine(*load_model(model, device, dtype=dtype.dtype))
        started = time.perf_counter()
        score_shards_to_dir(engine, examples, layout, todo, cfg, shard_dir, progress=True)
        seconds = time.perf_counter() - started
    merged = merge_shards(shard_dir, layout, len(examples))
    write_parquet_atomic(merged, Path(out_dir) / SCORES_FILE)
    scores = merged.select(["id", "n_response_tokens", "ifd", "skip_reason"]).to_pandas()
    del merged
    metrics = score_metrics(scores, cfg)
    metrics.update({
        "model": model.name,
        "dtype": dtype.name,
        "dtype_reason": dtype.reason,
        "n_processes": runtime.world_size,
        "records_scored_this_run": n_todo,
        "scoring_seconds": round(seconds, 3),
        "records_per_s": round(n_todo / seconds, 3) if seconds > 0 else None,
    })
    if metrics["n_scored"] == 0 and metrics["n_records"]:
        _log_skips(scores)
        # Nothing to select from, whatever max_skip_fraction allows: stop here rather than hand on an empty ranking.
        reasons = "; ".join(f"{n} {k} ({SKIP_REASONS.get(k, '')})" for k, n in metrics["skip_reasons"].items())
        raise UserError(f"none of the {metrics['n_records']} records could be scored: {reasons}; each record's "
                        f"skip_reason is in {Path(out_dir) / SCORES_FILE}")
    histogram = Path(out_dir) / HISTOGRAM_FILE
    plot_ifd_histogram(scores, histogram, f"{model.name} IFD ({cfg.ifd_form})")
    tracker.image("ifd_hist", histogram)
    _log_skips(scores)
    skipped = scores[scores["skip_reason"] != ""]
    if len(skipped):
        tracker.table("skipped", ["id", "skip_reason"], skipped[["id", "skip_reason"]].head(1000).values.tolist())
    log.info("score: %d records, %d scored, %.1f%% with IFD >= 1, %s records/s", metrics["n_records"],
             metrics["n_scored"], 100 * (metrics["share_ifd_ge_1"] or 0.0), metrics["records_per_s"])
    if metrics["skip_fraction"] > cfg.max_skip_fraction:
        raise UserError(
            f"{metrics['n_skipped']} of {metrics['n_records']} records ({metrics['skip_fraction']:.1%}) could not "
            f"be scored ({metrics['skip_reasons']}), more than score.max_skip_fraction={cfg.max_skip_fraction}; "
            f"see {Path(out_dir) / SCORES_FILE}. Raise score.max_length or score.max_skip_fraction, "
            "or fix the data"
        )
    return metrics
