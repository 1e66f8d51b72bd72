"""Resumable checkpoints (accelerate save_state) and the final outputs: model/ (merged or full weights) and adapter/."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate.utils import DistributedType
from peft import PeftModel

from superfilter.artifacts import write_json_atomic
from superfilter.contracts import ADAPTER_DIR, MODEL_DIR, MODEL_INFO_FILE
from superfilter.models import ModelConfig, load_model, load_tokenizer
from superfilter.runtime import resolve_dtype
from train.batches import Step
from train.job import TrainJob

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_DONE = "_COMPLETE"


def trainable_only(models: list, weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    # A LoRA checkpoint needs only the adapters: frozen base weights come from the model spec on resume.
    for model, state in zip(models, weights, strict=False):
        names = {n for n, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in state if k not in names]:
            del state[key]


def checkpoint_dirs(out_dir: Path) -> list[tuple[int, Path]]:
    root = out_dir / CHECKPOINT_DIR
    found = [(int(p.name.split("_")[1]), p) for p in root.glob("step_*") if (p / CHECKPOINT_DONE).exists()]
    return sorted(found)


def save_checkpoint(accelerator, out_dir: Path, step: int, keep: int) -> None:
    path = out_dir / CHECKPOINT_DIR / f"step_{step:06d}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)  # left incomplete by a killed run
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()  # every rank's RNG state is on disk before the checkpoint counts
    if accelerator.is_main_process:
        (path / CHECKPOINT_DONE).write_text(json.dumps({"step": step}))
        for _, old in checkpoint_dirs(out_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def resume(accelerator, out_dir: Path, steps: list[Step]) -> int:
    """Load the newest complete checkpoint; return the number of optimizer steps already done."""
    found = checkpoint_dirs(out_dir)
    if not found:
        return 0
    step, path = found[-1]
    if step > len(steps):
        raise RuntimeError(f"{path} is past the planned {len(steps)} steps; the stage folder is inconsistent")
    # Plain and DDP checkpoints may hold only the trainable weights; FSDP and DeepSpeed save and load their own way.
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    accelerator.load_state(str(path), **({} if sharded else {"strict": False}))
    accelerator.step = 0  # the saved micro-batch counter assumes the old micro_batch_size; steps start aligned
    log.info("train: resumed from %s", path)
    return step


def save_outputs(accelerator, model, job: TrainJob, out_dir: Path) -> None:
    """model/ (merged or full safetensors + tokenizer + what eval needs) and, for LoRA, adapter/."""
    cfg = job.train
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    state = accelerator.get_state_dict(model) if sharded else None  # every rank joins the gather
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    unwrapped = accelerator.unwrap_model(model)
    serving = resolve_dtype(job.model.dtype, accelerator.device)
    model_dir, adapter_dir = out_dir / MODEL_DIR, out_dir / ADAPTER_DIR
    # base_model_spec rebuilds the base anywhere: superfilter.models.load_model(ModelConfig(**base_model_spec)).
    info = {"template": cfg.template, "base_model": job.model.name, "base_model_spec": asdict(job.model),
            "method": cfg.method, "train_preset": cfg.name, "max_length": cfg.max_length}
    if cfg.method == "lora":
        for adapter in unwrapped.peft_config.values():  # not the machine-local folder the base was loaded from
            adapter.base_model_name_or_path = job.model.path
        # LoRA never trains the embeddings; "auto" would look the base up by that name (the Hub) to check.
        unwrapped.save_pretrained(adapter_dir, state_dict=state, save_embedding_layers=False)
        write_json_atomic(adapter_dir / MODEL_INFO_FILE, info)
        merged = merge_from_disk(job.model, adapter_dir) if sharded else unwrapped.merge_and_unload()
        merged.to(serving).save_pretrained(model_dir)
    else:
        unwrapped.to(serving).save_pretrained(model_dir, state_dict=state)
    load_tokenizer(job.model).save_pretrained(model_dir)
    write_json_atomic(model_dir / MODEL_INFO_FILE, info)
    accelerator.wait_for_everyone()


def merge_from_disk(spec: ModelConfig, adapter_dir: Path):
    """The base reloaded on CPU with the saved adapter merged in (sharded runs hold no whole model in memory)."""
    base, _ = load_model(spec, torch.device("cpu"))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
