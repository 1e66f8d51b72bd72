"""Runtime-only settings (device, processes, threads) and their resolution; never part of an artifact key."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from superfilter.errors import ConfigError

DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps)(:\d+)?")
# The GPUs `runtime.gpu` can name, with the memory nvidia-smi reports: a plan for a machine other than this one.
GPU_MEMORY_GIB = {"a100-80gb": 80.0, "h100-80gb": 79.6, "h200": 140.4}


TRAIN_PROCESSES = ("auto", "own", "same")


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_processes: int = 1  # per node; >1 launches scoring/training with accelerate (GPUs) or torchrun (CPU, gloo)
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    gpu: str = "auto"  # auto (what this host has) | a100-80gb | h100-80gb | h200: one per process, for the plan
    # Several nodes: node 0 runs the pipeline, the others follow it (superfilter/launch.py); a shared artifact_root.
    num_nodes: int = 1
    node_rank: int = -1  # this node's index; -1 = $SLURM_NODEID, else 0
    master_addr: str = ""  # node 0's address, reachable from every node; "" = the first node of $SLURM_JOB_NODELIST
    master_port: int = 29400  # node 0's port for the followers; each launch meets on a free port node 0 picks
    # Where one-process training runs: own = a fresh `python -m train.rank` process, whose memory goes back to the OS
    # when it ends (a run that trains several models does not stack them in one process); same = this process;
    # auto = own, except for the tiny test models (starting a process costs more than training them).
    train_process: str = "auto"

    @property
    def world_size(self) -> int:
        """Processes over all nodes: what a sharded model is split over and the global batch is dealt to."""
        return self.num_nodes * self.num_processes

    def validate(self) -> None:
        """Checked on every run, cache hit or not: a bad device must not pass just because nothing was computed."""
        if self.device != "auto" and not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.num_processes < 1:
            raise ConfigError(f"runtime.num_processes must be >= 1, got {self.num_processes}")
        if self.num_threads < 0:
            raise ConfigError(f"runtime.num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")
        if self.gpu != "auto" and self.gpu not in GPU_MEMORY_GIB:
            raise ConfigError(f"runtime.gpu must be auto or one of {list(GPU_MEMORY_GIB)}, got {self.gpu!r}")
        if self.num_nodes < 1:
            raise ConfigError(f"runtime.num_nodes must be >= 1, got {self.num_nodes}")
        if not -1 <= self.node_rank < self.num_nodes:
            raise ConfigError(f"runtime.node_rank must be in [0, {self.num_nodes}) (or -1: $SLURM_NODEID), "
                              f"got {self.node_rank}")
        if self.train_process not in TRAIN_PROCESSES:
            raise ConfigError(f"runtime.train_process must be one of {list(TRAIN_PROCESSES)}, "
                              f"got {self.train_process!r}")
        if not 0 < self.master_port < 65536:
            raise ConfigError(f"runtime.master_port must be a port number (1-65535), got {self.master_port}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name} but CUDA is not available; use runtime.device=cpu")
    return device


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# CPU flags that make dtype=auto pick bf16: bf16 matrix units (AMX) or bf16 dot-product instructions (AVX512-BF16).
# Both measured faster than fp32 for scoring (experiments/scoring/README.md); without them bf16 is emulated, slower.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_BF16_ENV = "SUPERFILTER_CPU_BF16"  # "0": dtype=auto stays fp32 on every CPU (the test suite sets it)
CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class DtypeChoice:
    """A resolved dtype and why it was chosen (logged, and recorded in stage metrics)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's bf16-related feature flags: /proc/cpuinfo where it exists, else torch's own CPU probes."""
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def choose_dtype(name: str, device: torch.device, flags: frozenset[str] | None = None) -> DtypeChoice:
    """auto = bf16 where the hardware computes in bf16 natively (CUDA with bf16, CPUs with AMX-BF16 or
    AVX512-BF16), fp16 on older GPUs, fp32 elsewhere; any other name is taken as asked."""
    if name != "auto":
        if name not in DTYPES:
            raise ConfigError(f"dtype must be auto|{'|'.join(DTYPES)}, got {name!r}")
        return DtypeChoice(DTYPES[name], f"dtype={name} was asked for")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, f"auto: {torch.cuda.get_device_name(device)} computes in bf16")
        return DtypeChoice(torch.float16, f"auto: {torch.cuda.get_device_name(device)} has no bf16, using fp16")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: fp32 on {device.type}")
    if os.environ.get(CPU_BF16_ENV) == "0":
        return DtypeChoice(torch.float32, f"auto: fp32 on CPU because {CPU_BF16_ENV}=0")
    flags = cpu_flags() if flags is None else flags
    units = [f for f in CPU_BF16_FLAGS if f in flags]
    if units:
        return DtypeChoice(torch.bfloat16, f"auto: the CPU computes in bf16 natively ({', '.join(units)})")
    return DtypeChoice(torch.float32, "auto: the CPU has no bf16 instructions (amx_bf16, avx512_bf16), fp32")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return choose_dtype(name, device).dtype


def release_memory() -> None:
    """Hand memory freed by a finished stage back to the OS, so the next stage's peak does not stack on it.

    Measured on the embedded default: after a Gemma-3-270M LoRA run the process kept 2.5 GB resident with no
    tensor alive (glibc keeps freed heap pages on its free lists); gc plus malloc_trim brings it to 1.2 GB.
    """
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):  # glibc only; other allocators return memory themselves
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process, not at every stage and suite
    return ctypes.CDLL(name) if name else None


def reset_peak_rss() -> bool:
    """Restart this process's peak-RSS counter (Linux: /proc/self/clear_refs); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_status_mb(field: str) -> float | None:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...) in MB; None where /proc or the line is absent."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return None


def peak_rss_mb() -> float | None:
    """This process's peak resident memory since the last reset (VmHWM), in MB; None where /proc is absent."""
    return proc_status_mb("VmHWM")
