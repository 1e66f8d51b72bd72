"""The train stage: finetune the strong model on subset.jsonl; writes model/ (safetensors) into the stage folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from superfilter.artifacts import read_json, write_json_atomic
from superfilter.contracts import LOSS_CURVE_FILE, TRAIN_METRICS_FILE, TRAIN_RESULT_FILE
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig, resolve_device
from superfilter.tracking import StageRun
from train import report
from train.config import TrainConfig
from train.job import JOB_FILE, TrainJob
from train.launch import launch
from train.rank import run

log = logging.getLogger(__name__)


def train_stage(
    subset_path: Path, model: ModelConfig, cfg: TrainConfig, seed: int, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Finetune in this process (one device) or in `runtime.num_processes` launched ranks; return metrics."""
    cfg.validate()
    if runtime.num_processes < 1:
        raise ConfigError(f"runtime.num_processes must be >= 1, got {runtime.num_processes}")
    job = TrainJob(str(Path(subset_path).resolve()), model, cfg, seed, runtime)
    if (Path(out_dir) / TRAIN_RESULT_FILE).exists():  # finished, killed before the pipeline marked it: redo nothing
        log.info("train: %s already finished", out_dir)
        return read_json(Path(out_dir) / TRAIN_RESULT_FILE)
    job_file = Path(out_dir) / JOB_FILE
    write_json_atomic(job_file, job.to_dict())
    if runtime.num_processes == 1:
        return run(job, Path(out_dir), tracker)
    launch(job_file, runtime.num_processes, resolve_device(runtime.device), cfg.accelerate_config,
           runtime.num_threads)
    rows = report.read_metrics(Path(out_dir) / TRAIN_METRICS_FILE)
    for row in rows:
        tracker.log(row, step=row["step"])
    tracker.image("loss_curve", Path(out_dir) / LOSS_CURVE_FILE)
    return read_json(Path(out_dir) / TRAIN_RESULT_FILE)
