"""One optimizer step over a planned global batch: micro-batches, gradient accumulation, clipping, its metrics row."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from superfilter.tokenized import Encoded
from train.batches import Step, rank_micro_batches
from train.collate import collate
from train.config import TrainConfig
from train.loss import token_loss_sum


def train_step(accelerator, model, optimizer, scheduler, step: Step, encoded: list[Encoded], lengths: list[int],
               pad_id: int, cfg: TrainConfig, n_micro: int) -> tuple[dict[str, Any], list[list[str]]]:
    """One optimizer step over the global batch; the gradient is that of the mean loss over its response tokens.

    Each micro-batch's summed token loss is divided by the step's response-token count over all processes
    (known in advance from the plan), times the process and accumulation counts that DDP and accelerate divide
    by again. So micro-batch size, packing and process count leave the update unchanged (up to rounding).
    """
    tick = time.perf_counter()
    chunks = rank_micro_batches(step.records, lengths, accelerator.process_index, accelerator.num_processes,
                                cfg.micro_batch_size, n_micro)
    n_trainable = sum(encoded[i].n_trainable for i in step.records)
    scale = accelerator.num_processes * n_micro / n_trainable
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # loss sum, computed slots
    model.train()
    for chunk in chunks:
        # A process left without records at an epoch's end still joins the gradient all-reduce, with weight 0.
        batch = collate([encoded[i] for i in chunk or step.records[:1]], cfg.packing, pad_id,
                        cfg.pad_to_multiple_of).to(accelerator.device)
        with accelerator.accumulate(model):
            loss_sum = token_loss_sum(model, batch)
            accelerator.backward(loss_sum * (scale if chunk else 0.0))
        if chunk:
            totals += torch.tensor([loss_sum.item(), batch.n_slots], dtype=torch.float64, device=totals.device)
    if not accelerator.sync_gradients:
        raise RuntimeError("gradient accumulation boundary out of step with the plan")
    grad_norm = clip_gradients(accelerator, model, cfg.max_grad_norm)
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    totals = accelerator.reduce(totals, reduction="sum")
    elapsed = time.perf_counter() - tick
    n_tokens = sum(encoded[i].n_tokens for i in step.records)
    row = {
        "step": step.index, "epoch": step.epoch, "loss": totals[0].item() / n_trainable, "lr": lr,
        "grad_norm": grad_norm, "n_examples": len(step.records), "n_tokens": n_tokens,
        "n_trainable_tokens": n_trainable, "n_slots": int(totals[1].item()), "step_time_s": elapsed,
        "tokens_per_s": n_tokens / elapsed,
    }
    if accelerator.device.type == "cuda":
        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
    return row, [[encoded[i].id for i in chunk] for chunk in chunks if chunk]


def clip_gradients(accelerator, model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    norm = accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm) if norm is not None else math.nan  # DeepSpeed reports no norm here
