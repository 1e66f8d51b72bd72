"""Glue between Hydra and the pipeline: typed config, thread settings, run_summary.json, one-line errors."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from superfilter import pipeline
from superfilter.artifacts import write_json_atomic
from superfilter.config import to_config
from superfilter.contracts import EVAL_DIR, EVAL_SUMMARY_FILE, RUN_SUMMARY_FILE
from superfilter.errors import EXIT_USER_ERROR, UserError

log = logging.getLogger("superfilter")


def run_from_hydra(cfg: DictConfig) -> dict:
    try:
        config = to_config(cfg)
        if not config.tracking.group and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            config.tracking.group = f"{config.name} · {HydraConfig.get().sweep.dir}"  # one W&B group per sweep
        if config.runtime.num_threads:
            torch.set_num_threads(config.runtime.num_threads)
        summary = pipeline.run(config)
    except (UserError, OSError) as e:  # OSError: an unwritable folder, a full disk
        message = " ".join(str(e).split())
        log.error("%s", message)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    out = Path(HydraConfig.get().runtime.output_dir) / RUN_SUMMARY_FILE
    summary["overrides"] = list(HydraConfig.get().overrides.task)
    summary["wandb_group"] = config.tracking.group or config.name  # where a report of these runs logs its table
    write_json_atomic(out, summary)
    for stage, info in summary["stages"].items():
        log.info("%-16s %s %s", stage, "cached" if info["cache_hit"] else "built ", info["path"])
    log.info("run summary: %s", out)
    evaluation = summary["stages"].get("eval")
    table = Path(evaluation["path"]) / EVAL_DIR / EVAL_SUMMARY_FILE if evaluation else None
    if table is not None and table.exists():  # the run ends with its evaluation table, built or cached
        print(table.read_text(), flush=True)
    return summary
