"""One rank's accelerate setup: the Accelerator (autocast, accumulation), the world-size check, the weights dtype."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from superfilter.errors import ConfigError
from superfilter.runtime import resolve_dtype
from train.config import TrainConfig, resolve_mixed_precision
from train.job import TrainJob


def make_accelerator(device: torch.device, cfg: TrainConfig, n_micro: int):
    accelerator = Accelerator(cpu=device.type == "cpu",
                              mixed_precision=resolve_mixed_precision(cfg.mixed_precision, device),
                              gradient_accumulation_steps=n_micro)
    # ACCELERATE_GRADIENT_ACCUMULATION_STEPS (set by an accelerate config) silently wins over the argument above.
    if accelerator.gradient_accumulation_steps != n_micro:
        raise ConfigError(
            f"the accelerate config sets gradient_accumulation_steps={accelerator.gradient_accumulation_steps}, but "
            f"train.batch_size/micro_batch_size need {n_micro}; remove it from the accelerate config"
        )
    return accelerator


def weights_dtype(job: TrainJob, device: torch.device) -> torch.dtype:
    """LoRA: the frozen base in the serving dtype. Full: fp32 master weights when autocast runs in half precision."""
    if job.train.method == "full" and resolve_mixed_precision(job.train.mixed_precision, device) != "no":
        return torch.float32
    return resolve_dtype(job.model.dtype, device)


def check_world_size(actual: int, expected: int) -> None:
    # A plain Accelerator() on CPU lets every rank train alone, without an error: refuse that.
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if actual != expected or env_world != expected:
        raise RuntimeError(
            f"expected {expected} training processes, accelerate sees {actual} (WORLD_SIZE={env_world}); "
            "start several ranks through train_stage (torchrun on CPU, accelerate launch on GPUs)"
        )


def reset_accelerate() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
