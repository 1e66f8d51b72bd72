"""Start the training ranks as subprocesses: torchrun (CPU, gloo) or accelerate launch (GPUs)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from superfilter.errors import ConfigError
from superfilter.presets import conf_dir

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class LaunchError(RuntimeError):
    """A training rank exited with an error; its own traceback is in the output above."""


def accelerate_config_file(name: str) -> Path:
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    presets = conf_dir() / "accelerate"
    path = presets / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in presets.glob("*.yaml"))
        raise ConfigError(f"train.accelerate_config={name!r}: no such file; use one of {known} or a .yaml path")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(job_file: Path, num_processes: int, device: torch.device, accelerate_config: str) -> list[str]:
    """The command that starts `num_processes` ranks of `python -m train.sft --job job_file`.

    On CPU, torchrun: `accelerate launch --cpu --num_processes N` silently starts a single process.
    """
    worker = ["-m", "train.sft", "--job", str(job_file)]
    if device.type == "cpu":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={num_processes}", *worker]
    return [sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(accelerate_config_file(accelerate_config)),
            "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *worker]


def launch_env(num_processes: int, device: torch.device, num_threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if device.type == "cpu":
        # Ranks share the host's cores; oversubscribing them makes every rank slower than one process alone.
        env["OMP_NUM_THREADS"] = str(num_threads or max(1, (os.cpu_count() or 1) // num_processes))
    return env


def launch(job_file: Path, num_processes: int, device: torch.device, accelerate_config: str,
           num_threads: int = 0) -> None:
    cmd = launch_command(job_file, num_processes, device, accelerate_config)
    log.info("train: launching %d processes: %s", num_processes, " ".join(cmd))
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, env=launch_env(num_processes, device, num_threads), check=False)
    if result.returncode != 0:
        raise LaunchError(f"training ranks exited with code {result.returncode} (command: {' '.join(cmd)})")
