"""Start a module's ranks as subprocesses: torchrun (CPU, plain torch.distributed) or accelerate launch (GPUs).

Several nodes (`runtime.num_nodes > 1`): node 0 runs the pipeline and leads; every other node runs `follow`
(`python -m superfilter.launch --num-nodes N --node-rank R --master-addr HOST`, or the pipeline itself with
`runtime.node_rank=R`). Each launch on node 0 is handed to the followers through a TCP store on node 0, and every
node starts its own ranks against one rendezvous, so the global ranks span all nodes. Paths in a launch are the
same on every node: the artifact root and the checkout must be on shared disk.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from torch.distributed import DistError, TCPStore

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import ConfigError
from superfilter.presets import conf_dir
from superfilter.runtime import RuntimeConfig

log = logging.getLogger(__name__)

# A follower waits this long for node 0's next launch (scoring, then selection and training on node 0 first).
FOLLOW_TIMEOUT = timedelta(hours=48)
# After its own ranks finish, node 0 waits this long for the other nodes' exit codes.
EXIT_TIMEOUT = timedelta(minutes=10)
STOP = "stop"


class LaunchError(RuntimeError):
    """A launched rank exited with an error; its own traceback is in the output above."""


@dataclass(frozen=True)
class Nodes:
    """This node's place in a multi-node run: how many nodes, which one this is, and where node 0 listens."""

    num_nodes: int
    node_rank: int
    master_addr: str
    master_port: int


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as `gpu[07-09,12],cpu1` (→ gpu07), without calling scontrol."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ConfigError(f"cannot read a host from SLURM_JOB_NODELIST={nodelist!r}; set runtime.master_addr")
    prefix, ranges = match.groups()
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def resolve_nodes(runtime: RuntimeConfig, environ: dict[str, str] | None = None) -> Nodes | None:
    """None on one node; else this node's rank and node 0's address, from the settings or SLURM's variables."""
    if runtime.num_nodes == 1:
        return None
    env = os.environ if environ is None else environ
    rank = runtime.node_rank
    if rank < 0:
        if "SLURM_NODEID" not in env:
            raise ConfigError(f"runtime.num_nodes={runtime.num_nodes} needs runtime.node_rank (this node's index, "
                              "0 on the node that runs the pipeline) outside SLURM")
        rank = int(env["SLURM_NODEID"])
    addr = runtime.master_addr
    if not addr:
        if "SLURM_JOB_NODELIST" not in env:
            raise ConfigError(f"runtime.num_nodes={runtime.num_nodes} needs runtime.master_addr (node 0's "
                              "address) outside SLURM")
        addr = first_slurm_host(env["SLURM_JOB_NODELIST"])
    if not 0 <= rank < runtime.num_nodes:
        raise ConfigError(f"node rank {rank} is outside runtime.num_nodes={runtime.num_nodes}")
    return Nodes(runtime.num_nodes, rank, addr, runtime.master_port)


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_command(module: str, args: Sequence[str], num_processes: int, accelerate_config: Path | None = None,
                 nodes: Nodes | None = None, port: int | None = None) -> list[str]:
    """The command that starts `num_processes` ranks (per node) of `python -m module *args` on this node.

    With an accelerate config file, `accelerate launch` (GPUs); without, torchrun: `accelerate launch --cpu
    --num_processes N` silently starts a single process. With `nodes`, the ranks meet the other nodes' at
    `nodes.master_addr:port` (static rendezvous: node ranks as given, so global ranks are node-major).
    """
    rank = ["-m", module, *args]
    if accelerate_config is None and nodes is None and num_processes == 1:  # one process needs no launcher
        return [sys.executable, *rank]
    if accelerate_config is None:
        where = ["--standalone"] if nodes is None else [
            f"--nnodes={nodes.num_nodes}", f"--node_rank={nodes.node_rank}", "--rdzv_backend=static",
            f"--rdzv_endpoint={nodes.master_addr}:{port}"]
        return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={num_processes}", *rank]
    where = ["--num_processes", str(num_processes), "--main_process_port", str(port or free_port())]
    if nodes is not None:  # accelerate counts processes over all machines
        where = ["--num_processes", str(num_processes * nodes.num_nodes), "--num_machines", str(nodes.num_nodes),
                 "--machine_rank", str(nodes.node_rank), "--main_process_ip", nodes.master_addr,
                 "--main_process_port", str(port)]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config), *where,
            *rank]


def rank_env(threads: int | None) -> dict[str, str]:
    """This environment, with the project importable from any folder and, when given, OpenMP threads per rank."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass(frozen=True)
class Launch:
    """One launch as every node runs it: the module and its arguments, ranks per node, where they meet."""

    module: str
    args: tuple[str, ...]
    num_processes: int
    what: str
    threads: int | None
    accelerate_config: str | None
    cwd: str | None
    port: int | None = None

    def command(self, nodes: Nodes | None) -> list[str]:
        config = Path(self.accelerate_config) if self.accelerate_config else None
        return rank_command(self.module, self.args, self.num_processes, config, nodes, self.port)

    def run(self, nodes: Nodes | None) -> int:
        command = self.command(nodes)
        where = f" on node {nodes.node_rank} of {nodes.num_nodes}" if nodes else ""
        log.info("launching %d %s%s: %s", self.num_processes, self.what, where, " ".join(command))
        return subprocess.run(command, cwd=self.cwd, env=rank_env(self.threads), check=False).returncode


def launch_ranks(module: str, args: Sequence[str], num_processes: int, what: str, *, threads: int | None,
                 accelerate_config: Path | None = None, hint: str = "", cwd: Path | None = None,
                 runtime: RuntimeConfig | None = None) -> None:
    """Run `num_processes` ranks per node of `python -m module *args` to completion (see rank_command, rank_env).

    With `runtime.num_nodes > 1` this is node 0: the followers start their ranks of the same launch.
    A failed rank raises LaunchError naming `what` (e.g. "training ranks"), the exit code and `hint`.
    """
    nodes = resolve_nodes(runtime) if runtime is not None else None
    job = Launch(module, tuple(args), num_processes, what, threads,
                 str(accelerate_config) if accelerate_config else None, str(cwd) if cwd else None)
    if nodes is None:
        codes = {0: job.run(None)}
    else:
        if nodes.node_rank != 0:
            raise RuntimeError(f"node {nodes.node_rank} launched ranks itself; only node 0 leads (see follow())")
        job = Launch(**{**asdict(job), "port": free_port("")})
        codes = leader(nodes).launch(job)
    failed = {node: code for node, code in codes.items() if code != 0}
    if failed:
        advice = f"; {hint}" if hint else ""
        where = "" if nodes is None else f" on node{'s' if len(failed) > 1 else ''} {sorted(failed)}"
        raise LaunchError(f"{what} exited with code {next(iter(failed.values()))}{where}{advice} "
                          f"(command: {' '.join(job.command(nodes))})")


class Leader:
    """Node 0's side of a multi-node run: hands each launch to the followers and collects their exit codes."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.store = TCPStore("0.0.0.0", nodes.master_port, is_master=True, wait_for_workers=False,
                              timeout=FOLLOW_TIMEOUT)
        self.count = 0
        self.stopped = False
        atexit.register(self.stop)

    def followers(self) -> range:
        return range(1, self.nodes.num_nodes)

    def launch(self, job: Launch) -> dict[int, int]:
        """Every node's exit code for `job`: node 0's own ranks run here while the followers run theirs."""
        index = self.count
        self.count += 1
        self.store.set(f"launch/{index}", json.dumps(asdict(job)))
        codes = {0: job.run(self.nodes)}
        keys = [f"exit/{index}/{node}" for node in self.followers()]
        try:
            self.store.wait(keys, EXIT_TIMEOUT)
        except DistError as error:
            missing = [k.rsplit("/", 1)[1] for k in keys if not self.store.check([k])]
            raise LaunchError(f"nodes {missing} did not report within {EXIT_TIMEOUT} of node 0's ranks "
                              f"finishing ({type(error).__name__}); are they running `follow`?") from error
        codes.update({node: int(self.store.get(key)) for node, key in zip(self.followers(), keys, strict=True)})
        return codes

    def stop(self) -> None:
        """Release the followers (they exit) and wait until each has read the message."""
        if self.stopped:
            return
        self.stopped = True
        self.store.set(f"launch/{self.count}", STOP)
        try:
            self.store.wait([f"stopped/{node}" for node in self.followers()], timedelta(seconds=60))
        except DistError:  # a follower that died already cannot confirm; nothing is left to wait for
            log.warning("not every follower confirmed the end of the run")


@functools.cache
def leader(nodes: Nodes) -> Leader:
    """One leader per process and node setup: its TCP store lives until the process exits."""
    return Leader(nodes)


def release_followers(runtime: RuntimeConfig) -> None:
    """The pipeline on node 0 is done: let the followers exit (also done at process exit)."""
    nodes = resolve_nodes(runtime)
    if nodes is not None and nodes.node_rank == 0:  # also when nothing was launched: followers wait for word
        leader(nodes).stop()


def is_follower(runtime: RuntimeConfig) -> bool:
    nodes = resolve_nodes(runtime)
    return nodes is not None and nodes.node_rank > 0


def follow(runtime: RuntimeConfig) -> int:
    """A node other than 0: run this node's ranks of each launch node 0 hands out, until node 0 is done.

    Returns the number of launches run; raises LaunchError when node 0 disappears without saying it is done.
    """
    nodes = resolve_nodes(runtime)
    if nodes is None or nodes.node_rank == 0:
        raise ConfigError("follow() runs on nodes 1.. of a multi-node run (runtime.num_nodes > 1, node_rank > 0)")
    log.info("node %d of %d: following node 0 at %s:%d", nodes.node_rank, nodes.num_nodes, nodes.master_addr,
             nodes.master_port)
    store = TCPStore(nodes.master_addr, nodes.master_port, is_master=False, timeout=FOLLOW_TIMEOUT)
    index = 0
    while True:
        try:
            message = store.get(f"launch/{index}").decode()
        except DistError as error:
            raise LaunchError(f"node 0 ({nodes.master_addr}:{nodes.master_port}) went away before the end of the "
                              f"run ({type(error).__name__}: {error})") from error
        if message == STOP:
            store.set(f"stopped/{nodes.node_rank}", "1")
            log.info("node %d: node 0 is done after %d launches", nodes.node_rank, index)
            return index
        fields = json.loads(message)
        job = Launch(**{**fields, "args": tuple(fields["args"])})
        code = job.run(nodes)
        store.set(f"exit/{index}/{nodes.node_rank}", str(code))
        index += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Follow node 0 of a multi-node run: run this node's ranks of "
                                                 "each of its launches.")
    parser.add_argument("--num-nodes", type=int, required=True)
    parser.add_argument("--node-rank", type=int, default=-1, help="default: $SLURM_NODEID")
    parser.add_argument("--master-addr", default="", help="node 0's address; default: SLURM's first node")
    parser.add_argument("--master-port", type=int, default=RuntimeConfig.master_port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = RuntimeConfig(num_nodes=args.num_nodes, node_rank=args.node_rank, master_addr=args.master_addr,
                            master_port=args.master_port)
    runtime.validate()
    follow(runtime)
    return 0


if __name__ == "__main__":
    sys.exit(main())
