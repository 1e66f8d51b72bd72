"""One rank of the multi-GPU training check: the project's FSDP2 or DDP step on a random model of a given shape.

Launched by check.py with torchrun (one process per GPU, or CPU processes with --device cpu):
    python -m torch.distributed.run --standalone --nproc_per_node=N -m experiments.gpu_check.multi_gpu \
        --mode fsdp-full --width 4096 --layers 32 --heads 32 --ffn 11008 --vocab 32000 --tokens 2048 --out r.json
Rank 0 writes tokens/s and every rank's peak memory to --out. The weights are random and built where they run
(FSDP: on the meta device, then each rank fills its own shards), so a 7B shape starts in seconds; the training
step is train/step.py's, on a model sharded by train/sharding.py, as the train stage runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoModelForCausalLM, LlamaConfig

from superfilter.runtime import peak_rss_mb
from superfilter.tokenized import Encoded
from train.batches import Step
from train.config import TrainConfig
from train.lora import make_trainable
from train.optim import make_optimizer, make_scheduler
from train.precision import make_precision
from train.sharding import Strategy, fully_shard_layers, shard
from train.step import Trainer, train_step
from train.world import join_world, leave_world

MODES = {"fsdp-full": ("fsdp", "full"), "ddp-lora": ("ddp", "lora")}


def llama_config(args: argparse.Namespace) -> LlamaConfig:
    return LlamaConfig(hidden_size=args.width, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                       num_key_value_heads=args.heads, intermediate_size=args.ffn, vocab_size=args.vocab,
                       max_position_embeddings=max(4096, args.tokens), bos_token_id=0, eos_token_id=0,
                       pad_token_id=0)


def fill_random(model, device: torch.device) -> None:
    """Parameters left on the meta device by sharding get memory on `device` and random values; buffers (the
    rotary frequencies) keep the values they were built with."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(std=0.02)
            else:  # norm gains
                p.fill_(1.0)


def build(args: argparse.Namespace, world, cfg: TrainConfig, strategy: Strategy, param_dtype: torch.dtype | None):
    config = llama_config(args)
    if strategy.sharded:
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model = make_trainable(model, cfg)
        fully_shard_layers(model, world, strategy, param_dtype)
        fill_random(model, world.device)
        return model
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    dtype = torch.bfloat16 if world.device.type == "cuda" else torch.float32  # LoRA: the base in serving dtype
    with world.device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return shard(make_trainable(model, cfg), world, strategy, param_dtype)


def records(n: int, tokens: int, vocab: int) -> list[Encoded]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (n, tokens), generator=generator).tolist()
    return [Encoded(f"r{i}", row, row) for i, row in enumerate(ids)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=sorted(MODES), required=True)
    parser.add_argument("--device", default="cuda")
    for name in ("width", "layers", "heads", "ffn", "vocab", "tokens"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--steps", type=int, default=4, help="timed steps, after one warm-up step")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    world = join_world(args.device, int(os.environ.get("WORLD_SIZE", "1")))
    try:
        strategy_name, method = MODES[args.mode]
        strategy = Strategy(strategy_name)
        cfg = TrainConfig(method=method, batch_size=world.size, micro_batch_size=1, max_length=args.tokens,
                          gradient_checkpointing=method == "full", mixed_precision="auto", warmup_ratio=0.0)
        precision = make_precision(cfg.mixed_precision, world.device, strategy)
        model = build(args, world, cfg, strategy, precision.autocast_dtype)
        optimizer = make_optimizer(model, cfg)
        n_steps = args.steps + 1
        trainer = Trainer(world, strategy, precision, model, optimizer, make_scheduler(optimizer, cfg, n_steps),
                          trainable_only=method == "lora")
        encoded = records(world.size * n_steps, args.tokens, args.vocab)
        lengths = [e.n_tokens for e in encoded]
        rows = []
        for index in range(n_steps):
            step = Step(index + 1, 0, tuple(range(index * world.size, (index + 1) * world.size)))
            rows.append(train_step(trainer, step, encoded, lengths, 0, cfg, n_micro=1)[0])
        timed = rows[1:]  # the first step pays for allocation and kernel selection
        peaks = world.gather({
            "gpu_gib": torch.cuda.max_memory_allocated(world.device) / 2**30 if world.device.type == "cuda" else None,
            "host_mb": peak_rss_mb(),
        })
        if world.is_main:
            args.out.write_text(json.dumps({
                "mode": args.mode, "world_size": world.size, "precision": precision.mode,
                "tokens_per_s": sum(r["n_tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
                "step_time_s": statistics.median(r["step_time_s"] for r in timed),
                "loss": [r["loss"] for r in rows], "peaks": peaks,
            }))
        world.barrier()  # leave together: a gloo rank tearing down while its peer still writes can hang
    finally:
        leave_world(world)


if __name__ == "__main__":
    main()
