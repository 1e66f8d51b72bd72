"""Mixed precision for one rank: the weights' dtype, the forward's autocast, and fp16's loss scaling."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from superfilter.errors import ConfigError
from superfilter.runtime import resolve_dtype
from train.config import resolve_mixed_precision
from train.job import TrainJob
from train.sharding import Strategy

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """`mode` no | bf16 | fp16: autocast around the forward; fp16 also scales the loss (GradScaler)."""

    mode: str
    device_type: str
    scaler: torch.amp.GradScaler | None = None

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return AUTOCAST_DTYPES.get(self.mode)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device_type, dtype=self.autocast_dtype or torch.float32,
                              enabled=self.mode != "no")

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: the gradients back at their true size."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        self.scaler.update()


def make_precision(name: str, device: torch.device, strategy: Strategy) -> Precision:
    mode = resolve_mixed_precision(name, device)
    if mode == "fp16" and strategy.sharded:
        raise ConfigError("FSDP with fp16 autocast is not supported (its gradients would need a sharded loss "
                          "scaler); use train.mixed_precision=bf16 on GPUs with bf16, or no")
    scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None
    return Precision(mode, device.type, scaler)


def weights_dtype(job: TrainJob, device: torch.device) -> torch.dtype:
    """LoRA: the frozen base in the serving dtype. Full: fp32 master weights when autocast runs in half precision."""
    if job.train.method == "full" and resolve_mixed_precision(job.train.mixed_precision, device) != "no":
        return torch.float32
    return resolve_dtype(job.model.dtype, device)
