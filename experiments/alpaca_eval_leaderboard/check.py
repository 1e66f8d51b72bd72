"""Recompute AlpacaEval 2's leaderboard from alpaca_eval's own annotations: win rate and standard error per model,
and each preference re-derived from the judge's log-probabilities (our reader and output order).

    python experiments/alpaca_eval_leaderboard/check.py <alpaca_eval>/results \
        <alpaca_eval>/src/alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eval.metrics.alpaca_eval import check_against_leaderboard, load_annotations  # noqa: E402
from superfilter.errors import EXIT_USER_ERROR, UserError  # noqa: E402
from superfilter.report import markdown_table  # noqa: E402

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="alpaca_eval's results/ folder (results/<model>/<annotator>/)")
    parser.add_argument("leaderboard", type=Path, help="the annotator's leaderboard CSV")
    parser.add_argument("--annotator", default=ANNOTATOR)
    parser.add_argument("--tolerance", type=float, default=1e-9, help="largest allowed difference")
    args = parser.parse_args(argv)
    with open(args.leaderboard, newline="") as f:
        published = {row[""]: row for row in csv.DictReader(f)}
    files = sorted(args.results.glob(f"*/{args.annotator}/annotations.json"))
    try:
        rows = [check_against_leaderboard(records, published[records[0]["generator_2"]])
                for records in map(load_annotations, files)
                if records and records[0]["generator_2"] in published]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if not rows:
        print(f"error: no {args.annotator}/annotations.json under {args.results} matches a leaderboard row",
              file=sys.stderr)
        return EXIT_USER_ERROR
    print("\n".join(markdown_table(
        ["model", "win rate", "published", "Δ win rate", "Δ standard error", "n", "preferences re-derived",
         "max Δ preference"],
        [[r["generator"], f"{r['win_rate']:.4f}", f"{r['published_win_rate']:.4f}", f"{r['win_rate_diff']:.1e}",
          f"{r['standard_error_diff']:.1e}", r["n_total"], r["preferences_rederived"],
          f"{r['max_preference_diff']:.1e}"]
         for r in rows])))
    bad = [r["generator"] for r in rows if max(r["win_rate_diff"], r["standard_error_diff"], r["max_preference_diff"])
           > args.tolerance or r["n_total"] != r["published_n_total"]]
    total = sum(r["preferences_rederived"] for r in rows)
    print(f"\n{len(rows)} models, {total:,} preferences: "
          + (f"{len(bad)} differ beyond {args.tolerance:g}: {', '.join(bad)}" if bad else
             f"every win rate, standard error and preference within {args.tolerance:g}"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
