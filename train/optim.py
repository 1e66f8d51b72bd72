"""AdamW (decay on matrices only) and the learning-rate schedule: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import math

import torch

from train.config import TrainConfig


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.Optimizer:
    # Decay matrices only; biases and norm gains stay free (the usual AdamW practice; the paper uses 0 anyway).
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """Multiplier of the peak lr at 0-based optimizer step `step`: linear warmup, then cosine/linear/constant.

    Warmup starts at 1/(warmup+1), not 0 as in transformers' schedules: a zero first step wastes a step, which
    matters in the short CPU runs (a 10-record subset trains for two steps).
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, n_steps: int):
    warmup = math.ceil(cfg.warmup_ratio * n_steps)

    def factor(step: int) -> float:
        return lr_factor(step, warmup, n_steps, cfg.lr_scheduler)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
