"""One optimizer step over a planned global batch: micro-batches, gradient accumulation, clipping, its metrics row."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from superfilter.tokenized import Encoded
from train.batches import Step, rank_micro_batches
from train.collate import collate
from train.config import TrainConfig
from train.loss import token_loss_sum
from train.precision import Precision
from train.sharding import Strategy, accumulating
from train.world import World


@dataclass
class Trainer:
    """What a rank trains with: its world, the strategy, precision, the (wrapped) model and its optimizer."""

    world: World
    strategy: Strategy
    precision: Precision
    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable_only: bool  # LoRA: checkpoints hold the adapters; the frozen base comes from the model spec


def train_step(trainer: Trainer, step: Step, encoded: list[Encoded], lengths: list[int], pad_id: int,
               cfg: TrainConfig, n_micro: int) -> tuple[dict[str, Any], list[list[str]]]:
    """One optimizer step over the global batch; the gradient is that of the mean loss over its response tokens.

    Each micro-batch's summed token loss is divided by the step's response-token count over all processes
    (known in advance from the plan), times the process count that DDP and FSDP average gradients over. So
    micro-batch size, packing and process count leave the update unchanged (up to rounding).
    """
    tick = time.perf_counter()
    world, model = trainer.world, trainer.model
    chunks = rank_micro_batches(step.records, lengths, world.rank, world.size, cfg.micro_batch_size, n_micro)
    n_trainable = sum(encoded[i].n_trainable for i in step.records)
    scale = world.size / n_trainable
    totals = torch.zeros(2, dtype=torch.float64, device=world.device)  # loss sum, computed slots
    model.train()
    for index, chunk in enumerate(chunks):
        # A process left without records at an epoch's end still joins the gradient collectives, with weight 0.
        batch = collate([encoded[i] for i in chunk or step.records[:1]], cfg.packing, pad_id,
                        cfg.pad_to_multiple_of).to(world.device)
        with accumulating(model, trainer.strategy, last=index == len(chunks) - 1):
            loss_sum = token_loss_sum(model, batch, trainer.precision.autocast())
            trainer.precision.backward(loss_sum * (scale if chunk else 0.0))
        if chunk:
            totals += torch.tensor([loss_sum.item(), batch.n_slots], dtype=torch.float64, device=totals.device)
    grad_norm = clip_gradients(trainer, cfg.max_grad_norm)
    lr = trainer.optimizer.param_groups[0]["lr"]
    trainer.precision.step(trainer.optimizer)
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    totals = world.sum(totals)
    elapsed = time.perf_counter() - tick
    n_tokens = sum(encoded[i].n_tokens for i in step.records)
    row = {
        "step": step.index, "epoch": step.epoch, "loss": totals[0].item() / n_trainable, "lr": lr,
        "grad_norm": grad_norm, "n_examples": len(step.records), "n_tokens": n_tokens,
        "n_trainable_tokens": n_trainable, "n_slots": int(totals[1].item()), "step_time_s": elapsed,
        "tokens_per_s": n_tokens / elapsed,
    }
    if world.device.type == "cuda":
        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(world.device) / 2**30
    return row, [[encoded[i].id for i in chunk] for chunk in chunks if chunk]


def clip_gradients(trainer: Trainer, max_norm: float) -> float:
    """The global gradient norm before clipping (over every rank's shards under FSDP)."""
    trainer.precision.unscale(trainer.optimizer)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)
