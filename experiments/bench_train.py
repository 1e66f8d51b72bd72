"""Benchmark training throughput: padded vs packed micro-batches, fp32 vs bf16, and the embedded default's wall time.

python experiments/bench_train.py --steps 2 --repeats 3 --stage-records 100
python experiments/bench_train.py --repeats 0 --precision-steps 4 --precision-rounds 2 --plot precision.png
python experiments/bench_train.py --repeats 0 --memory-rounds 2 --subset artifacts/select/<key>/subset.jsonl
"""

from __future__ import annotations

import os

# Must precede the first torch import: on a shared CPU host, spinning OpenMP workers wait on descheduled peers
# and elementwise ops slow down 10–300× (measured here); passive workers sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from superfilter.config import compose_config, to_config  # noqa: E402
from superfilter.contracts import SUBSET_FILE, TRAIN_METRICS_FILE  # noqa: E402
from superfilter.data import DataConfig, Example, load_examples, write_examples  # noqa: E402
from superfilter.models import ModelConfig, load_model, model_from_name  # noqa: E402
from superfilter.runtime import RuntimeConfig  # noqa: E402
from superfilter.tracking import StageRun  # noqa: E402
from train import report  # noqa: E402
from train.batches import accumulation_steps, plan  # noqa: E402
from train.collate import encode_all  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.job import read_subset  # noqa: E402
from train.lora import make_trainable  # noqa: E402
from train.optim import make_optimizer, make_scheduler  # noqa: E402
from train.precision import make_precision  # noqa: E402
from train.sharding import Strategy  # noqa: E402
from train.stage import train_stage  # noqa: E402
from train.step import Trainer, train_step  # noqa: E402
from train.world import World  # noqa: E402

MODES = {"padding": False, "packing": True}


def preset(name: str) -> TrainConfig:
    return to_config(compose_config([f"train={name}"])).train


def bench_subset(path: str, fraction: float, seed: int) -> list[Example]:
    """The given subset.jsonl, else a seeded random `fraction` of the bundled alpaca_5k."""
    if path:
        return read_subset(Path(path))
    examples, _ = load_examples(DataConfig(name="alpaca_5k", path="data/alpaca_5000.json", format="alpaca"))
    return random.Random(seed).sample(examples, round(fraction * len(examples)))


def throughput(args: argparse.Namespace, cfg: TrainConfig, examples: list[Example]) -> list[dict]:
    """Tokens/s of the stage's own train_step, padded and packed runs alternating on the same records."""
    device = torch.device("cpu")
    n_micro = accumulation_steps(cfg.batch_size, cfg.micro_batch_size, 1)
    model, tokenizer = load_model(model_from_name(args.model), device, for_training=True)
    encoded, _ = encode_all(examples, cfg.template, tokenizer, cfg.max_length, cfg.truncation)
    model = make_trainable(model, cfg)
    optimizer = make_optimizer(model, cfg)
    steps = plan(len(encoded), cfg.batch_size, 1 + args.repeats * args.steps, seed=0)
    scheduler = make_scheduler(optimizer, cfg, len(steps))
    single = Strategy("single")
    trainer = Trainer(World(0, 1, 0, device), single, make_precision(cfg.mixed_precision, device, single), model,
                      optimizer, scheduler, trainable_only=cfg.method == "lora")
    lengths = [e.n_tokens for e in encoded]
    pad_id = tokenizer.pad_token_id or 0

    def run(step, packing: bool) -> dict:
        cpu = time.process_time()
        row, _ = train_step(trainer, step, encoded, lengths, pad_id, replace(cfg, packing=packing), n_micro)
        return {**row, "cpu_s": time.process_time() - cpu}

    run(steps[0], False)  # warm-up: first-call allocations and kernel selection
    samples: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(args.repeats):
        chunk = steps[1 + r * args.steps: 1 + (r + 1) * args.steps]
        order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]  # alternate: host load drifts
        for mode in order:
            rows = [run(step, MODES[mode]) for step in chunk]
            samples[mode].append({
                "tokens": sum(x["n_tokens"] for x in rows), "slots": sum(x["n_slots"] for x in rows),
                "time_s": sum(x["step_time_s"] for x in rows), "cpu_s": sum(x["cpu_s"] for x in rows),
            })
            print(f"  repeat {r + 1} {mode}: {samples[mode][-1]['tokens'] / samples[mode][-1]['time_s']:.0f} tok/s",
                  flush=True)
    table = []
    for mode, runs in samples.items():
        rates = [s["tokens"] / s["time_s"] for s in runs]
        table.append({"mode": mode, "tokens_per_s_median": statistics.median(rates), "tokens_per_s_min": min(rates),
                      "tokens_per_s_max": max(rates), "slots_per_token": sum(s["slots"] for s in runs) /
                      sum(s["tokens"] for s in runs), "step_time_s_median":
                      statistics.median(s["time_s"] / args.steps for s in runs),
                      "tokens_per_cpu_s_median": statistics.median(s["tokens"] / s["cpu_s"] for s in runs)})
    return table


def run_stage(records: list[Example], spec: ModelConfig, cfg: TrainConfig) -> tuple[dict, list[dict]]:
    """The whole train stage as the pipeline runs it (load, encode, train, merge, save) in a temporary folder:
    its metrics and its per-step rows."""
    with tempfile.TemporaryDirectory() as tmp:
        subset, out = Path(tmp) / SUBSET_FILE, Path(tmp) / "out"
        write_examples(records, subset)
        out.mkdir()
        metrics = train_stage(subset, spec, cfg, 0, RuntimeConfig(device="cpu"), out, StageRun(None, "train"))
        return metrics, report.read_metrics(out / TRAIN_METRICS_FILE)


def stage_wall_time(args: argparse.Namespace, cfg: TrainConfig, examples: list[Example]) -> dict:
    """The whole train stage on `stage_records` random records."""
    subset = random.Random(1).sample(examples, min(args.stage_records, len(examples)))
    started, cpu = time.perf_counter(), time.process_time()
    metrics, _ = run_stage(subset, model_from_name(args.model), cfg)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"records": len(subset), "wall_s": wall, "cpu_s": cpu, **{k: metrics[k] for k in (
        "n_steps", "train_loop_s", "tokens_per_s", "loss_first", "loss_last")}, "n_tokens": metrics["data"]["n_tokens"]}


PRECISIONS = {"fp32": ("float32", "no"), "bf16": ("bfloat16", "bf16")}  # (base weights, autocast)


def precision_compare(args: argparse.Namespace, cfg: TrainConfig, examples: list[Example]) -> dict:
    """The whole train stage in fp32 and in bf16 (bf16 base weights, bf16 autocast, fp32 LoRA weights), the same
    records and steps, runs alternating: per-step tokens/s (medians, first step left out) and both loss curves."""
    spec = model_from_name(args.model)
    records = random.Random(2).sample(examples, min(len(examples), cfg.batch_size * args.precision_steps))
    rates: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    losses: dict[str, list[float]] = {}
    for r in range(args.precision_rounds):
        for name in (list(PRECISIONS) if r % 2 == 0 else list(PRECISIONS)[::-1]):
            dtype, autocast = PRECISIONS[name]
            metrics, rows = run_stage(records, replace(spec, dtype=dtype),
                                      replace(cfg, mixed_precision=autocast, max_steps=args.precision_steps))
            rates[name] += [row["tokens_per_s"] for row in rows[1:]]
            losses[name] = [row["loss"] for row in rows]
            print(f"  round {r + 1} {name} ({metrics['dtype']}, autocast {metrics['mixed_precision']}): "
                  f"{statistics.median(row['tokens_per_s'] for row in rows[1:]):.0f} tok/s, losses "
                  f"{[round(x, 4) for x in losses[name]]}, load {os.getloadavg()[0]:.1f}", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    return {"records": len(records), "steps": args.precision_steps, "rounds": args.precision_rounds,
            "tokens_per_s": medians, "bf16_vs_fp32": medians["bf16"] / medians["fp32"], "losses": losses,
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(losses["fp32"], losses["bf16"], strict=True))}


PAD_VARIANTS = {"lengths rounded up to 64": 64, "exact lengths": 1}  # train.pad_to_multiple_of


def stage_memory(args: argparse.Namespace, examples: list[Example]) -> list[dict]:
    """The whole train stage in a fresh process per run (load, train, merge, save), with and without rounding
    micro-batch lengths up, runs alternating: wall time, CPU time and the process's peak RSS (wait4's ru_maxrss)."""
    samples: dict[str, list[dict]] = {name: [] for name in PAD_VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / SUBSET_FILE
        write_examples(examples[:args.stage_records] if args.stage_records else examples, subset)
        for r in range(args.memory_rounds):
            for name in (list(PAD_VARIANTS) if r % 2 == 0 else list(PAD_VARIANTS)[::-1]):
                command = [sys.executable, __file__, "--child", str(subset), "--pad-to", str(PAD_VARIANTS[name]),
                           "--model", args.model, "--train", args.train]
                started = time.perf_counter()
                child = subprocess.Popen(command)
                _, status, usage = os.wait4(child.pid, 0)
                if status:
                    raise SystemExit(f"{name}: the train stage failed (status {status})")
                samples[name].append({"wall_s": time.perf_counter() - started, "cpu_s": usage.ru_utime + usage.ru_stime,
                                      "peak_rss_gib": usage.ru_maxrss / 2**20})
                print(f"  round {r + 1} {name}: {samples[name][-1]}, load {os.getloadavg()[0]:.1f}", flush=True)
    return [{"variant": name, **{k: statistics.median(run[k] for run in runs) for k in runs[0]}}
            for name, runs in samples.items()]


def child_stage(args: argparse.Namespace, cfg: TrainConfig) -> None:
    run_stage(read_subset(args.child), model_from_name(args.model), replace(cfg, pad_to_multiple_of=args.pad_to))


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for name, values in losses.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set(xlabel="optimizer step", ylabel="train loss", title="LoRA, embedded default: fp32 vs bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def print_throughput(table: list[dict]) -> None:
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| mode | tokens/s (median) | min–max | tokens per CPU-second | computed slots per real token | s/step |")
    print("|---|---|---|---|---|---|")
    for row in table:
        print(f"| {row['mode']} | {row['tokens_per_s_median']:.0f} | {row['tokens_per_s_min']:.0f}–"
              f"{row['tokens_per_s_max']:.0f} | {row['tokens_per_cpu_s_median']:.0f} | {row['slots_per_token']:.2f} | "
              f"{row['step_time_s_median']:.1f} |")
    pad, pack = (r["tokens_per_s_median"] for r in table)
    print(f"packing / padding = {pack / pad:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma3_270m", help="a conf/model/strong name")
    parser.add_argument("--train", default="lora", help="a conf/train preset")
    parser.add_argument("--subset", default="", help="a subset.jsonl (default: random 10%% of alpaca_5k)")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported); 0 = skip")
    parser.add_argument("--stage-records", type=int, default=0, help="also time the whole stage on N records")
    parser.add_argument("--precision-steps", type=int, default=0, help="fp32 vs bf16: steps per run (0 = skip)")
    parser.add_argument("--precision-rounds", type=int, default=2, help="fp32 vs bf16: alternating rounds")
    parser.add_argument("--plot", type=Path, help="fp32 vs bf16: write both loss curves here")
    parser.add_argument("--memory-rounds", type=int, default=0,
                        help="whole stage in fresh processes, lengths rounded up vs exact: rounds (0 = skip)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # one --memory-rounds run
    parser.add_argument("--pad-to", type=int, default=64, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = replace(preset(args.train), save_steps=0)
    if args.child:
        child_stage(args, cfg)
        return
    examples = bench_subset(args.subset, args.fraction, seed=0)
    print(f"{args.train} on {args.model}: {len(examples)} records, batch {cfg.batch_size}, micro "
          f"{cfg.micro_batch_size}, {args.steps} steps × {args.repeats} repeats per mode, "
          f"{torch.get_num_threads()} threads", flush=True)
    results: dict = {}
    if args.repeats:
        results["throughput"] = throughput(args, cfg, examples)
        print_throughput(results["throughput"])
    if args.stage_records:
        results["stage"] = stage_wall_time(args, cfg, examples)
        s = results["stage"]
        print(f"\nwhole stage, train={args.train}, {s['records']} records ({s['n_tokens']} tokens), {s['n_steps']} "
              f"steps: {s['wall_s']:.0f} s wall, {s['cpu_s']:.0f} CPU-s ({s['train_loop_s']:.0f} s training, "
              f"{s['tokens_per_s']:.0f} tok/s), load average {os.getloadavg()[0]:.1f}, "
              f"loss {s['loss_first']:.3f} → {s['loss_last']:.3f}")
    if args.precision_steps:
        results["precision"] = p = precision_compare(args, cfg, examples)
        print(f"\nfp32 {p['tokens_per_s']['fp32']:.0f} tok/s, bf16 {p['tokens_per_s']['bf16']:.0f} tok/s: bf16/fp32 = "
              f"{p['bf16_vs_fp32']:.2f}×; max |loss difference| {p['max_abs_loss_diff']:.4f}; "
              f"load average {os.getloadavg()[0]:.1f}")
        if args.plot:
            plot_losses(p["losses"], args.plot)
    if args.memory_rounds:
        results["memory"] = rows = stage_memory(args, examples)
        print(f"\nwhole train stage, fresh process per run, {args.memory_rounds} rounds (medians), load average "
              f"{os.getloadavg()[0]:.1f}")
        print("| variant | wall s | CPU s | peak RSS GiB |\n|---|---|---|---|")
        for row in rows:
            print(f"| {row['variant']} | {row['wall_s']:.0f} | {row['cpu_s']:.0f} | {row['peak_rss_gib']:.2f} |")
        rounded, exact = rows
        print(f"rounded / exact: wall {rounded['wall_s'] / exact['wall_s']:.2f}×, peak RSS "
              f"{rounded['peak_rss_gib'] / exact['peak_rss_gib']:.2f}×")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
