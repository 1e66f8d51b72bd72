"""Several scoring processes, on one node or several: shards balanced over workers, launched with torchrun."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from superfilter.artifacts import write_json_atomic
from superfilter.errors import ConfigError
from superfilter.launch import launch_ranks
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig, resolve_device
from superfilter.scoring.config import ScoreConfig

WORKER_JOB_FILE = "worker_job.json"


def balance_shards(shards: Sequence[int], costs: Sequence[float], n_workers: int) -> list[list[int]]:
    """Longest-processing-time assignment: each shard to the worker with the least work so far."""
    load = [0.0] * n_workers
    assignment: list[list[int]] = [[] for _ in range(n_workers)]
    for shard, cost in sorted(zip(shards, costs, strict=True), key=lambda sc: (-sc[1], sc[0])):
        worker = min(range(n_workers), key=lambda w: (load[w], w))
        assignment[worker].append(shard)
        load[worker] += cost
    return [sorted(a) for a in assignment]


def launch_workers(examples_path: Path, model: ModelConfig, cfg: ScoreConfig, runtime: RuntimeConfig,
                   shard_dir: Path, assignment: list[list[int]]) -> None:
    """Score the assigned shards with torchrun, one process per entry (global rank: node-major over
    `runtime.num_nodes` nodes of `runtime.num_processes` each, per GPU or CPU processes)."""
    n = runtime.num_processes
    if len(assignment) != runtime.world_size:
        raise ValueError(f"{len(assignment)} shares for {runtime.world_size} processes")
    device = resolve_device(runtime.device)
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(f"runtime.num_processes={n} but only {torch.cuda.device_count()} GPUs are visible")
    threads = max(1, (runtime.num_threads or torch.get_num_threads()) // n) if device.type == "cpu" else 1
    job = {"examples_path": str(examples_path), "model": asdict(model), "score": asdict(cfg),
           "device": device.type, "shard_dir": str(shard_dir), "assignment": assignment, "threads": threads}
    job_path = shard_dir / WORKER_JOB_FILE
    write_json_atomic(job_path, job)
    # torchrun on GPUs too: a worker picks its own GPU and only waits at a gloo barrier, no accelerate needed.
    launch_ranks("superfilter.scoring.worker", [str(job_path)], n, f"{device.type} scoring workers", threads=threads,
                 hint=f"finished shards are kept in {shard_dir} and a rerun resumes from them", runtime=runtime)
