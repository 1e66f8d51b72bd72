"""Runtime-only settings (device, processes, threads) and their resolution; never part of an artifact key."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from superfilter.errors import ConfigError


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_processes: int = 1  # >1 launches scoring/training with accelerate (GPUs) or torchrun (CPU, gloo)
    num_threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default


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
