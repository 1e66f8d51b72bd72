"""The train stage: finetune the strong model on subset.jsonl; writes model/ (safetensors) into the stage folder."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from superfilter.artifacts import read_json, write_json_atomic
from superfilter.contracts import (
    ADAPTER_DIR,
    LOSS_CURVE_FILE,
    MODEL_DIR,
    MODEL_INFO_FILE,
    TRAIN_METRICS_FILE,
    TRAIN_RESULT_FILE,
)
from superfilter.data import Example
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig, load_model, load_tokenizer
from superfilter.runtime import RuntimeConfig, choose_dtype, resolve_device, resolve_dtype
from superfilter.scoring.engine import head_chunk
from superfilter.tracking import StageRun
from train import report
from train.collate import IGNORE, Encoded, EncodeReport, MicroBatch, collate, encode_all
from train.config import TrainConfig, resolve_mixed_precision
from train.launch import launch
from train.schedule import Step, accumulation_steps, plan, rank_micro_batches, steps_per_epoch, total_steps

log = logging.getLogger(__name__)

JOB_FILE = "train_config.json"  # the exact, resolved training job; every rank reads it
SKIPPED_FILE = "skipped.jsonl"  # records the length/template policy left out, with the reason
CHECKPOINT_DIR = "checkpoints"
SAMPLES_DIR = "samples"  # per rank: which records each step trained on
CHECKPOINT_DONE = "_COMPLETE"

# LoRA on every attention and MLP projection (QLoRA's finding: all linear layers beat attention-only).
LORA_TARGETS = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo2",
         "smollm3"),
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


@dataclass
class TrainJob:
    """Everything a rank needs, written to the stage folder before training starts."""

    subset_path: str
    model: ModelConfig
    train: TrainConfig
    seed: int
    runtime: RuntimeConfig

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        return cls(d["subset_path"], ModelConfig(**d["model"]), TrainConfig.from_dict(d["train"]), d["seed"],
                   RuntimeConfig(**d["runtime"]))


def train_stage(
    subset_path: Path, model: ModelConfig, cfg: TrainConfig, seed: int, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Finetune in this process (one device) or in `runtime.num_processes` launched ranks; return metrics."""
    cfg.validate()
    if runtime.num_processes < 1:
        raise ConfigError(f"runtime.num_processes must be >= 1, got {runtime.num_processes}")
    job = TrainJob(str(Path(subset_path).resolve()), model, cfg, seed, runtime)
    if (Path(out_dir) / TRAIN_RESULT_FILE).exists():  # finished, killed before the pipeline marked it: redo nothing
        log.info("train: %s already finished", out_dir)
        return read_json(Path(out_dir) / TRAIN_RESULT_FILE)
    job_file = Path(out_dir) / JOB_FILE
    write_json_atomic(job_file, job.to_dict())
    if runtime.num_processes == 1:
        return run(job, Path(out_dir), tracker)
    launch(job_file, runtime.num_processes, resolve_device(runtime.device), cfg.accelerate_config,
           runtime.num_threads)
    rows = report.read_metrics(Path(out_dir) / TRAIN_METRICS_FILE)
    for row in rows:
        tracker.log(row, step=row["step"])
    tracker.image("loss_curve", Path(out_dir) / LOSS_CURVE_FILE)
    return read_json(Path(out_dir) / TRAIN_RESULT_FILE)


# One rank's training run.


def run(job: TrainJob, out_dir: Path, tracker: StageRun | None = None) -> dict[str, Any]:
    started = time.perf_counter()
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # per-file checkpoint messages drown the step log
    cfg = job.train
    device = resolve_device(job.runtime.device)
    if job.runtime.num_threads and device.type == "cpu":
        torch.set_num_threads(job.runtime.num_threads)
    n_micro = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, job.runtime.num_processes)
    in_process = job.runtime.num_processes == 1
    if in_process:
        reset_accelerate()  # the pipeline may train twice in one process, with different settings
    accelerator = make_accelerator(device, cfg, n_micro)
    try:
        check_world_size(accelerator.num_processes, job.runtime.num_processes)
        return _train(job, out_dir, tracker, accelerator, n_micro, started)
    finally:
        if in_process:
            reset_accelerate()


def _train(job: TrainJob, out_dir: Path, tracker: StageRun | None, accelerator, n_micro: int,
           started: float) -> dict[str, Any]:
    from accelerate.utils import set_seed

    cfg = job.train
    set_seed(job.seed)
    examples = read_subset(Path(job.subset_path))
    check_template(job.model, cfg)
    weights = weights_dtype(job, accelerator.device)
    precision = {"dtype": str(weights).removeprefix("torch."), "mixed_precision": accelerator.mixed_precision,
                 "dtype_reason": choose_dtype(job.model.dtype, accelerator.device).reason}
    log.info("train: weights in %s, autocast %s (%s)", *precision.values())
    model, tokenizer = load_model(job.model, accelerator.device, dtype=weights, for_training=True)
    encoded, enc_report = encode_all(examples, cfg.template, tokenizer, cfg.max_length, cfg.truncation)
    check_encoded(encoded, enc_report, tokenizer, Path(job.subset_path), cfg.template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    del tokenizer  # Gemma-3's 262k-word tokenizer holds 0.23 GB through training; save_outputs loads it again
    model = make_trainable(model, cfg)
    if accelerator.mixed_precision != "no":
        keep_adapter_inputs_in_half(model)
    n_trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = plan(len(encoded), cfg.batch_size, total_steps(len(encoded), cfg.batch_size, cfg.epochs, cfg.max_steps),
                 job.seed)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    # Not prepared: accelerate would step it once per process; our schedule counts global optimizer steps.
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(_trainable_only)

    done = resume(accelerator, out_dir, steps)
    rank = accelerator.process_index
    metrics_file = out_dir / TRAIN_METRICS_FILE
    samples_file = out_dir / SAMPLES_DIR / f"rank{rank}.jsonl"
    if accelerator.is_main_process:
        report.truncate_metrics(metrics_file, done)
    samples_file.parent.mkdir(parents=True, exist_ok=True)
    report.truncate_metrics(samples_file, done)
    accelerator.wait_for_everyone()
    log.info("train: %s %s on %d records, %d steps of %d (micro %d × %d accumulation × %d processes)%s",
             cfg.method, job.model.name, len(encoded), len(steps), cfg.batch_size, cfg.micro_batch_size, n_micro,
             accelerator.num_processes, f", resuming after step {done}" if done else "")

    lengths = [e.n_tokens for e in encoded]
    seen_before = list(itertools.accumulate(len(s.records) for s in steps))
    loop_started = time.perf_counter()
    for step in steps[done:]:
        row, shares = train_step(accelerator, model, optimizer, scheduler, step, encoded, lengths, pad_id, cfg,
                                 n_micro)
        row["examples_seen"] = seen_before[step.index - 1]
        report.append_metrics(samples_file, {"step": step.index, "epoch": step.epoch, "ids": shares})
        if accelerator.is_main_process:
            report.append_metrics(metrics_file, row)
            if tracker is not None:
                tracker.log(row, step=step.index)
            log.info("train: step %d/%d loss %.4f lr %.2e grad %.3f %.0f tok/s", step.index, len(steps),
                     row["loss"], row["lr"], row["grad_norm"], row["tokens_per_s"])
        if cfg.save_steps and step.index % cfg.save_steps == 0 and step.index < len(steps):
            save_checkpoint(accelerator, out_dir, step.index, cfg.keep_checkpoints)
    loop_time = time.perf_counter() - loop_started

    save_outputs(accelerator, model, job, out_dir)
    result = {}
    if accelerator.is_main_process:
        result = finish(job, out_dir, tracker, enc_report, steps, {
            "world_size": accelerator.num_processes, "gradient_accumulation_steps": n_micro,
            "resumed_after_step": done, "trainable_params": n_trainable_params, "train_loop_s": loop_time,
            "wall_s": time.perf_counter() - started, **precision,
        })
    accelerator.wait_for_everyone()
    return result


def finish(job: TrainJob, out_dir: Path, tracker: StageRun | None, enc_report: EncodeReport, steps: list[Step],
           run_info: dict[str, Any]) -> dict[str, Any]:
    """Main process, after model/ is written: plot, skipped records, the result file; checkpoints go."""
    cfg = job.train
    rows = report.read_metrics(out_dir / TRAIN_METRICS_FILE)
    report.plot_loss(rows, out_dir / LOSS_CURVE_FILE,
                     f"{cfg.method} {job.model.name}, {enc_report.n_kept} records, template {cfg.template}")
    if tracker is not None:
        tracker.image("loss_curve", out_dir / LOSS_CURVE_FILE)
    with open(out_dir / SKIPPED_FILE, "w") as f:
        f.writelines(json.dumps({"id": rid, "reason": reason}) + "\n" for rid, reason in enc_report.skipped)
    result = {
        "method": cfg.method, "template": cfg.template, "model": job.model.name,
        "data": {k: v for k, v in asdict(enc_report).items() if k != "skipped"},
        "n_steps": len(steps), "epochs_done": len(steps) / steps_per_epoch(enc_report.n_kept, cfg.batch_size),
        **run_info, **report.summarize(rows),
    }
    write_json_atomic(out_dir / TRAIN_RESULT_FILE, result)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)  # the final model supersedes them
    return result


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


def token_loss_sum(model, batch: MicroBatch) -> torch.Tensor:
    """Summed cross-entropy over the response tokens of the micro-batch (logits only where a target exists).

    With a frozen LM head (LoRA) the model returns hidden states and FrozenHeadLoss computes loss and gradient
    chunk by chunk, so the positions × vocabulary logits (1,700 × 262k floats = 1.8 GB for a packed Gemma
    micro-batch, held three times over for the backward pass) never exist at once.
    """
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "logits_to_keep": batch.keep, "use_cache": False}
    targets = batch.targets[:, batch.keep].reshape(-1)
    inner = causal_lm(model)
    head = inner.get_output_embeddings()
    frozen = (type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())
              and getattr(inner.config, "final_logit_softcapping", None) is None)
    if not frozen:
        logits = model(**kwargs).logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, ignore_index=IGNORE, reduction="sum")
    inner.set_output_embeddings(torch.nn.Identity())  # the forward then returns the head's input
    try:
        hidden = model(**kwargs).logits
    finally:
        inner.set_output_embeddings(head)
    return FrozenHeadLoss.apply(hidden.reshape(-1, hidden.size(-1)), head.weight, head.bias, targets)


def causal_lm(model):
    """The transformers model inside DDP and PEFT wrappers (the one whose lm_head the forward calls)."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


class FrozenHeadLoss(torch.autograd.Function):
    """sum CE(hidden @ W.T + b, targets) with W frozen: the gradient w.r.t. hidden, (softmax − onehot) @ W, is
    computed in the forward pass chunk by chunk and kept (positions × width), instead of the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        step = head_chunk(weight.size(0))
        for s in range(0, hidden.size(0), step):
            # In the head's dtype: the LoRA output can be fp32 beside a bf16 base, and autocast (entered by the
            # model's forward under accelerate) is not active here. One chunk × vocabulary fp32 buffer, turned into
            # softmax − onehot in place: a second or third buffer of that size was a third of the train stage's peak.
            chunk = targets[s:s + step]
            rows = torch.nonzero(chunk != IGNORE).squeeze(1)
            probs = F.linear(hidden[s:s + step].to(weight.dtype), weight, bias).float()
            lse = torch.logsumexp(probs, dim=-1)
            loss += (lse[rows] - probs[rows, chunk[rows]]).sum()
            probs.sub_(lse.unsqueeze(1)).exp_()
            probs[rows, chunk[rows]] -= 1.0
            probs[chunk == IGNORE] = 0.0
            grad[s:s + step] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.hidden_dtype), None, None, None


def clip_gradients(accelerator, model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    norm = accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf)
    return float(norm) if norm is not None else math.nan  # DeepSpeed reports no norm here


# Setup: accelerator, inputs, model, optimizer.


def make_accelerator(device: torch.device, cfg: TrainConfig, n_micro: int):
    from accelerate import Accelerator

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
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def read_subset(path: Path) -> list[Example]:
    """The selected records (score columns are ignored); a bad line fails naming file and line."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                examples.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{lineno}: not a subset record ({type(e).__name__}: {e})") from e
    if not examples:
        raise DataError(f"{path}: the subset is empty, nothing to train on (check the filter and ratio)")
    return examples


def check_template(model: ModelConfig, cfg: TrainConfig) -> None:
    if cfg.template == "chat" and not model.chat_template:
        raise ConfigError(f"train.template=chat but model {model.name} sets chat_template=false; "
                          "use train.template=alpaca or vicuna_v1.1")


def check_encoded(encoded: list[Encoded], enc: EncodeReport, tokenizer: Any, subset: Path, template: str) -> None:
    dropped = enc.n_records - enc.n_kept
    if dropped:
        log.warning("train: %d of %d records skipped (%d longer than max_length with truncation=drop, %d with no "
                    "response token within max_length, %d empty outputs, %d multi-turn under template=alpaca); "
                    "%d kept but truncated", dropped, enc.n_records, enc.n_dropped_too_long,
                    enc.n_dropped_prompt_too_long, enc.n_dropped_empty_output, enc.n_dropped_multi_turn,
                    enc.n_truncated)
    if not encoded:
        if enc.n_dropped_multi_turn:
            raise DataError(f"{subset}: {enc.n_dropped_multi_turn} of {enc.n_records} records are multi-turn and "
                            f"template={template} has no multi-turn form; use train.template=vicuna_v1.1 or chat")
        raise DataError(f"{subset}: none of the {enc.n_records} records has a response token within "
                        f"train.max_length (longest record: {enc.max_tokens_seen} tokens); raise train.max_length")
    if not any(e.labels[-1] == tokenizer.eos_token_id for e in encoded):
        log.warning("train: no reply ends in the tokenizer's EOS token; the model will not learn to stop")


def lora_targets(model, cfg: TrainConfig) -> list[str] | str:
    if cfg.lora.target_modules:
        return list(cfg.lora.target_modules)
    # peft's "all-linear": every linear layer but the output head, for architectures not in the table.
    return LORA_TARGETS.get(model.config.model_type, "all-linear")


def make_trainable(model, cfg: TrainConfig):
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lora_targets(model, cfg), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def keep_adapter_inputs_in_half(model) -> None:
    """Under autocast the adapters' matmuls run in half precision anyway; PEFT's cast of every adapter input to the
    adapters' fp32 only adds fp32 copies to what the backward pass keeps (95 of 746 MB for Gemma-3-270M at 448
    tokens)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


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


# Checkpoints and outputs.


def _trainable_only(models: list, weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
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
    from accelerate.utils import DistributedType

    # Plain and DDP checkpoints may hold only the trainable weights; FSDP and DeepSpeed save and load their own way.
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    accelerator.load_state(str(path), **({} if sharded else {"strict": False}))
    accelerator.step = 0  # the saved micro-batch counter assumes the old micro_batch_size; steps start aligned
    log.info("train: resumed from %s", path)
    return step


def save_outputs(accelerator, model, job: TrainJob, out_dir: Path) -> None:
    """model/ (merged or full safetensors + tokenizer + what eval needs) and, for LoRA, adapter/."""
    from accelerate.utils import DistributedType

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
    from peft import PeftModel

    base, _ = load_model(spec, torch.device("cpu"))
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def main(argv: list[str] | None = None) -> None:
    """Entry point of one launched rank: `python -m train.sft --job <stage folder>/train_config.json`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(TrainJob.from_dict(read_json(args.job)), args.job.parent)


if __name__ == "__main__":
    main()
