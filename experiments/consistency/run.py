"""Weak-to-strong consistency (the paper's Table 1) on this machine: score the same records with a weak and a
strong model through the pipeline's cached score stage, then compare rankings, subsets and length effects.

    python experiments/consistency/run.py --data alpaca_5k --limit 1000 --weak smollm2_135m --strong gemma3_270m

Scores land in the content-addressed artifact store, so a rerun (or a pipeline run on the same data and models)
reuses them; the report, table and plot go to experiments/consistency/results/.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from superfilter import stages
from superfilter.config import Config, compose_config, to_config
from superfilter.consistency import RATIOS, consistency, markdown_table, scatter_plot
from superfilter.contracts import DEFAULT_MODEL, SCORES_FILE

HERE = Path(__file__).resolve().parent
log = logging.getLogger("consistency")


def compose(overrides: list[str]) -> Config:
    return to_config(compose_config(overrides))


def timing(metrics: dict[str, Any]) -> dict[str, Any]:
    """The scoring stage's own timing and throughput figures (kept in its metrics, so cache hits still report)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and any(
        word in k for word in ("seconds", "per_s", "per_second", "n_scored", "n_skipped", "n_records"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="alpaca_5k", help="a conf/data option")
    parser.add_argument("--limit", type=int, default=1000, help="first N records (0 = all)")
    parser.add_argument("--weak", default=DEFAULT_MODEL, help="a conf/model name")
    parser.add_argument("--strong", default="gemma3_270m", help="a conf/model name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. score.max_length=512")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    cfg = compose([f"data={args.data}", f"data.limit={args.limit}", f"model/weak={args.weak}",
                   f"model/strong={args.strong}", "tracking.mode=disabled", *args.overrides])
    started = time.perf_counter()
    examples = stages.prepare(cfg)
    tables: dict[str, pd.DataFrame] = {}
    runs: dict[str, Any] = {}
    # The score key depends on the model and score settings only, so these are the very artifacts a pipeline
    # run scoring with the same model (as weak scorer, or strong for self_ifd) builds or reuses.
    for role, name, model in (("weak", args.weak, cfg.model.weak), ("strong", args.strong, cfg.model.strong)):
        t0 = time.perf_counter()
        scores = stages.score(cfg, examples, model)
        runs[role] = {"model": name, "artifact": str(scores.path), "cache_hit": scores.cached,
                      "seconds_this_call": round(time.perf_counter() - t0, 1), **timing(scores.metrics)}
        tables[role] = pd.read_parquet(scores.path / SCORES_FILE)
        log.info("%s scores (%s): %s", role, name, runs[role])

    report = consistency(tables["weak"], tables["strong"], ratios=RATIOS, seed=args.seed)
    stem = f"{args.data}_{args.limit or 'all'}_{args.weak}_vs_{args.strong}"
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(report, args.weak, args.strong)
    command = "python experiments/consistency/run.py " + shlex.join(sys.argv[1:])
    report.update(command=command, scoring=runs, wall_seconds=round(time.perf_counter() - started, 1),
                  score_config=stages.key_params(cfg.score))
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{stem}.md").write_text(table + "\n")
    scatter_plot(tables["weak"], tables["strong"], args.out / f"{stem}.png", args.weak, args.strong)
    print(table)
    print(f"\nwrote {args.out / stem}.{{json,md,png}} in {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
