"""Resumable checkpoints (torch.distributed.checkpoint, sharded under FSDP) and the final model/ and adapter/.

One format for every strategy: `get_state_dict` names weights and optimizer state the same way for one process,
DDP and FSDP2, and DCP writes each rank's shards in parallel and reloads them into any of them.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from peft import PeftModel, get_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from superfilter.artifacts import write_json_atomic
from superfilter.contracts import ADAPTER_DIR, MODEL_DIR, MODEL_INFO_FILE
from superfilter.models import load_model, load_tokenizer
from superfilter.runtime import resolve_dtype
from train.batches import Step
from train.job import TrainJob
from train.lora import lora_config
from train.merge import write_merged_fp32
from train.sharding import empty_model, gathered_state_dict, unwrap
from train.step import Trainer

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TOKENIZER_COPY = "tokenizer"  # under CHECKPOINT_DIR: the tokenizer as loaded for training, saved for model/
CHECKPOINT_DONE = "_COMPLETE"
LOOP_FILE = "loop.pt"  # scheduler and loss-scaler state (rank 0 writes, every rank reads)
FP32_MERGE_BYTES = 2 * 2**30  # LoRA models up to this size in fp32 are merged and saved in fp32


def stage_tokenizer(tokenizer, out_dir: Path) -> None:
    """Save the training tokenizer now, so that model/ gets its files without loading it again (a 262k-word
    tokenizer takes 3 s to load and 0.2 GB to hold through training)."""
    tokenizer.save_pretrained(out_dir / CHECKPOINT_DIR / TOKENIZER_COPY)


def checkpoint_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    root = out_dir / CHECKPOINT_DIR
    found = [(int(p.name.split("_")[1]), p) for p in root.glob("step_*") if (p / CHECKPOINT_DONE).exists()]
    return sorted(found)


def rng_file(path: Path, rank: int) -> Path:
    return path / f"rng_rank{rank}.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _options(trainer: Trainer) -> StateDictOptions:
    return StateDictOptions(ignore_frozen_params=trainer.trainable_only, strict=not trainer.trainable_only)


def save_checkpoint(trainer: Trainer, out_dir: Path, step: int, keep: int) -> None:
    world = trainer.world
    path = out_dir / CHECKPOINT_DIR / f"step_{step:06d}"
    if world.is_main and path.exists():
        shutil.rmtree(path)  # left incomplete by a killed run
    world.barrier()
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer, options=_options(trainer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path, no_dist=not world.distributed)
    torch.save(rng_state(), rng_file(path, world.rank))  # dropout masks continue as if never interrupted
    if world.is_main:
        scaler = trainer.precision.scaler
        torch.save({"scheduler": trainer.scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else None}, path / LOOP_FILE)
    world.barrier()  # every rank's shards and RNG state are on disk before the checkpoint counts
    if world.is_main:
        (path / CHECKPOINT_DONE).write_text(json.dumps({"step": step, "world_size": world.size}))
        for _, old in checkpoint_dirs(out_dir)[:-keep]:
            shutil.rmtree(old)
    world.barrier()


def resume(trainer: Trainer, out_dir: Path, steps: list[Step]) -> int:
    """Load the newest complete checkpoint; return the number of optimizer steps already done."""
    found = checkpoint_dirs(out_dir)
    if not found:
        return 0
    step, path = found[-1]
    if step > len(steps):
        raise RuntimeError(f"{path} is past the planned {len(steps)} steps; the stage folder is inconsistent")
    model_state, optimizer_state = get_state_dict(trainer.model, trainer.optimizer, options=_options(trainer))
    state = {"model": model_state, "optimizer": optimizer_state}
    # Each rank reads its own shards, resharded if the world changed.
    dcp.load(state, checkpoint_id=path, no_dist=not trainer.world.distributed)
    set_state_dict(trainer.model, trainer.optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=_options(trainer))
    loop = torch.load(path / LOOP_FILE, weights_only=False)
    trainer.scheduler.load_state_dict(loop["scheduler"])
    if trainer.precision.scaler is not None and loop["scaler"] is not None:
        trainer.precision.scaler.load_state_dict(loop["scaler"])
    rng = rng_file(path, trainer.world.rank)
    if rng.exists():
        set_rng_state(torch.load(rng, weights_only=False))
    else:
        log.warning("train: %s has no RNG state for rank %d (saved by another number of processes); dropout "
                    "continues from a fresh seed", path, trainer.world.rank)
    log.info("train: resumed from %s", path)
    return step


def save_outputs(trainer: Trainer, job: TrainJob, out_dir: Path) -> None:
    """model/ (merged or full safetensors + tokenizer + what eval needs) and, for LoRA, adapter/.

    One process and DDP hold the whole model on rank 0. FSDP holds shards: the full weights (LoRA: the adapters)
    are gathered into rank 0's host memory and put into a model built there.
    """
    world = trainer.world
    lora = job.train.method == "lora"
    state = gathered_state_dict(trainer.model, world, trainable_only=lora) if trainer.strategy.sharded else None
    if world.is_main:
        serving = resolve_dtype(job.model.dtype, world.device)
        model = unwrap(trainer.model) if state is None else assembled_model(job, state, serving)
        write_outputs(model, job, out_dir, serving)
    world.barrier()


def assembled_model(job: TrainJob, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """A whole model on the CPU holding gathered weights: LoRA on a freshly loaded base, or the full weights."""
    if job.train.method == "lora":
        base, _ = load_model(job.model, torch.device("cpu"), dtype=dtype)
        model = get_peft_model(base, lora_config(base, job.train))
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise RuntimeError(f"gathered adapter weights do not fit the model: {unexpected[:5]}")
        return model
    model = empty_model(job.model, dtype, torch.device("cpu"), load_tokenizer(job.model).pad_token_id)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model.tie_weights()
    return model


def merged_dtype(model, serving: torch.dtype) -> torch.dtype:
    """fp32 for LoRA models small enough: model/ then equals the adapter on its base loaded in fp32 to float
    rounding, where a merge into a half-precision base rounds every merged weight to that precision."""
    n_bytes = sum(p.numel() for p in model.parameters()) * 4
    return torch.float32 if n_bytes <= FP32_MERGE_BYTES else serving


def write_outputs(model, job: TrainJob, out_dir: Path, serving: torch.dtype) -> None:
    cfg = job.train
    model_dir, adapter_dir = out_dir / MODEL_DIR, out_dir / ADAPTER_DIR
    weights = merged_dtype(model, serving) if cfg.method == "lora" else serving
    # base_model_spec rebuilds the base anywhere: superfilter.models.load_model(ModelConfig(**base_model_spec)).
    info = {"template": cfg.template, "base_model": job.model.name, "base_model_spec": asdict(job.model),
            "method": cfg.method, "train_preset": cfg.name, "max_length": cfg.max_length,
            "weights_dtype": str(weights).removeprefix("torch.")}
    if cfg.method == "lora":
        for adapter in model.peft_config.values():  # not the machine-local folder the base was loaded from
            adapter.base_model_name_or_path = job.model.path
        # LoRA never trains the embeddings; "auto" would look the base up by that name (the Hub) to check.
        model.save_pretrained(adapter_dir, save_embedding_layers=False)
        write_json_atomic(adapter_dir / MODEL_INFO_FILE, info)
        # The merge onto the base as a user loads it in fp32, not the one trained in `serving`: patched into a copy
        # of the base's fp32 files where it can be (one weight in memory), else on a freshly loaded fp32 base.
        if weights == torch.float32 and write_merged_fp32(model, job, model_dir):
            base = model.get_base_model()
            config = copy.deepcopy(base.config)
            config.dtype = weights
            config.save_pretrained(model_dir)
            base.generation_config.save_pretrained(model_dir)
            model = None
        elif weights == torch.float32:
            trained = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
            model = assembled_model(job, trained, torch.float32)
        model = model.merge_and_unload() if isinstance(model, PeftModel) else model
    if model is not None:
        model.to(weights).save_pretrained(model_dir)
    for file in (out_dir / CHECKPOINT_DIR / TOKENIZER_COPY).iterdir():  # stage_tokenizer, at the run's start
        shutil.copyfile(file, model_dir / file.name)
    write_json_atomic(model_dir / MODEL_INFO_FILE, info)
