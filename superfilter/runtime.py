"""Runtime-only settings (device, processes, threads) and their resolution; never part of an artifact key."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from superfilter.errors import ConfigError

DEVICE_PATTERN = re.compile(r"(cpu|cuda|mps)(:\d+)?")


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_processes: int = 1  # >1 launches scoring/training with accelerate (GPUs) or torchrun (CPU, gloo)
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default

    def validate(self) -> None:
        """Checked on every run, cache hit or not: a bad device must not pass just because nothing was computed."""
        if self.device != "auto" and not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"runtime.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        if self.num_processes < 1:
            raise ConfigError(f"runtime.num_processes must be >= 1, got {self.num_processes}")
        if self.num_threads < 0:
            raise ConfigError(f"runtime.num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name} but CUDA is not available; use runtime.device=cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto = fp32 on CPU (bf16 is slower there without AMX), bf16 on GPUs that support it."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"dtype must be auto|float32|bfloat16|float16, got {name!r}") from None
