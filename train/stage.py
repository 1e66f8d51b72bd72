"""The train stage: finetune the strong model on subset.jsonl; writes model/ (safetensors) into the stage folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from superfilter.artifacts import read_json, write_json_atomic
from superfilter.contracts import LOSS_CURVE_FILE, TRAIN_METRICS_FILE, TRAIN_RESULT_FILE
from superfilter.models import ModelConfig, forget_tokenizers
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train import report
from train.config import TrainConfig
from train.job import JOB_FILE, TrainJob
from train.launch import launch
from train.rank import run
from train.sharding import check_world

log = logging.getLogger(__name__)


def check(cfg: TrainConfig, runtime: RuntimeConfig) -> None:
    """Bad settings and an inconsistent world (a sharding config on one process, a global batch that does not
    split over the processes) fail here, before any model loads; the pipeline calls this first."""
    cfg.validate()
    runtime.validate()
    check_world(cfg, runtime)


def own_process(runtime: RuntimeConfig, model: ModelConfig) -> bool:
    """Whether one-process training starts a process of its own (`runtime.train_process`)."""
    return runtime.train_process == "own" or (runtime.train_process == "auto" and model.source != "tiny")


def train_stage(
    subset_path: Path, model: ModelConfig, cfg: TrainConfig, seed: int, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Finetune in launched ranks (`runtime.num_processes` on each of `runtime.num_nodes` nodes; one process in a
    process of its own unless `runtime.train_process` says otherwise) or in this process; return metrics."""
    check(cfg, runtime)
    job = TrainJob(str(Path(subset_path).resolve()), model, cfg, seed, runtime)
    if (Path(out_dir) / TRAIN_RESULT_FILE).exists():  # finished, killed before the pipeline marked it: redo nothing
        log.info("train: %s already finished", out_dir)
        return read_json(Path(out_dir) / TRAIN_RESULT_FILE)
    job_file = Path(out_dir) / JOB_FILE
    write_json_atomic(job_file, job.to_dict())
    if runtime.world_size == 1 and not own_process(runtime, model):
        return run(job, Path(out_dir), tracker)
    forget_tokenizers()  # this process waits while the ranks train
    launch(job_file, runtime, cfg.accelerate_config)
    rows = report.read_metrics(Path(out_dir) / TRAIN_METRICS_FILE)
    for row in rows:
        tracker.log(row, step=row["step"])
    tracker.image("loss_curve", Path(out_dir) / LOSS_CURVE_FILE)
    return read_json(Path(out_dir) / TRAIN_RESULT_FILE)
