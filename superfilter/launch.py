"""Start a module's ranks as subprocesses: torchrun (CPU, plain torch.distributed) or accelerate launch (GPUs)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import ConfigError
from superfilter.presets import conf_dir

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """A launched rank exited with an error; its own traceback is in the output above."""


def accelerate_config_file(name: str, setting: str) -> Path:
    """A .yaml path as given, else conf/accelerate/<name>.yaml; `setting` names the config field in the error."""
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    presets = conf_dir() / "accelerate"
    path = presets / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in presets.glob("*.yaml"))
        raise ConfigError(f"{setting}={name!r}: no such file; use one of {known} or a .yaml path")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_command(module: str, args: Sequence[str], num_processes: int,
                 accelerate_config: Path | None = None) -> list[str]:
    """The command that starts `num_processes` ranks of `python -m module *args`.

    With an accelerate config file, `accelerate launch` (GPUs); without, torchrun: `accelerate launch --cpu
    --num_processes N` silently starts a single process.
    """
    rank = ["-m", module, *args]
    if accelerate_config is None:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
                *rank]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
            "--num_processes", str(num_processes), "--main_process_port", str(free_port()), *rank]


def rank_env(threads: int | None) -> dict[str, str]:
    """This environment, with the project importable from any folder and, when given, OpenMP threads per rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def launch_ranks(module: str, args: Sequence[str], num_processes: int, what: str, *, threads: int | None,
                 accelerate_config: Path | None = None, hint: str = "", cwd: Path | None = None) -> None:
    """Run `num_processes` ranks of `python -m module *args` to completion (see rank_command, rank_env).

    A failed rank raises LaunchError naming `what` (e.g. "training ranks"), the exit code and `hint`.
    """
    command = rank_command(module, args, num_processes, accelerate_config)
    log.info("launching %d %s: %s", num_processes, what, " ".join(command))
    result = subprocess.run(command, cwd=cwd, env=rank_env(threads), check=False)
    if result.returncode != 0:
        advice = f"; {hint}" if hint else ""
        raise LaunchError(f"{what} exited with code {result.returncode}{advice} (command: {' '.join(command)})")
