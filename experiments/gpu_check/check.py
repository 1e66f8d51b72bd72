"""GPU acceptance run: scoring parity and throughput, attention kernels, LoRA, generation and the smoke pipeline;
with two or more GPUs also FSDP and DDP training, multi-process scoring and the train stage launched over them.

On a CUDA machine with the GPU image's packages (README.md) and no network:
    python experiments/gpu_check/check.py --wheels WHEEL_DIR
installs the rest from WHEEL_DIR (`--prepare-wheels WHEEL_DIR` fills it on a machine with network) and prints one
table. `--device cpu --small --processes 2` runs the same checks with small shapes on a CPU (the test suite does);
`--dry-run` prints what would run.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
REQUIREMENTS = HERE / "requirements.txt"
ALPACA_52K = 52_002
DATA = PROJECT_ROOT / "data" / "alpaca_5000.json"


@dataclass(frozen=True)
class Shape:
    """A model's size: random weights run the same matmuls as trained ones, so they time the same."""

    arch: str
    width: int
    layers: int
    heads: int
    ffn: int
    vocab: int


SHAPES = {
    "gpt2-124m": Shape("gpt2", 768, 12, 12, 3072, 50257),
    "llama2-7b": Shape("llama", 4096, 32, 32, 11008, 32000),
}
SMALL_SHAPES = {
    "gpt2-124m": Shape("gpt2", 64, 2, 4, 256, 50257),
    "llama2-7b": Shape("llama", 128, 2, 4, 344, 32000),
}


@dataclass(frozen=True)
class Sizes:
    parity_records: int  # engine vs per-example loop (the loop is slow: few records)
    gpt2_records: int  # throughput records for the GPT-2 shape
    llama_records: int  # throughput records for the 7B shape
    lora_steps: int
    generate_tokens: int
    multi_tokens: int  # tokens per process and step in the multi-GPU training checks
    multi_steps: int  # timed steps there, after one warm-up step


FULL = Sizes(parity_records=48, gpt2_records=5000, llama_records=1000, lora_steps=6, generate_tokens=128,
             multi_tokens=2048, multi_steps=4)
SMALL = Sizes(parity_records=8, gpt2_records=32, llama_records=16, lora_steps=2, generate_tokens=8,
              multi_tokens=128, multi_steps=1)
CHECKS = ("scoring", "attention", "lora", "generation", "smoke")
MULTI_CHECKS = ("fsdp", "ddp_lora", "multi_scoring", "train_stage")  # with two or more GPUs (or --processes)


# Installing what is missing, from local wheels.

SDIST_ONLY = "# sdist only"  # PyPI has no wheel: --prepare-wheels builds a py3-none-any one
WHEELS_MANIFEST = HERE / "wheels.txt"  # file name and bytes of each wheel --prepare-wheels made
CARRY_LIMIT = 64 * 2**20  # what one run on a GPU machine may bring: the source tree plus the wheels
PYTHON_VERSION = "3.12"  # the GPU machines'
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64")


def requirements() -> list[tuple[str, bool]]:
    """(name==version, built from source) for each line of requirements.txt."""
    pins = []
    for line in REQUIREMENTS.read_text().splitlines():
        pin = line.split("#")[0].strip()
        if pin:
            pins.append((pin, SDIST_ONLY in line))
    return pins


def missing_requirements() -> list[str]:
    """The pinned distributions this Python lacks (by distribution name, whatever module they install)."""
    missing = []
    for pin, _ in requirements():
        try:
            importlib.metadata.version(pin.split("==")[0])
        except importlib.metadata.PackageNotFoundError:
            missing.append(pin)
    return missing


def install_from_wheels(wheels: Path) -> None:
    # --no-deps: exactly the listed set; the image's own packages are never upgraded or replaced.
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels),
               *missing_requirements()]
    print("installing:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def wheel_commands(wheels: Path) -> list[list[str]]:
    """The pip commands that fill `wheels` for the GPU machines (Python 3.12, x86-64 Linux)."""
    pip = [sys.executable, "-m", "pip"]
    target = [*(f"--platform={p}" for p in PLATFORMS), f"--python-version={PYTHON_VERSION}"]
    return [[*pip, "wheel", "--no-deps", "-w", str(wheels), pin] if built else
            [*pip, "download", "--only-binary=:all:", "--no-deps", *target, "-d", str(wheels), pin]
            for pin, built in requirements()]


def prepare_wheels(wheels: Path) -> None:
    """Download (or build) every wheel, then record their sizes in wheels.txt."""
    wheels.mkdir(parents=True, exist_ok=True)
    for command in wheel_commands(wheels):
        subprocess.run(command, check=True)
    files = sorted(wheels.glob("*.whl"))
    WHEELS_MANIFEST.write_text("".join(f"{f.name} {f.stat().st_size}\n" for f in files))
    print(f"{len(files)} wheels, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB; sizes in {WHEELS_MANIFEST}")


def manifest() -> dict[str, int]:
    """wheels.txt: wheel file name → bytes."""
    return {name: int(size) for name, size in (line.split() for line in WHEELS_MANIFEST.read_text().splitlines())}


# Models and data.

def train_tokenizer(texts: list[str], vocab: int):
    """A byte-level BPE trained on the data itself: token counts per record close to a real tokenizer's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                   model_max_length=4096)


def build_model(shape: Shape, dtype, device, attn: str = "sdpa"):
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if shape.arch == "gpt2":
        config = GPT2Config(n_embd=shape.width, n_layer=shape.layers, n_head=shape.heads, n_inner=shape.ffn,
                            vocab_size=shape.vocab, n_positions=1024, bos_token_id=0, eos_token_id=0)
    else:
        config = LlamaConfig(hidden_size=shape.width, num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
                             num_key_value_heads=shape.heads, intermediate_size=shape.ffn, vocab_size=shape.vocab,
                             max_position_embeddings=4096, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device(device):  # weights initialised where they run: a 7B model inits in seconds on a GPU
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    return model.eval()


def load_records(n: int):
    from superfilter.data import DataConfig, load_examples

    examples = load_examples(DataConfig(path=str(DATA)))[0]
    return [examples[i % len(examples)] for i in range(n)]


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, run: Callable[[], object]) -> tuple[object, float]:
    synchronize(device)
    started = time.perf_counter()
    out = run()
    synchronize(device)
    return out, time.perf_counter() - started


# The checks: each returns table rows (check, setting, value, note).

Row = tuple[str, str, str, str]


def check_scoring(name: str, shape: Shape, tokenizer, device, sizes: Sizes, records: int) -> list[Row]:
    import numpy as np
    import torch

    from experiments.bench_scoring import agreement, authors_loop
    from superfilter.scoring import ScoreConfig, score_examples

    rows: list[Row] = []
    parity = load_records(sizes.parity_records)
    data = load_records(records)
    cfg = ScoreConfig()
    engine_ifd = {}
    for dtype in (torch.float32, torch.bfloat16):
        label = str(dtype).removeprefix("torch.")
        model = build_model(shape, dtype, device)
        score_examples(parity[:4], model, tokenizer, cfg)  # warm-up: kernels, allocator
        engine, engine_s = timed(device, lambda m=model: score_examples(parity, m, tokenizer, cfg)["ifd"].to_numpy())
        loop, loop_s = timed(device, lambda m=model: authors_loop(parity, m, tokenizer, cfg.max_length))
        both = np.isfinite(engine) & np.isfinite(loop)
        rel = float(np.max(np.abs(engine[both] - loop[both]) / np.abs(loop[both]))) if both.any() else math.nan
        limit = 1e-4 if dtype == torch.float32 else 2e-2
        rows.append((f"parity {name}", f"engine vs loop, {label}, {len(parity)} rec",
                     f"max rel IFD diff {rel:.1e}", "ok" if rel <= limit else f"ABOVE {limit:g}"))
        # fp32 runs at a fraction of bf16 speed on tensor cores: a quarter of the records times it well enough.
        timed_data = data if dtype == torch.bfloat16 else data[:max(len(parity), len(data) // 4)]
        _, seconds = timed(device, lambda m=model, d=timed_data: score_examples(d, m, tokenizer, cfg))
        rate = len(timed_data) / seconds
        rows.append((f"scoring {name}", f"engine {label}, {len(timed_data)} rec",
                     f"{rate:,.1f} rec/s (loop {len(parity) / loop_s:,.1f}, ×{rate * loop_s / len(parity):.1f})",
                     f"Alpaca 52k ≈ {ALPACA_52K / rate:,.0f} s"))
        engine_ifd[label] = engine
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    versus = agreement(engine_ifd["float32"], engine_ifd["bfloat16"])
    rows.append((f"bf16 vs fp32 {name}", f"engine, {len(parity)} rec",
                 f"Spearman {versus['spearman']:.4f}, max rel IFD diff {versus['max_rel_ifd_diff']:.1e}",
                 "random weights: IFD ≈ 1 everywhere, so the ranking is mostly noise"))
    return rows


def check_attention(name: str, shape: Shape, tokenizer, device, records: int) -> list[Row]:
    import torch

    from superfilter.scoring import ScoreConfig, score_examples

    dtype = torch.bfloat16
    kernels = ["sdpa", "eager"] + (["flash_attention_2"] if importlib.util.find_spec("flash_attn") else [])
    data = load_records(records)
    rows: list[Row] = []
    rates = {}
    for attn in kernels:
        model = build_model(shape, dtype, device, attn)
        score_examples(data[:4], model, tokenizer, ScoreConfig())
        _, seconds = timed(device, lambda m=model: score_examples(data, m, tokenizer, ScoreConfig()))
        rates[attn] = len(data) / seconds
        del model
    for attn, rate in rates.items():
        rows.append((f"attention {name}", f"{attn}, bf16, {len(data)} rec", f"{rate:,.1f} rec/s",
                     f"×{rate / rates['eager']:.2f} vs eager"))
    if "flash_attention_2" not in kernels:
        rows.append((f"attention {name}", "flash_attention_2", "not importable", "pip install flash-attn to add it"))
    return rows


def check_lora(name: str, shape: Shape, tokenizer, device, sizes: Sizes) -> list[Row]:
    import torch

    from superfilter.tokenized import IGNORE
    from train.collate import collate, encode_all
    from train.config import TrainConfig, resolve_mixed_precision
    from train.lora import make_trainable
    from train.loss import token_loss_sum
    from train.optim import make_optimizer

    cfg = TrainConfig(method="lora", template="alpaca", packing=True, micro_batch_size=4, max_length=512)
    precision = resolve_mixed_precision("auto", device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = make_trainable(build_model(shape, dtype, device), cfg)
    model.train()
    optimizer = make_optimizer(model, cfg)
    encoded, _ = encode_all(load_records(cfg.micro_batch_size * (sizes.lora_steps + 1)), cfg.template, tokenizer,
                            cfg.max_length, cfg.truncation)
    batches = [collate(encoded[i:i + cfg.micro_batch_size], cfg.packing, tokenizer.pad_token_id,
                       cfg.pad_to_multiple_of).to(device)
               for i in range(0, len(encoded), cfg.micro_batch_size)]
    times, tokens = [], []
    for batch in batches:
        def step(b=batch):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = token_loss_sum(model, b) / max(1, int((b.targets != IGNORE).sum()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _, seconds = timed(device, step)
        times.append(seconds)
        tokens.append(int(batch.input_ids.numel()))
    rate = sum(tokens[1:]) / sum(times[1:])  # the first step pays for kernel selection and allocation
    epoch_tokens = ALPACA_52K * statistics.mean(e.n_tokens for e in encoded)
    return [(f"LoRA {name}", f"r {cfg.lora.r}, {precision} autocast, micro {cfg.micro_batch_size} packed",
             f"{rate:,.0f} tokens/s", f"Alpaca 52k epoch ≈ {epoch_tokens / rate / 60:,.1f} min")]


def check_generation(name: str, shape: Shape, tokenizer, device, sizes: Sizes) -> list[Row]:
    import torch

    model = build_model(shape, torch.bfloat16 if device.type == "cuda" else torch.float32, device)
    tokenizer.padding_side = "left"
    prompts = [ex.instruction for ex in load_records(8)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)

    def generate(n: int):
        with torch.inference_mode():
            return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id)

    generate(2)
    out, seconds = timed(device, lambda: generate(sizes.generate_tokens))
    new = (out.shape[1] - inputs["input_ids"].shape[1]) * out.shape[0]
    tokenizer.padding_side = "right"
    return [(f"generation {name}", f"hf generate, batch {len(prompts)}, {sizes.generate_tokens} new tokens",
             f"{new / seconds:,.0f} tokens/s", "")]


def smoke_command(device, *overrides: str) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "run.py"), "experiment=smoke", f"runtime.device={device.type}",
            "tracking.mode=disabled", *overrides]


def run_smoke(name: str, setting: str, command: list[str], expect: str = "") -> list[Row]:
    """The pipeline as a user starts it, in a temporary artifact root: ok with its time, or its last error line."""
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        result = subprocess.run([*command, f"artifact_root={root}", f"hydra.run.dir={root}/hydra"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "disabled"})
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [(name, setting, "FAILED", tail[:160])]
    if expect and expect not in result.stdout + result.stderr:
        return [(name, setting, "FAILED", f"the log never says {expect!r}")]
    return [(name, setting, f"ok in {seconds:.0f} s", "")]


def check_smoke(device) -> list[Row]:
    return run_smoke("smoke pipeline", f"experiment=smoke runtime.device={device.type}", smoke_command(device))


# Two or more GPUs: sharded and replicated training, scoring over several processes, the train stage launched.

def multi_gpu_command(mode: str, shape: Shape, device, processes: int, sizes: Sizes, out: Path) -> list[str]:
    """torchrun starting `processes` ranks of multi_gpu.py (the project's FSDP2 / DDP training step)."""
    from superfilter.launch import rank_command

    args = ["--mode", mode, "--device", device.type, "--width", str(shape.width), "--layers", str(shape.layers),
            "--heads", str(shape.heads), "--ffn", str(shape.ffn), "--vocab", str(shape.vocab),
            "--tokens", str(sizes.multi_tokens), "--steps", str(sizes.multi_steps), "--out", str(out)]
    return rank_command("experiments.gpu_check.multi_gpu", args, processes)


def plan_estimate(shape: Shape, method: str, processes: int, tokens: int) -> str:
    """The plan's memory per GPU for this training (superfilter/plan.py, where it exists)."""
    if importlib.util.find_spec("superfilter.plan") is None:
        return "no plan module to compare with"
    from superfilter import plan

    config = {"model_type": "llama", "hidden_size": shape.width, "num_hidden_layers": shape.layers,
              "num_attention_heads": shape.heads, "intermediate_size": shape.ffn, "vocab_size": shape.vocab,
              "tie_word_embeddings": False}
    full = method == "full"
    try:
        setup = plan.TrainSetup(method=method, lora_r=16, micro_batch_size=1, max_length=tokens,
                                gradient_checkpointing=full, weight_bytes=4 if full else 2, act_bytes=2,
                                world=processes, sharded=full)
        return f"plan: {plan.train_memory(plan.shape_from_config(config), setup).total / 2**30:.1f} GiB/GPU"
    except (AttributeError, TypeError, KeyError) as error:  # the plan module changed its interface
        return f"plan estimate unavailable ({type(error).__name__}: {error})"


def check_multi_training(name: str, mode: str, shape: Shape, device, processes: int, sizes: Sizes) -> list[Row]:
    from superfilter.launch import rank_env

    method = "full" if mode == "fsdp-full" else "lora"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        threads = max(1, (os.cpu_count() or 1) // processes) if device.type == "cpu" else None
        command = multi_gpu_command(mode, shape, device, processes, sizes, out)
        result = subprocess.run(command, cwd=PROJECT_ROOT, env=rank_env(threads), capture_output=True, text=True)
        if result.returncode != 0 or not out.exists():
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return [(name, mode, "FAILED", tail[:160])]
        measured = json.loads(out.read_text())
    setting = (f"{processes} × {device.type}, {measured['precision']} autocast, micro 1 × {sizes.multi_tokens} "
               f"tokens{', gradient checkpointing' if method == 'full' else ', r 16'}")
    gpu = [p["gpu_gib"] for p in measured["peaks"]]
    memory = (f"peak {max(gpu):.1f} GiB/GPU" if device.type == "cuda" else
              f"host peak {max(p['host_mb'] for p in measured['peaks']):,.0f} MB/process")
    value = f"{measured['tokens_per_s']:,.0f} tokens/s ({measured['tokens_per_s'] / processes:,.0f}/GPU), {memory}"
    note = plan_estimate(shape, method, processes, sizes.multi_tokens)
    if not all(math.isfinite(loss) for loss in measured["loss"]):
        return [(name, setting, "FAILED", f"loss not finite: {measured['loss']}")]
    return [(name, setting, value, note)]


def save_model(shape: Shape, tokenizer, folder: Path) -> Path:
    """A random model of `shape` and the tokenizer as a plain folder, which a model spec (source=local) names."""
    import torch

    build_model(shape, torch.float32, torch.device("cpu")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def check_multi_scoring(name: str, shape: Shape, tokenizer, device, processes: int, records: int) -> list[Row]:
    """score_stage on one process and on `processes` (torchrun, one GPU each): records/s and equal scores."""
    import numpy as np
    import pandas as pd

    from superfilter.contracts import EXAMPLES_FILE, SCORES_FILE
    from superfilter.data import write_examples
    from superfilter.models import ModelConfig
    from superfilter.runtime import RuntimeConfig
    from superfilter.scoring import ScoreConfig, score_stage
    from superfilter.tracking import StageRun

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        spec = ModelConfig(name=name, source="local", path=str(save_model(shape, tokenizer, root / "model")))
        write_examples(load_records(records), root / EXAMPLES_FILE)
        rates, scores = {}, {}
        for n in (1, processes):
            runtime = RuntimeConfig(device=device.type, num_processes=n)
            metrics = score_stage(root / EXAMPLES_FILE, spec, ScoreConfig(), runtime, root / f"p{n}",
                                  StageRun(None, "score"))
            rates[n] = metrics["records_per_s"]
            scores[n] = pd.read_parquet(root / f"p{n}" / SCORES_FILE)["ifd"].to_numpy()
    both = np.isfinite(scores[1]) & np.isfinite(scores[processes])
    rel = float(np.max(np.abs(scores[1][both] - scores[processes][both]) / np.abs(scores[1][both])))
    value = (f"{rates[processes]:,.1f} rec/s on {processes} vs {rates[1]:,.1f} on 1 "
             f"(×{rates[processes] / rates[1]:.1f})")
    return [(f"multi-process scoring {name}", f"{processes} × {device.type}, {records} rec", value,
             f"max rel IFD diff vs 1 process {rel:.1e}" + ("" if rel <= 1e-3 else " ABOVE 1e-3"))]


def check_train_stages(device, processes: int) -> list[Row]:
    """The train stage launched as users launch it: accelerate launch (GPUs) or torchrun (CPU), the model loaded once
    and broadcast, a sharded checkpoint (the smoke run saves at step 2), model/ gathered on rank 0."""
    world = [f"runtime.num_processes={processes}", f"train.batch_size={2 * processes}", "stages=[train]"]
    fsdp = ["train.method=full", "train.accelerate_config=fsdp"]
    return (run_smoke("train stage FSDP", " ".join(fsdp + world[:1]), smoke_command(device, *fsdp, *world),
                      expect=f"FSDP2 (full shard per decoder layer) over {processes} processes")
            + run_smoke("train stage DDP LoRA", f"train.accelerate_config=ddp {world[0]}",
                        smoke_command(device, "train.accelerate_config=ddp", *world),
                        expect=f"DDP over {processes} processes"))


def multi_gpu_checks(shapes: dict[str, Shape], tokenizer, device, processes: int, sizes: Sizes
                     ) -> list[tuple[str, Callable[[], list[Row]]]]:
    llama = shapes["llama2-7b"]
    return [
        ("fsdp", lambda: check_multi_training("FSDP full llama2-7b", "fsdp-full", llama, device, processes, sizes)),
        ("ddp_lora", lambda: check_multi_training("DDP LoRA llama2-7b", "ddp-lora", llama, device, processes,
                                                  sizes)),
        ("multi_scoring", lambda: check_multi_scoring("gpt2-124m", shapes["gpt2-124m"], tokenizer, device,
                                                      processes, sizes.gpt2_records)),
        ("train_stage", lambda: check_train_stages(device, processes)),
    ]


def dry_run(args: argparse.Namespace) -> None:
    """What a run would do, without torch: the checks in order and the multi-GPU commands."""
    shapes, sizes = (SMALL_SHAPES, SMALL) if args.small else (SHAPES, FULL)
    processes = args.processes
    print(f"checks: {', '.join(c for c in CHECKS if c not in args.skip)}")
    if processes < 2:
        print("multi-GPU checks: none (fewer than 2 processes)")
        return
    print(f"multi-GPU checks on {processes} processes: {', '.join(c for c in MULTI_CHECKS if c not in args.skip)}")
    device = argparse.Namespace(type=args.device)
    for mode in ("fsdp-full", "ddp-lora"):
        print(" ".join(multi_gpu_command(mode, shapes["llama2-7b"], device, processes, sizes, Path("result.json"))))
    world = [f"runtime.num_processes={processes}", f"train.batch_size={2 * processes}", "stages=[train]"]
    print(" ".join(smoke_command(device, "train.method=full", "train.accelerate_config=fsdp", *world)))
    print(" ".join(smoke_command(device, "train.accelerate_config=ddp", *world)))


def print_table(rows: list[Row]) -> None:
    header = ("check", "setting", "value", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--small", action="store_true", help="small shapes and record counts (CPU test)")
    parser.add_argument("--processes", type=int, default=-1,
                        help="ranks for the multi-GPU checks; default: every visible GPU (CPU: none)")
    parser.add_argument("--wheels", type=Path, help="install missing requirements from this wheel folder first")
    parser.add_argument("--prepare-wheels", type=Path, help="download the requirements' wheels here and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the checks and multi-GPU commands, run none")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*CHECKS, *MULTI_CHECKS])
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        prepare_wheels(args.prepare_wheels)
        return 0
    if args.dry_run:
        dry_run(args)
        return 0
    missing = missing_requirements()
    if missing and args.wheels:
        install_from_wheels(args.wheels)
    elif missing:
        print(f"missing packages {missing}: pass --wheels DIR (filled by --prepare-wheels DIR elsewhere)")
        return 2
    sys.path.insert(0, str(PROJECT_ROOT))
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible; run with --device cpu --small for the CPU variant")
        return 2
    processes = args.processes if args.processes >= 0 else (torch.cuda.device_count() if device.type == "cuda" else 0)
    if device.type == "cuda" and processes > torch.cuda.device_count():
        print(f"--processes {processes} but {torch.cuda.device_count()} GPUs are visible")
        return 2
    shapes, sizes = (SMALL_SHAPES, SMALL) if args.small else (SHAPES, FULL)
    started = time.perf_counter()
    texts = [f"{ex.instruction}\n{ex.input}\n{ex.output}" for ex in load_records(5000 if not args.small else 500)]
    tokenizer = train_tokenizer(texts, 32000 if not args.small else 2000)
    threads = f"CPU, {torch.get_num_threads()} threads"
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"gpu_check on {hardware}, torch {torch.__version__}{', small shapes' if args.small else ''}", flush=True)
    rows: list[Row] = []
    plan = [
        ("scoring", lambda: check_scoring("gpt2-124m", shapes["gpt2-124m"], tokenizer, device, sizes,
                                          sizes.gpt2_records)
         + check_scoring("llama2-7b", shapes["llama2-7b"], tokenizer, device, sizes, sizes.llama_records)),
        ("attention", lambda: check_attention("llama2-7b", shapes["llama2-7b"], tokenizer, device,
                                              sizes.llama_records // 4)),
        ("lora", lambda: check_lora("llama2-7b", shapes["llama2-7b"], tokenizer, device, sizes)),
        ("generation", lambda: check_generation("llama2-7b", shapes["llama2-7b"], tokenizer, device, sizes)),
        ("smoke", lambda: check_smoke(device)),
    ]
    if processes >= 2:
        plan += multi_gpu_checks(shapes, tokenizer, device, processes, sizes)
    for name, run in plan:
        if name in args.skip:
            continue
        try:
            rows += run()
        except Exception as error:  # one broken check must not hide the others' numbers; it still fails the run
            rows.append((name, "", "FAILED", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"))
        print(f"[{time.perf_counter() - started:.0f} s] {name} done", flush=True)
    failed = any(r[2] == "FAILED" or "ABOVE" in r[3] for r in rows)
    print_table(rows)
    print(f"total {time.perf_counter() - started:.0f} s; {'FAILED' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
