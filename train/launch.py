"""Start the training ranks, `python -m train.rank --job <job file>`: torchrun on CPU, accelerate launch on GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from superfilter.contracts import PROJECT_ROOT
from superfilter.launch import accelerate_config_file, launch_ranks

RANK_MODULE = "train.rank"  # its main() reads the job file and trains as one rank


def launch(job_file: Path, num_processes: int, device: torch.device, accelerate_config: str,
           num_threads: int = 0) -> None:
    if device.type == "cpu":
        # Ranks share the host's cores; oversubscribing them makes every rank slower than one process alone.
        threads, config = num_threads or max(1, (os.cpu_count() or 1) // num_processes), None
    else:
        threads, config = None, accelerate_config_file(accelerate_config, "train.accelerate_config")
    launch_ranks(RANK_MODULE, ["--job", str(job_file)], num_processes, "training ranks", threads=threads,
                 accelerate_config=config, cwd=PROJECT_ROOT)
