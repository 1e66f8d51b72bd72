"""Weak vs strong scoring throughput side by side: the same records, models alternating, median over repeats.

    python experiments/efficiency/bench.py --records 24 --repeats 3

The score stages' own timings come from runs made at different times; on a shared machine the load differs
between them, so this measures the ratio with both models taking turns in one process.
"""

from __future__ import annotations

import argparse
import statistics
import time

from superfilter.contracts import DEFAULT_MODEL
from superfilter.data import DataConfig, load_examples
from superfilter.models import load_model, model_from_name
from superfilter.scoring import ScoreConfig, score_examples


def records_per_second(model, tokenizer, examples, cfg: ScoreConfig) -> float:
    started = time.perf_counter()
    score_examples(examples, model, tokenizer, cfg)
    return len(examples) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/alpaca_5000.json", help="an Alpaca-format file")
    parser.add_argument("--records", type=int, default=24, help="the first N records")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weak", default=DEFAULT_MODEL)
    parser.add_argument("--strong", default="gemma3_270m")
    args = parser.parse_args()

    examples, _ = load_examples(DataConfig(name="bench", path=args.data, format="alpaca", limit=args.records))
    cfg = ScoreConfig()
    models = {name: load_model(model_from_name(name), "cpu") for name in (args.weak, args.strong)}
    for model, tokenizer in models.values():  # warm-up: first calls allocate and pick kernels
        score_examples(examples[:2], model, tokenizer, cfg)
    rates: dict[str, list[float]] = {name: [] for name in models}
    ratios = []
    for repeat in range(args.repeats):
        # alternate who goes first so neither model always meets the same moment of the machine's load
        order = list(models) if repeat % 2 == 0 else list(reversed(models))
        for name in order:
            rates[name].append(records_per_second(*models[name], examples, cfg))
        ratios.append(rates[args.weak][-1] / rates[args.strong][-1])
    print(f"{len(examples)} records of {args.data}, {args.repeats} repeats, prompt={cfg.prompt} "
          f"ifd_form={cfg.ifd_form} max_length={cfg.max_length} batch_tokens={cfg.batch_tokens}")
    print("| scorer | records/s (median) | all repeats | minutes for Alpaca 52k (projected) |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {', '.join(f'{v:.3f}' for v in values)} | {52002 / median / 60:,.0f} |")
    print(f"\n{args.strong} time / {args.weak} time, per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.2f}×")


if __name__ == "__main__":
    main()
