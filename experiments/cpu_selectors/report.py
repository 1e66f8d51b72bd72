"""The selector study's report: each selector vs random at the same budget (records or tokens), per measure, paired.

    python experiments/cpu_selectors/report.py multirun/ --out experiments/cpu_selectors

Reads every run_summary.json below the folders. Each trained model is named by its subset (selector, budget in
records or response tokens) and its training seed; its per-item values come from the eval stage that scored it
(eval/reference_nll/*.jsonl, eval/lm_eval/*.jsonl: `<name>.jsonl` for the run's model, `<name>.reference.jsonl`
for its partner). Every selector is compared with random at the same budget: per item, each side's seeds averaged
first, then the difference, then a 95% bootstrap interval over items (superfilter.stats). Writes <out>/report.md
(subsets, the table, the cost of each stage) and <out>/paired.png.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from eval.lm_eval_items import higher_is_better
from superfilter.contracts import EVAL_DIR, RUN_SUMMARY_FILE, TRAIN_RESULT_FILE
from superfilter.runs import read_object, read_run_summary, read_stage
from superfilter.stats import BETTER, NO_DIFFERENCE, WORSE, Comparison, compare

SUITES = {"reference_nll": "nll_mean", "lm_eval": "value"}  # per-item folders of eval/ and their value field
PARTNER_SUFFIX = ".reference.jsonl"
RANDOM = "random"
LABELS = {"reference_nll:gpt4_1106_preview_model_outputs": "NLL of GPT-4 Turbo answers",
          "reference_nll:alpaca_5000": "NLL of held-out Alpaca answers", "lm_eval:mmlu_local": "MMLU 0-shot"}
Values = dict[str, float]


@dataclass(frozen=True)
class Model:
    """One trained model: which subset it saw and with which training seed."""

    selector: str
    budget: str  # "10% of records" | "13,500 response tokens"
    seed: int
    records: int  # records trained on
    tokens: int  # tokens trained on (prompt + response, Gemma's tokenizer, after the length cut)
    response_tokens: int  # the tokens the loss is computed on


def model_of(train_folder: Path) -> Model:
    train = read_stage(train_folder)
    select = read_stage(train.upstream["select"].path)
    selector = select.params["filter"]
    budget = (f"{int(selector['budget_tokens']):,} response tokens" if selector.get("budget_tokens")
              else f"{100 * float(select.params['ratio']):g}% of records")
    data = read_object(Path(train_folder) / TRAIN_RESULT_FILE)["data"]
    return Model(selector["name"], budget, int(train.params["seed"]), data["n_kept"], data["n_tokens"],
                 data["n_trainable_tokens"])


def read_rows(path: Path, field: str) -> Values:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {str(r["id"]): float(r[field]) for r in rows if r.get(field) is not None}


def eval_files(eval_dir: Path) -> dict[str, tuple[bool, Path, Path | None]]:
    """measure → (higher is better, the run's model's per-item file, the partner's or None)."""
    directions: dict[str, bool] = {}
    lm_eval_json = eval_dir / EVAL_DIR / "lm_eval.json"
    if lm_eval_json.is_file():
        for entry in json.loads(lm_eval_json.read_text())["tasks"]:
            directions[entry["task"]] = higher_is_better(entry, entry["headline"]["metric"] or "")
    found = {}
    for suite in SUITES:
        for ours in sorted((eval_dir / EVAL_DIR / suite).glob("*.jsonl")):
            if ours.name.endswith(PARTNER_SUFFIX):
                continue
            name = ours.name.removesuffix(".jsonl")
            partner = ours.with_name(name + PARTNER_SUFFIX)
            label = LABELS.get(f"{suite}:{name}", f"{suite}:{name}")
            found[label] = (directions.get(name.split("#")[0], True) if suite == "lm_eval" else False, ours,
                            partner if partner.is_file() else None)
    return found


def collect(folders: list[Path]) -> tuple[dict[Model, dict[str, Values]], dict[str, bool], list[Path]]:
    """Per model, measure → per-item values; each measure's direction; every run summary read."""
    values: dict[Model, dict[str, Values]] = defaultdict(dict)
    directions: dict[str, bool] = {}
    summaries = sorted(p for folder in folders for p in Path(folder).rglob(RUN_SUMMARY_FILE))
    for file in summaries:
        stages = read_run_summary(file).stages
        if "eval" not in stages:
            continue
        ours = model_of(stages["train"].path)
        partner = model_of(stages["train_reference"].path) if "train_reference" in stages else None
        for measure, (higher, mine, theirs) in eval_files(stages["eval"].path).items():
            field = SUITES[mine.parent.name]
            directions[measure] = higher
            values[ours][measure] = read_rows(mine, field)
            if partner is not None and theirs is not None:
                values[partner][measure] = read_rows(theirs, field)
    return values, directions, summaries


def comparisons(values: dict[Model, dict[str, Values]], directions: dict[str, bool]
                ) -> list[tuple[str, str, Comparison]]:
    """(selector, budget, comparison) for every selector, budget and measure with random at that budget."""
    rows = []
    budgets = sorted({m.budget for m in values}, key=lambda b: ("tokens" in b, b))
    for budget in budgets:
        randoms = [m for m in values if m.budget == budget and m.selector == RANDOM]
        for selector in sorted({m.selector for m in values if m.budget == budget} - {RANDOM}):
            mine = [m for m in values if m.budget == budget and m.selector == selector]
            for measure in sorted(directions):
                ours = [values[m][measure] for m in mine if measure in values[m]]
                theirs = [values[m][measure] for m in randoms if measure in values[m]]
                if ours and theirs:
                    rows.append((selector, budget, compare(ours, theirs, measure, directions[measure],
                                                           partner=f"random ({budget})")))
    return rows


def subsets_table(values: dict[Model, dict[str, Values]]) -> list[str]:
    lines = ["| selector | budget | seed | records | tokens trained | response tokens |", "|---|---|---|---|---|---|"]
    for m in sorted(values, key=lambda m: ("tokens" in m.budget, m.budget, m.selector, m.seed)):
        lines.append(f"| {m.selector} | {m.budget} | {m.seed} | {m.records} | {m.tokens:,} | {m.response_tokens:,} |")
    return lines


def comparison_table(rows: list[tuple[str, str, Comparison]]) -> list[str]:
    lines = ["| selector | budget | measure | Δ vs random [95% CI] | n | seeds (selector / random) "
             "| better / worse on | verdict |", "|---|---|---|---|---|---|---|---|"]
    for selector, budget, c in rows:
        direction = "higher" if c.higher_is_better else "lower"
        lines.append(f"| {selector} | {budget} | {c.measure} ({direction} is better) | {c.delta:+.4f} "
                     f"[{c.lo:+.4f}, {c.hi:+.4f}] | {c.n} | {c.seeds[0]} / {c.seeds[1]} "
                     f"| {100 * c.share_better:.0f}% / {100 * c.share_worse:.0f}% | {c.verdict} |")
    return lines


def wide_table(rows: list[tuple[str, str, Comparison]]) -> list[str]:
    """One row per selector, one column per measure and budget: Δ vs random [95% CI] and ▲ better / ▼ worse /
    = no detectable difference (the compact form the README shows)."""
    marks = {BETTER: "▲", WORSE: "▼", NO_DIFFERENCE: "="}
    columns = sorted({(c.measure, b) for _, b, c in rows}, key=lambda mb: (mb[0], "tokens" in mb[1]))
    cells = {(s, b, c.measure): c for s, b, c in rows}
    lines = ["| selector | " + " | ".join(f"{m} ({'↑' if cells_dir(rows, m) else '↓'}), {b}" for m, b in columns)
             + " |", "|---" * (len(columns) + 1) + "|"]
    for selector in sorted({s for s, _, _ in rows}):
        row = []
        for measure, budget in columns:
            c = cells.get((selector, budget, measure))
            row.append("–" if c is None else
                       f"{c.delta:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}] {marks.get(c.verdict, '?')}")
        lines.append(f"| {selector} | " + " | ".join(row) + " |")
    return lines


def cells_dir(rows: list[tuple[str, str, Comparison]], measure: str) -> bool:
    return next(c.higher_is_better for _, _, c in rows if c.measure == measure)


def cost_table(summaries: list[Path]) -> list[str]:
    """Wall time and peak RSS per stage kind, each stage folder counted once (jobs share cached stages)."""
    seen: dict[Path, tuple[str, dict]] = {}
    for file in summaries:
        for stage in read_run_summary(file).stages.values():
            if stage.path not in seen and stage.metrics.get("stage_wall_s") is not None:
                seen[stage.path] = (read_stage(stage.path).stage, stage.metrics)
    kinds: dict[str, list[dict]] = defaultdict(list)
    for kind, metrics in seen.values():
        kinds[kind].append(metrics)
    lines = ["| stage | folders | wall (s) each: min / median / max | wall (s) in all | peak RSS (MiB), max |",
             "|---|---|---|---|---|"]
    total = 0.0
    for kind, rows in sorted(kinds.items()):
        walls = sorted(float(r["stage_wall_s"]) for r in rows)
        peaks = [float(r["stage_peak_rss_mb"]) for r in rows if r.get("stage_peak_rss_mb") is not None]
        total += sum(walls)
        lines.append(f"| {kind} | {len(walls)} | {walls[0]:.0f} / {walls[len(walls) // 2]:.0f} / {walls[-1]:.0f} "
                     f"| {sum(walls):,.0f} | {f'{max(peaks):,.0f}' if peaks else '–'} |")
    lines.append(f"| **all** | {len(seen)} | | **{total:,.0f} ({total / 3600:.2f} h)** | |")
    return lines


def plot(rows: list[tuple[str, str, Comparison]], path: Path) -> None:
    """One panel per measure: each selector's Δ vs random with its interval, by records and by tokens."""
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    names = sorted({c.measure for _, _, c in rows})
    selectors = sorted({s for s, _, _ in rows})
    budgets = sorted({b for _, b, _ in rows}, key=lambda b: ("tokens" in b, b))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 0.45 * len(selectors) + 2.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for j, budget in enumerate(budgets):
            for y, selector in enumerate(selectors):
                for s, b, c in rows:
                    if (s, b, c.measure) == (selector, budget, name):
                        ax.errorbar(c.delta, y + 0.15 * (j - (len(budgets) - 1) / 2),
                                    xerr=[[c.delta - c.lo], [c.hi - c.delta]], fmt="o", ms=4, capsize=2,
                                    color=colors[j % len(colors)], label=budget if y == 0 else None)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(range(len(selectors)), selectors, fontsize=8)
        higher = cells_dir(rows, name)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel(f"Δ vs random ({'higher' if higher else 'lower'} is better)", fontsize=8)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders (with run_summary.json)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    values, directions, summaries = collect(args.folders)
    rows = comparisons(values, directions)
    if not rows:
        parser.error("no selector and random at the same budget with per-item files below those folders")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out / "paired.png")
    text = ["# CPU selector study: each selector vs random at the same budget, paired per item", "",
            "Δ = mean over items of (selector − random); each side's training seeds are averaged per item first; "
            "95% percentile bootstrap interval over items (superfilter/stats.py). Written by "
            "`experiments/cpu_selectors/report.py`.", "", "## Subsets", "", *subsets_table(values), "",
            "## Each selector vs random", "",
            "▲ better, ▼ worse, = no detectable difference than random at the same budget (↓: lower is better).", "",
            *wide_table(rows), "", *comparison_table(rows), "", "![paired differences](paired.png)", "",
            "## Cost per stage", "", *cost_table(summaries), ""]
    (args.out / "report.md").write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
