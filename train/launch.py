"""Start the training ranks, `python -m train.rank --job <job file>`: torchrun on CPU, accelerate launch on GPUs."""

from __future__ import annotations

import os
from pathlib import Path

from superfilter.contracts import PROJECT_ROOT
from superfilter.launch import accelerate_config_file, launch_ranks
from superfilter.runtime import RuntimeConfig, resolve_device

RANK_MODULE = "train.rank"  # its main() reads the job file and trains as one rank


def launch(job_file: Path, runtime: RuntimeConfig, accelerate_config: str) -> None:
    """`runtime.num_processes` ranks on this node (and as many on each follower node when num_nodes > 1); one
    process alone is started as plain `python -m train.rank`."""
    if resolve_device(runtime.device).type == "cpu" or runtime.world_size == 1:
        # Ranks share the host's cores; oversubscribing them makes every rank slower than one process alone. One
        # process (CPU or GPU) needs no accelerate config: it starts as plain python (rank_command).
        threads = runtime.num_threads or max(1, (os.cpu_count() or 1) // runtime.num_processes)
        config = None
    else:
        threads, config = None, accelerate_config_file(accelerate_config, "train.accelerate_config")
    # The ranks start in the project folder, so a job path relative to this process (artifact_root=artifacts) is
    # made absolute.
    launch_ranks(RANK_MODULE, ["--job", str(job_file.resolve())], runtime.num_processes, "training ranks",
                 threads=threads, accelerate_config=config, cwd=PROJECT_ROOT, runtime=runtime)
