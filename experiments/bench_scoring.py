"""Benchmark the IFD engine against the authors' per-example loop; boundary-mode disagreement; memory vs data size.

python experiments/bench_scoring.py --records 200 --repeats 3 --dtype-records 1000 --memory 5000 50000
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from superfilter.contracts import DEFAULT_MODEL, EXAMPLES_FILE, SCORES_FILE  # noqa: E402
from superfilter.data import DataConfig, Example, load_examples, write_examples  # noqa: E402
from superfilter.models import ModelConfig, load_model, model_from_name  # noqa: E402
from superfilter.runtime import RuntimeConfig, choose_dtype, cpu_flags, peak_rss_mb  # noqa: E402
from superfilter.scoring import ScoreConfig, make_engine, plan_records, score_examples, score_stage  # noqa: E402
from superfilter.tracking import StageRun  # noqa: E402

BF16_FLAGS = {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"}
NONE_WITH_INPUT = "{instruction}\n{input}\n"
NONE_NO_INPUT = "{instruction}\n"


# (a) What the authors' script does per record (Superfiltering code_ifd/data_analysis.py), without its try/except.


def _whole_text_loss(model, tokenizer, text: str, max_length: int) -> float:
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
    with torch.no_grad():
        return model(input_ids, labels=input_ids.contiguous(), output_hidden_states=True).loss.item()


def _part_text_loss(model, tokenizer, text: str, target_span: str, max_length: int) -> float:
    input_ids = tokenizer.encode(text, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
    start_token = len(tokenizer.encode(text[:text.rfind(target_span)]))
    labels = input_ids.clone()
    labels[0, :start_token] = -100
    with torch.no_grad():
        return model(input_ids, labels=labels, output_hidden_states=True).loss.item()


def authors_loop(examples: list[Example], model, tokenizer, max_length: int) -> np.ndarray:
    ifd = np.full(len(examples), np.nan)
    for i, ex in enumerate(examples):
        prompt = (NONE_WITH_INPUT if ex.input else NONE_NO_INPUT).format(instruction=ex.instruction, input=ex.input)
        n_prompt = tokenizer.encode(prompt, return_tensors="pt", truncation=True, max_length=max_length).shape[1]
        if ex.output == "":
            continue
        loss_alone = _whole_text_loss(model, tokenizer, ex.output, max_length - n_prompt + 1)
        loss_condition = _part_text_loss(model, tokenizer, prompt + ex.output, ex.output, max_length)
        ifd[i] = math.exp(loss_condition) / math.exp(loss_alone)
    return ifd


# Speed: the loop (fp32), the engine in fp32 and in bf16, alternating rounds in one process, same threads.


def bench_speed(examples: list[Example], model, tokenizer, repeats: int, batch_tokens: int) -> dict:
    cfg = ScoreConfig(batch_tokens=batch_tokens)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    runs = {
        "loop_fp32": lambda: authors_loop(examples, model, tokenizer, cfg.max_length),
        "engine_fp32": lambda: score_examples(examples, model, tokenizer, cfg)["ifd"].to_numpy(),
        "engine_bf16": lambda: score_examples(examples, model_bf16, tokenizer, cfg)["ifd"].to_numpy(),
    }
    for m in (model, model_bf16):  # warm-up: first-call allocations, lazy imports, oneDNN kernels
        score_examples(examples[:8], m, tokenizer, cfg)
    authors_loop(examples[:4], model, tokenizer, cfg.max_length)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    ifd: dict[str, np.ndarray] = {}
    for r in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            ifd[name] = run()
            rates[name].append(len(examples) / (time.perf_counter() - started))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.2f} rec/s" for n, v in rates.items())
              + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "rec_s": medians, "rates": rates,
        "ratio_vs_loop": {name: medians[name] / medians["loop_fp32"] for name in runs},
        "engine_fp32_vs_loop": agreement(ifd["loop_fp32"], ifd["engine_fp32"]),
        "engine_bf16_vs_loop": agreement(ifd["loop_fp32"], ifd["engine_bf16"]),
    }


def agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """How far `other` IFDs are from `reference`: relative differences, rank correlation, selection overlaps."""
    from scipy.stats import spearmanr

    both = np.isfinite(reference) & np.isfinite(other)
    rel = np.abs(other[both] - reference[both]) / np.abs(reference[both])
    out = {"records": int(both.sum()), "scored_vs_skipped_mismatches": int((np.isfinite(reference)
                                                                           != np.isfinite(other)).sum()),
           "max_rel_ifd_diff": float(rel.max()), "median_rel_ifd_diff": float(np.median(rel)),
           "spearman": float(spearmanr(reference[both], other[both]).statistic)}
    ref_order, other_order = np.argsort(-reference[both], kind="stable"), np.argsort(-other[both], kind="stable")
    for share in (0.05, 0.10, 0.15):
        k = max(1, round(share * both.sum()))
        out[f"top{round(share * 100)}_overlap"] = len(set(ref_order[:k]) & set(other_order[:k])) / k
    return out


def bench_dtypes(examples: list[Example], model, tokenizer, chunks: int, batch_tokens: int) -> dict:
    """The engine in fp32 and in bf16 over the same records, chunk by chunk in alternating order."""
    cfg = ScoreConfig(batch_tokens=batch_tokens)
    models = {"fp32": model, "bf16": copy.deepcopy(model).to(torch.bfloat16)}
    for m in models.values():
        score_examples(examples[:8], m, tokenizer, cfg)
    ifd = {name: np.full(len(examples), np.nan) for name in models}
    rates: dict[str, list[float]] = {name: [] for name in models}
    cpu_rates: dict[str, list[float]] = {name: [] for name in models}  # records per CPU-second: steadier on a busy host
    bounds = np.linspace(0, len(examples), chunks + 1).astype(int)
    for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        for name in (list(models) if c % 2 == 0 else list(models)[::-1]):
            started, cpu = time.perf_counter(), time.process_time()
            ifd[name][lo:hi] = score_examples(examples[lo:hi], models[name], tokenizer, cfg)["ifd"].to_numpy()
            rates[name].append((hi - lo) / (time.perf_counter() - started))
            cpu_rates[name].append((hi - lo) / (time.process_time() - cpu))
        so_far = agreement(ifd["fp32"][:hi], ifd["bf16"][:hi])
        print(f"chunk {c + 1}/{chunks}: " + ", ".join(f"{n} {v[-1]:.2f} rec/s" for n, v in rates.items())
              + f" (load {os.getloadavg()[0]:.1f}); first {hi} records: {json.dumps(so_far)}", flush=True)
    medians = {name: statistics.median(v) for name, v in rates.items()}
    cpu_medians = {name: statistics.median(v) for name, v in cpu_rates.items()}
    return {"records": len(examples), "rec_s": medians, "bf16_vs_fp32": medians["bf16"] / medians["fp32"],
            "rec_per_cpu_s": cpu_medians, "bf16_vs_fp32_per_cpu_s": cpu_medians["bf16"] / cpu_medians["fp32"],
            "rates": rates, **agreement(ifd["fp32"], ifd["bf16"])}


# How often the authors' re-tokenised boundary differs from tokenising prompt and response separately.


def bench_boundary(examples: list[Example], model, tokenizer, prompt: str, score_limit: int) -> dict:
    engine = make_engine(model, tokenizer)
    plans = {b: plan_records(examples, ScoreConfig(prompt=prompt, boundary=b), tokenizer, engine.tokenization)
             for b in ("reference", "exact")}
    differ = [i for i in range(len(examples)) if plans["reference"][i] != plans["exact"][i]]
    out = {"prompt": prompt, "records": len(examples), "differ": len(differ)}
    scored = [examples[i] for i in differ[:score_limit]]
    if scored:
        ifd = {b: score_examples(scored, model, tokenizer, ScoreConfig(prompt=prompt, boundary=b))["ifd"].to_numpy()
               for b in ("reference", "exact")}
        rel = np.abs(ifd["exact"] - ifd["reference"]) / np.abs(ifd["reference"])
        rel = rel[np.isfinite(rel)]
        out.update({"scored_differing": len(scored), "median_rel_ifd_diff": float(np.median(rel)),
                    "max_rel_ifd_diff": float(np.max(rel)),
                    "example": _boundary_example(examples[differ[0]], prompt, tokenizer)})
    return out


def _boundary_example(example: Example, prompt: str, tokenizer) -> str:
    from superfilter.prompts import scoring_prompt

    text, _ = scoring_prompt(example, prompt, tokenizer)
    joint = tokenizer.tokenize(text + example.output)
    n = len(tokenizer.tokenize(text))
    return f"joint tokens at the boundary {joint[max(0, n - 2):n + 2]} vs prompt ends {tokenizer.tokenize(text)[-2:]}"


# Peak memory of the stage for N synthetic records (a child process per size; the tiny model keeps it quick).

WORDS = ("the of and to in is a for that with as on it be by this are from at an or data model write list give "
         "explain short answer three example describe").split()


def synthetic_examples(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    return [Example.create(f"{i}: {words(3, 10)}", words(0, 6) if i % 3 == 0 else "", words(4, 20))
            for i in range(n)]


def memory_child(n: int, workdir: Path) -> dict:
    examples_path = workdir / EXAMPLES_FILE
    write_examples(synthetic_examples(n), examples_path)
    spec = ModelConfig(name="tiny", source="tiny", path="gpt2")
    load_model(spec, "cpu")  # model and libraries in memory before the baseline is read
    baseline = peak_rss_mb()
    started = time.perf_counter()
    score_stage(examples_path, spec, ScoreConfig(max_length=64), RuntimeConfig(device="cpu"), workdir / "score",
                StageRun(None, "score"))
    import pandas as pd

    table = pd.read_parquet(workdir / "score" / SCORES_FILE)
    return {"records": n, "baseline_mb": baseline, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - started,
            "table_mb": table.memory_usage(deep=True).sum() / 2**20,
            "examples_file_mb": examples_path.stat().st_size / 2**20}


def bench_memory(sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--workdir", tmp],
                                 check=True, capture_output=True, text=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"memory: {rows[-1]}", flush=True)
    return rows




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/alpaca_5000.json")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--records", type=int, default=500, help="records for the speed comparison (0 = skip)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, default=ScoreConfig.batch_tokens)
    parser.add_argument("--dtype-records", type=int, default=0, help="records for engine fp32 vs bf16 (0 = skip)")
    parser.add_argument("--dtype-chunks", type=int, default=6, help="alternating chunks of the fp32/bf16 run")
    parser.add_argument("--dtype-offset", type=int, default=0, help="first record of the fp32/bf16 run")
    parser.add_argument("--boundary-records", type=int, default=5000, help="records for the boundary count (0 = skip)")
    parser.add_argument("--boundary-score-limit", type=int, default=100, help="differing records to score both ways")
    parser.add_argument("--memory", type=int, nargs="*", default=[], help="synthetic dataset sizes for peak RSS")
    parser.add_argument("--memory-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, Path(args.workdir))))
        return

    report: dict = {"date": datetime.date.today().isoformat(), "model": args.model, "data": args.data,
                    "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                    "load_average": os.getloadavg(), "cpu_flags": sorted(cpu_flags() & BF16_FLAGS),
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "dtype_auto": choose_dtype("auto", torch.device("cpu")).reason}
    print(f"{report}", flush=True)
    if args.records or args.boundary_records or args.dtype_records:
        examples = load_examples(DataConfig(path=args.data))[0]
        model, tokenizer = load_model(model_from_name(args.model), "cpu", dtype=torch.float32)
    if args.records:
        report["speed"] = bench_speed(examples[:args.records], model, tokenizer, args.repeats, args.batch_tokens)
        print(f"speed: {report['speed']}", flush=True)
    if args.dtype_records:
        chosen = examples[args.dtype_offset:args.dtype_offset + args.dtype_records]
        report["dtypes"] = bench_dtypes(chosen, model, tokenizer, args.dtype_chunks,
                                        args.batch_tokens)
        print(f"dtypes: {report['dtypes']}", flush=True)
    if args.boundary_records:
        report["boundary"] = [bench_boundary(examples[:args.boundary_records], model, tokenizer, prompt,
                                             args.boundary_score_limit) for prompt in ("none", "alpaca")]
        print(f"boundary: {report['boundary']}", flush=True)
    if args.memory:
        report["memory"] = bench_memory(args.memory)
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
