"""One training rank: the loop over the planned steps, its metrics rows and outputs.

`python -m train.rank --job <stage folder>/train_config.json` is a launched rank's entry point.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from superfilter.artifacts import read_json, write_json_atomic
from superfilter.contracts import LOSS_CURVE_FILE, TRAIN_METRICS_FILE, TRAIN_RESULT_FILE
from superfilter.models import forget_tokenizers
from superfilter.progress import Meter
from superfilter.runtime import choose_dtype, peak_rss_mb
from superfilter.tracking import StageRun
from train import report
from train.batches import Step, accumulation_steps, plan, steps_per_epoch, total_steps
from train.checkpoints import CHECKPOINT_DIR, resume, save_checkpoint, save_outputs, stage_tokenizer
from train.collate import EncodeReport, encode_all
from train.job import TrainJob, check_encoded, check_template, read_subset
from train.lora import keep_adapter_inputs_in_half, make_trainable
from train.loss import release_head_buffers
from train.optim import make_optimizer, make_scheduler
from train.precision import make_precision, weights_dtype
from train.sharding import Strategy, build_model, check_world, shard
from train.step import Trainer, train_step
from train.world import World, join_world, leave_world

log = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.jsonl"  # records the length/template policy left out, with the reason
SAMPLES_DIR = "samples"  # per rank: which records each step trained on


def run(job: TrainJob, out_dir: Path, tracker: StageRun | None = None) -> dict[str, Any]:
    """Train as one rank (or alone when the world is one process); the result on rank 0, {} on the others."""
    started = time.perf_counter()
    strategy = check_world(job.train, job.runtime)
    world = join_world(job.runtime.device, job.runtime.world_size)
    try:
        if job.runtime.num_threads and world.device.type == "cpu":
            torch.set_num_threads(job.runtime.num_threads)
        return _train(job, out_dir, tracker, world, strategy, started)
    finally:
        leave_world(world)


def _train(job: TrainJob, out_dir: Path, tracker: StageRun | None, world: World, strategy: Strategy,
           started: float) -> dict[str, Any]:
    cfg = job.train
    set_seed(job.seed)
    examples = read_subset(Path(job.subset_path))
    check_template(job.model, cfg)
    precision = make_precision(cfg.mixed_precision, world.device, strategy)
    weights = weights_dtype(job, world.device)
    info = {"dtype": str(weights).removeprefix("torch."), "mixed_precision": precision.mode,
            "dtype_reason": choose_dtype(job.model.dtype, world.device).reason}
    log.info("train: %s; weights in %s, autocast %s (%s)", strategy.describe(world.size), *info.values())
    model, tokenizer = build_model(job.model, world, strategy, weights)
    encoded, enc_report = encode_all(examples, cfg.template, tokenizer, cfg.max_length, cfg.truncation)
    check_encoded(encoded, enc_report, tokenizer, Path(job.subset_path), cfg.template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if world.is_main:
        stage_tokenizer(tokenizer, out_dir)
    del tokenizer  # Gemma-3's 262k-word tokenizer holds 0.23 GB through training; model/ gets the staged files
    forget_tokenizers()
    model = make_trainable(model, cfg)
    if precision.mode != "no":
        keep_adapter_inputs_in_half(model)
    n_trainable_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_micro = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, world.size)
    steps = plan(len(encoded), cfg.batch_size, total_steps(len(encoded), cfg.batch_size, cfg.epochs, cfg.max_steps),
                 job.seed)
    model = shard(model, world, strategy, precision.autocast_dtype)
    loaded_rss = peak_rss_mb()
    log.info("train: model ready on rank %d, host memory peak %s MB", world.rank,
             f"{loaded_rss:,.0f}" if loaded_rss is not None else "unknown")
    optimizer = make_optimizer(model, cfg)  # after sharding: FSDP replaces the parameters by their shards
    # Stepped once per optimizer step by this loop: the schedule counts global steps, whatever the world.
    scheduler = make_scheduler(optimizer, cfg, len(steps))
    trainer = Trainer(world, strategy, precision, model, optimizer, scheduler, trainable_only=cfg.method == "lora")

    done = resume(trainer, out_dir, steps)
    metrics_file = out_dir / TRAIN_METRICS_FILE
    samples_file = out_dir / SAMPLES_DIR / f"rank{world.rank}.jsonl"
    if world.is_main:
        report.truncate_metrics(metrics_file, done)
    samples_file.parent.mkdir(parents=True, exist_ok=True)
    report.truncate_metrics(samples_file, done)
    world.barrier()
    log.info("train: %s %s on %d records, %d steps of %d (micro %d × %d accumulation × %d processes)%s",
             cfg.method, job.model.name, len(encoded), len(steps), cfg.batch_size, cfg.micro_batch_size, n_micro,
             world.size, f", resuming after step {done}" if done else "")

    lengths = [e.n_tokens for e in encoded]
    seen_before = list(itertools.accumulate(len(s.records) for s in steps))
    loop_started = time.perf_counter()
    # Time left from tokens, not steps: packed steps differ in size, so a step count would mislead.
    meter = Meter(total=sum(lengths[i] for s in steps[done:] for i in s.records))
    for step in steps[done:]:
        row, shares = train_step(trainer, step, encoded, lengths, pad_id, cfg, n_micro)
        row["examples_seen"] = seen_before[step.index - 1]
        progress = meter.advance(row["n_tokens"])
        row.update(progress.fields())
        report.append_metrics(samples_file, {"step": step.index, "epoch": step.epoch, "ids": shares})
        if world.is_main:
            report.append_metrics(metrics_file, row)
            if tracker is not None:
                tracker.log(row, step=step.index)
            log.info("train: step %d/%d loss %.4f lr %.2e grad %.3f %.0f tok/s, %s", step.index, len(steps),
                     row["loss"], row["lr"], row["grad_norm"], row["tokens_per_s"], progress)
        if cfg.save_steps and step.index % cfg.save_steps == 0 and step.index < len(steps):
            save_checkpoint(trainer, out_dir, step.index, cfg.keep_checkpoints)
    loop_time = time.perf_counter() - loop_started
    release_head_buffers()
    save_outputs(trainer, job, out_dir)
    host_peaks = world.gather(peak_rss_mb())
    result = {}
    if world.is_main:
        result = finish(job, out_dir, tracker, enc_report, steps, {
            "world_size": world.size, "strategy": strategy.name, "gradient_accumulation_steps": n_micro,
            "resumed_after_step": done, "trainable_params": n_trainable_params, "train_loop_s": loop_time,
            "wall_s": time.perf_counter() - started, "host_peak_rss_mb_per_rank": host_peaks, **info,
        })
    world.barrier()
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of one launched rank: `python -m train.rank --job <stage folder>/train_config.json`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(TrainJob.from_dict(read_json(args.job)), args.job.parent)


if __name__ == "__main__":
    main()
