"""Schema of the train stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from superfilter.errors import ConfigError
from superfilter.prompts import TEMPLATES
from superfilter.runtime import choose_dtype

METHODS = ("lora", "full")
TRUNCATION = ("truncate", "drop")
SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty = the architecture's defaults (train/lora.py)


@dataclass
class TrainConfig:
    # Labels and settings that change speed or bookkeeping, never the trained weights: left out of the key.
    # micro_batch_size and packing are exact rewrites of the same global-batch mean loss (see train/step.py).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "name", "micro_batch_size", "packing", "pad_to_multiple_of", "gradient_checkpointing", "save_steps",
        "keep_checkpoints", "accelerate_config",
    )

    name: str = "lora"
    method: str = "lora"  # lora | full
    template: str = "alpaca"  # alpaca | vicuna_v1.1 | chat (the tokenizer's chat template)
    lr: float = 2e-4
    lr_scheduler: str = "cosine"  # cosine | linear | constant, each after a linear warmup
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0 = no clipping
    epochs: float = 1.0
    max_steps: int = 0  # >0: exactly this many optimizer steps (epochs ignored), for smoke runs and benchmarks
    batch_size: int = 8  # global batch: examples per optimizer step, over all processes
    micro_batch_size: int = 1  # examples per forward pass on one process; the rest is gradient accumulation
    max_length: int = 512  # tokens per example, prompt included
    truncation: str = "truncate"  # truncate (cut the tail, keep if a response token survives) | drop (skip it)
    packing: bool = True  # concatenate a micro-batch into one row (no padding), attention kept per example
    # Round each micro-batch's length up to this (padding with no targets): a handful of shapes instead of one per
    # record lets oneDNN/cuBLAS reuse kernels and the allocator reuse buffers (CPU: 9% faster, 0.6 GiB less peak).
    pad_to_multiple_of: int = 64
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (bf16 where dtype=auto picks bf16; else fp16 GPU, none CPU) | no|bf16|fp16
    lora: LoraSettings = field(default_factory=LoraSettings)
    save_steps: int = 5  # checkpoint every N optimizer steps (resume point after a crash); 0 = never
    keep_checkpoints: int = 1
    accelerate_config: str = "ddp"  # conf/accelerate/<name>.yaml (or a path) for multi-GPU launches

    def validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("template", self.template, TEMPLATES)
        _choice("truncation", self.truncation, TRUNCATION)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        positive = {"lr": self.lr, "batch_size": self.batch_size, "micro_batch_size": self.micro_batch_size,
                    "pad_to_multiple_of": self.pad_to_multiple_of, "keep_checkpoints": self.keep_checkpoints,
                    "lora.r": self.lora.r, "lora.alpha": self.lora.alpha}
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"train.{name} must be > 0, got {value}")
        if self.max_length < 2:
            raise ConfigError(f"train.max_length must be >= 2 (a prompt token and a response token), "
                              f"got {self.max_length}")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("train.epochs must be > 0 (or set train.max_steps)")
        for name, value in {"max_steps": self.max_steps, "save_steps": self.save_steps,
                            "weight_decay": self.weight_decay, "max_grad_norm": self.max_grad_norm}.items():
            if value < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0.0 <= self.lora.dropout < 1.0:
            raise ConfigError(f"train.lora.dropout must be in [0, 1), got {self.lora.dropout}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls(**{**values, "lora": LoraSettings(**values.get("lora", {}))})


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"train.{name} must be one of {list(allowed)}, got {value!r}")


def resolve_mixed_precision(name: str, device: torch.device) -> str:
    """auto: bf16 autocast where dtype=auto computes in bf16 (GPUs with bf16, CPUs with bf16 matrix units), fp16
    on older GPUs, none elsewhere."""
    if name != "auto":
        return name
    chosen = choose_dtype("auto", device).dtype
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(chosen, "no")
