"""The selector study's table: each selector vs random at equal records and at equal tokens, per measure, paired.

    python experiments/cpu_selectors/report.py multirun/<date>/<time> [more run folders] --out experiments/cpu_selectors

Reads every run_summary.json below the folders, the per-item files of each job's evaluations (eval/reference_nll/,
eval/lm_eval/: the model's and its partner's) and compares them with superfilter.stats: per item, seeds pooled
(the same selector trained with several seeds against random drawn and trained with those seeds), bootstrap 95% CI
over items. Writes <out>/report.md (the table) and <out>/paired.png (Δ and its interval per selector and measure).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.lm_eval_items import higher_is_better
from superfilter.contracts import EVAL_DIR, RUN_SUMMARY_FILE, STAGE_CONFIG_FILE
from superfilter.stats import Comparison, compare

BUDGETS = {"eval": "equal records", "eval_tokens": "equal tokens"}  # run summary stage → the partner's budget
SUITES = {"reference_nll": "nll_mean", "lm_eval": "value"}  # per-item folders of eval/ and their value field


@dataclass(frozen=True)
class Measure:
    name: str
    higher_is_better: bool
    ours: dict[str, float]
    theirs: dict[str, float]


def read_rows(path: Path, field: str) -> dict[str, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {str(r["id"]): float(r[field]) for r in rows if r.get(field) is not None}


def measures(eval_dir: Path) -> list[Measure]:
    """Every measure with per-item files for both the model and its partner in one eval stage folder."""
    found = []
    directions: dict[str, bool] = {}
    lm_eval_json = eval_dir / EVAL_DIR / "lm_eval.json"
    if lm_eval_json.is_file():
        for entry in json.loads(lm_eval_json.read_text())["tasks"]:
            metric = entry["headline"]["metric"] or ""
            directions[entry["task"]] = higher_is_better(entry, metric)
    for suite, field in SUITES.items():
        for partner in sorted((eval_dir / EVAL_DIR / suite).glob("*.reference.jsonl")):
            name = partner.name.removesuffix(".reference.jsonl")
            ours = partner.with_name(f"{name}.jsonl")
            if ours.is_file():
                label = f"reference NLL {name}" if suite == "reference_nll" else name
                found.append(Measure(label, directions.get(name.split("#")[0], True) if suite == "lm_eval" else False,
                                     read_rows(ours, field), read_rows(partner, field)))
    return found


def job(summary_path: Path) -> tuple[str, int, dict[str, Path]]:
    """(selector, training seed, {stage: eval folder}) of one run."""
    stages = json.loads(summary_path.read_text())["stages"]
    train_config = json.loads((Path(stages["train"]["path"]) / STAGE_CONFIG_FILE).read_text())
    selector = stages["select"]["metrics"]["selector"]
    return selector, int(train_config["params"]["seed"]), {s: Path(stages[s]["path"]) for s in BUDGETS if s in stages}


def collect(folders: list[Path]) -> list[tuple[str, str, Comparison]]:
    """(selector, budget, comparison) per measure, each selector's seeds pooled per item on both sides."""
    grouped: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(lambda: {"ours": {}, "theirs": {}})
    for summary in sorted(p for folder in folders for p in folder.rglob(RUN_SUMMARY_FILE)):
        selector, seed, evals = job(summary)
        for stage, eval_dir in evals.items():
            for m in measures(eval_dir):
                group = grouped[(selector, BUDGETS[stage], m.name)]
                group["higher_is_better"] = m.higher_is_better
                group["ours"][seed], group["theirs"][seed] = m.ours, m.theirs  # a rerun of a seed replaces it
    return [(selector, budget, compare(list(g["ours"].values()), list(g["theirs"].values()), measure,
                                       g["higher_is_better"], partner=f"random ({budget})"))
            for (selector, budget, measure), g in sorted(grouped.items())]


def table(rows: list[tuple[str, str, Comparison]]) -> list[str]:
    lines = ["| selector | vs random at | measure | Δ [95% CI] | n | seeds (selector / random) | better / worse on "
             "| verdict |", "|---|---|---|---|---|---|---|---|"]
    for selector, budget, c in rows:
        direction = "higher" if c.higher_is_better else "lower"
        lines.append(f"| {selector} | {budget} | {c.measure} ({direction} is better) | {c.delta:+.4f} "
                     f"[{c.lo:+.4f}, {c.hi:+.4f}] | {c.n} | {c.seeds[0]} / {c.seeds[1]} "
                     f"| {100 * c.share_better:.0f}% / {100 * c.share_worse:.0f}% | {c.verdict} |")
    return lines


def plot(rows: list[tuple[str, str, Comparison]], path: Path) -> None:
    """One panel per measure: each selector's Δ vs random with its interval, equal records and equal tokens."""
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    names = sorted({c.measure for _, _, c in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 0.5 * len(rows) / len(names) + 2.5),
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mine = [(f"{s} ({b})", c) for s, b, c in rows if c.measure == name]
        for y, (label, c) in enumerate(mine):
            ax.errorbar(c.delta, y, xerr=[[c.delta - c.lo], [c.hi - c.delta]], fmt="o", capsize=3,
                        color="#4c72b0" if "records" in label else "#dd8452")
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(mine)), [label for label, _ in mine], fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("Δ vs random (lower is better)" if not mine[0][1].higher_is_better else "Δ vs random")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders (with run_summary.json)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = collect(args.folders)
    if not rows:
        parser.error("no evaluation with per-item files for a model and its partner below those folders")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "paired.png")
    text = ["# CPU selector study: each selector vs random, paired per item", "",
            "Δ = mean over items of (selector − random); 95% percentile bootstrap interval over items; several "
            "training seeds are averaged per item first (superfilter/stats.py).", "", *table(rows), "",
            "![paired differences](paired.png)", ""]
    (args.out / "report.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
