"""Collect a run or multirun folder's run summaries and stage artifacts into a markdown report beside the paper.

    python experiments/report.py multirun/<date>/<time> [--out DIR] [--reference MODEL]

Every run_summary.json below the folder is read, with the artifacts it points to (score tables, selections, training
logs, evaluation files). Sections appear only when their stages ran: weak-to-strong consistency (two or more
scorers on the same prepared records, Table 1), scoring cost (Table 4), the budget table (Tables 2/3), which stages
each job built or reused, the plots, and the commands that reproduce the folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from superfilter.consistency import RATIOS, consistency, scatter_plot
from superfilter.contracts import RUN_SUMMARY_FILE, SCORES_FILE, STAGE_CONFIG_FILE, TRAIN_METRICS_FILE

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("report")

ALPACA_SIZE = 52002  # the paper's costs are for scoring all of Alpaca
TEST_SETS = {"vicuna": "Vicuna", "koala": "Koala", "wizardlm": "WizardLM", "sinstruct": "Self-Instruct",
             "lima": "LIMA"}
FILTER_ORDER = ("full", "superfilter", "superfilter_d", "self_ifd", "perplexity", "length", "kmeans", "random")

# Paper Table 1 (Spearman ρ vs LLaMA2-7B, overlap of the 5/10/15% subsets), keyed by data family.
PAPER_CONSISTENCY: list[dict[str, Any]] = [
    {"data": "Alpaca", "filter": "GPT-2", "rho_ppl": 0.726, "rho_ifd": 0.679, "overlap": (0.28, 0.41, 0.49)},
    {"data": "Alpaca", "filter": "GPT-NEO", "rho_ppl": 0.846, "rho_ifd": 0.802, "overlap": (0.38, 0.51, 0.59)},
    {"data": "Alpaca-GPT4", "filter": "GPT-2", "rho_ppl": 0.730, "rho_ifd": 0.788, "overlap": (0.24, 0.40, 0.51)},
    {"data": "WizardLM-70k", "filter": "GPT-2", "rho_ppl": 0.763, "rho_ifd": 0.802, "overlap": (0.42, 0.54, 0.61)},
]
DATA_FAMILIES = {"alpaca_gpt4": "Alpaca-GPT4", "wizardlm": "WizardLM-70k", "alpaca": "Alpaca"}

# Paper Table 4: minutes to score Alpaca 52k.
PAPER_COST_MINUTES = {"GPT-2 IFD": 8, "LLaMA2-7B IFD": 161, "ChatGPT scoring": 120, "reward model": 1400}

# Paper Tables 2/3 (Alpaca, LLaMA2-7B student, GPT-2 filter), pairwise vs the 100% model, Open LLM avg, AlpacaEval.
PAPER_BUDGET: dict[tuple[str, float], dict[str, float]] = {
    ("full", 1.0): {"pairwise": 1.000, "open_llm": 55.25, "alpaca_eval": 27.75},
    ("superfilter", 0.05): {"pairwise": 1.133, "open_llm": 55.67, "alpaca_eval": 33.04},
    ("superfilter", 0.1): {"pairwise": 1.101, "open_llm": 56.97},
    ("superfilter", 0.15): {"pairwise": 1.193, "open_llm": 56.61},
    ("random", 0.05): {"pairwise": 0.936}, ("random", 0.1): {"pairwise": 0.968}, ("random", 0.15): {"pairwise": 0.977},
    ("kmeans", 0.05): {"pairwise": 0.927}, ("kmeans", 0.1): {"pairwise": 0.977}, ("kmeans", 0.15): {"pairwise": 0.982},
    ("perplexity", 0.05): {"pairwise": 0.261}, ("perplexity", 0.1): {"pairwise": 0.569},
    ("perplexity", 0.15): {"pairwise": 0.610},
    ("self_ifd", 0.05): {"pairwise": 1.303}, ("self_ifd", 0.1): {"pairwise": 1.330},
    ("self_ifd", 0.15): {"pairwise": 1.294},
}


@dataclass
class Run:
    """One Hydra job: its folder, command-line overrides, stage summaries and composed config."""

    folder: Path
    overrides: list[str]
    stages: dict[str, dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)

    def stage_path(self, name: str) -> Path | None:
        info = self.stages.get(name)
        return resolve_path(info["path"]) if info else None

    def metrics(self, name: str) -> dict[str, Any]:
        return (self.stages.get(name) or {}).get("metrics") or {}


@dataclass
class Scorer:
    """One score artifact: the model that scored, the records it scored, and its metrics."""

    key: str
    path: Path | None
    model: str
    prepare_key: str
    data: str
    metrics: dict[str, Any]


def resolve_path(raw: str) -> Path | None:
    """A stage path as written in a summary (relative to where the run started, usually the repo root)."""
    path = Path(raw)
    for candidate in ((path,) if path.is_absolute() else (Path.cwd() / path, REPO / path)):
        if candidate.exists():
            return candidate
    return None


def shown(path: Path | str | None) -> str:
    """A path for the report: relative to the repo when inside it, so reports carry no machine paths."""
    if path is None:
        return "–"
    path = Path(path)
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def read_json(path: Path | None) -> Any:
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def find_runs(folder: Path) -> list[Run]:
    runs = []
    for summary_file in sorted(folder.rglob(RUN_SUMMARY_FILE), key=job_order):
        summary = json.loads(summary_file.read_text())
        run_dir = summary_file.parent
        runs.append(Run(run_dir, list(summary.get("overrides", [])), summary.get("stages", {}),
                        read_yaml(run_dir / ".hydra" / "config.yaml")))
    return runs


def job_order(path: Path) -> tuple:
    """Multirun jobs in launch order (numbered folders sort numerically), other runs by path."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parent.parts)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return lines




def commands(folder: Path, runs: list[Run], out: Path) -> list[str]:
    """The multirun command(s) from multirun.yaml, else each run's own overrides; then the report's own."""
    lines = []
    for multirun_file in sorted(folder.rglob("multirun.yaml")):
        task = read_yaml(multirun_file).get("hydra", {}).get("overrides", {}).get("task", [])
        lines.append(shlex.join(["python", "run.py", "-m", *task]))
    if not lines:
        lines = [shlex.join(["python", "run.py", *run.overrides]) for run in runs]
    lines = list(dict.fromkeys(lines))
    lines.append(shlex.join(["python", "experiments/report.py", shown(folder), "--out", shown(out)]))
    return lines


def job_label(run: Run) -> str:
    return " ".join(o for o in run.overrides if not o.startswith(("experiment=", "hydra."))) or shown(run.folder)




def scorers(runs: list[Run]) -> list[Scorer]:
    """Distinct score artifacts (by key) across runs, each with the prepared records it scored."""
    prepared = {r.stages["prepare"]["key"]: r.metrics("prepare") for r in runs if "prepare" in r.stages}
    found: dict[str, Scorer] = {}
    for run in runs:
        for name in ("score", "score_strong"):
            info = run.stages.get(name)
            if info is None or info["key"] in found:
                continue
            path = resolve_path(info["path"])
            config = read_json(path / STAGE_CONFIG_FILE) if path else None
            prepare_key = (config or {}).get("upstream", {}).get("prepare", {}).get("key") or \
                run.stages.get("prepare", {}).get("key", "")
            data = prepared.get(prepare_key, {}).get("data", "?")
            metrics = info.get("metrics") or {}
            found[info["key"]] = Scorer(info["key"], path, metrics.get("model", "?"), prepare_key, data, metrics)
    return list(found.values())


def strong_names(runs: list[Run]) -> set[str]:
    return {run.config.get("model", {}).get("strong", {}).get("name") for run in runs} - {None}


def pick_reference(group: list[Scorer], runs: list[Run], requested: str | None) -> Scorer:
    """The scorer the others are compared with: as asked, else the runs' strong model, else the slowest scorer."""
    by_name = {s.model: s for s in group}
    if requested:
        if requested not in by_name:
            raise SystemExit(f"--reference {requested}: no such scorer among {sorted(by_name)}")
        return by_name[requested]
    for name in strong_names(runs):
        if name in by_name:
            return by_name[name]
    return min(group, key=lambda s: s.metrics.get("records_per_s") or math.inf)


def scored_groups(found: list[Scorer]) -> list[list[Scorer]]:
    """Scorers of the same prepared records, for groups with at least two distinct models."""
    groups: dict[str, list[Scorer]] = {}
    for scorer in found:
        groups.setdefault(scorer.prepare_key, []).append(scorer)
    return [g for g in groups.values() if len({s.model for s in g}) >= 2]


def data_family(name: str) -> str | None:
    for prefix, family in DATA_FAMILIES.items():
        if name.startswith(prefix):
            return family
    return None


def consistency_rows(weak: Scorer, strong: Scorer, strong_table: pd.DataFrame, out: Path
                     ) -> tuple[list[list[Any]], list[Any], Path]:
    """Our Table 1 row with its length and random baselines, the length-critique row, and the scatter plot."""
    weak_table = pd.read_parquet(weak.path / SCORES_FILE)
    result = consistency(weak_table, strong_table, ratios=RATIOS)
    overlaps = result["overlap"]

    def overlap_cell(key: str) -> str:
        return " / ".join(f"{overlaps[r][key]:.2f}" for r in overlaps)

    data = f"{strong.data} ({result['n_records']:,})"
    rows = [[data, weak.model, strong.model, result["n_aligned"], result["spearman"]["ppl_conditioned"],
             result["spearman"]["ifd"], overlap_cell("ifd_weak_vs_strong"),
             result["partial_spearman_given_length"]["ifd"], result["length_binned_spearman"]["ifd"]["weighted_mean"]]]
    for key, label in (("length_vs_strong_ifd", f"length (longest responses) vs {strong.model} IFD"),
                       ("random_vs_strong_ifd", f"random vs {strong.model} IFD")):
        rows.append([data, label, "", "", None, None, overlap_cell(key), None, None])
    with_length = result["spearman_with_length"]
    length_row = [data, weak.model, strong.model, with_length["weak_ifd"], with_length["strong_ifd"],
                  result["share_below_threshold"]["weak"], result["share_below_threshold"]["strong"]]
    plot = scatter_plot(weak_table, strong_table, out / f"scatter_{weak.model}_vs_{strong.model}.png",
                        weak.model, strong.model)
    return rows, length_row, plot


def consistency_section(groups: list[list[Scorer]], runs: list[Run], reference: str | None, out: Path) -> list[str]:
    rows: list[list[Any]] = []
    length_rows: list[list[Any]] = []
    notes: list[str] = []
    plots: list[Path] = []
    families: set[str] = set()
    for group in groups:
        strong = pick_reference(group, runs, reference)
        weak_ones = [s for s in group if s.model != strong.model]
        missing = [s.model for s in [strong, *weak_ones] if s.path is None]
        if missing:
            notes.append(f"- scores of {', '.join(missing)} not found (artifact missing): comparison skipped")
            continue
        strong_table = pd.read_parquet(strong.path / SCORES_FILE)
        families.add(data_family(strong.data) or "")
        for weak in weak_ones:
            ours, length_row, plot = consistency_rows(weak, strong, strong_table, out)
            rows += ours
            length_rows.append(length_row)
            plots.append(plot)
    known = families - {""}
    for paper in PAPER_CONSISTENCY:
        if paper["data"] in known or not known:
            rows.append([f"paper: {paper['data']}", paper["filter"], "LLaMA2-7B", "", paper["rho_ppl"],
                         paper["rho_ifd"], " / ".join(f"{v:.2f}" for v in paper["overlap"]), None, None])
    lines = ["## Weak-to-strong consistency (paper Table 1)", ""]
    lines += table(["data", "filter", "vs", "n", "ρ(PPL)", "ρ(IFD)", "overlap 5 / 10 / 15%",
                    "partial ρ(IFD \\| length)", "length-binned ρ(IFD)"], rows)
    lines += ["", "ρ = Spearman over the records both models scored; PPL = PPL(y|x); overlap = |A ∩ B| / k of the "
              "IFD-selected subsets (IFD < 1, highest first). The length rows select the longest responses, the "
              "random rows a seeded random subset: the overlap reached by tracking length alone or by chance. "
              "Length = response tokens of the weak tokenizer; partial ρ removes it, binned ρ is the mean ρ "
              "within length quintiles.", ""]
    lines += notes + ([""] if notes else [])
    if length_rows:
        lines += ["How much each IFD ranking follows response length (the length critique):", ""]
        lines += table(["data", "weak", "strong", "ρ(weak IFD, length)", "ρ(strong IFD, length)",
                        "weak share IFD < 1", "strong share IFD < 1"], length_rows)
        lines.append("")
    lines += [f"![{plot.stem}]({plot.name})" for plot in plots]
    return lines + [""]


def efficiency_section(found: list[Scorer]) -> list[str]:
    rows = []
    groups: dict[str, list[Scorer]] = {}
    for scorer in found:
        groups.setdefault(scorer.prepare_key, []).append(scorer)
    for group in groups.values():
        rates = [s.metrics.get("records_per_s") for s in group if s.metrics.get("records_per_s")]
        fastest = max(rates) if rates else None
        for s in sorted(group, key=lambda s: -(s.metrics.get("records_per_s") or 0)):
            rate = s.metrics.get("records_per_s")
            n = s.metrics.get("n_records")
            rows.append([f"{s.data} ({n:,})" if n else s.data, s.model, s.metrics.get("records_scored_this_run"),
                         fmt(s.metrics.get("scoring_seconds"), 0), fmt(rate, 3),
                         fmt(n / rate / 60 if rate and n else None, 1),
                         f"{ALPACA_SIZE / rate / 60:,.0f}" if rate else "–",
                         fmt(fastest / rate if rate and fastest else None, 2), s.metrics.get("n_processes")])
    lines = ["## Scoring cost (paper Table 4)", ""]
    lines += table(["data", "scorer", "records timed", "seconds", "records/s", "minutes (all records)",
                    "minutes for Alpaca 52k (projected)", "time vs the fastest (×)", "processes"], rows)
    paper = " · ".join(f"{name} {minutes:,} min" for name, minutes in PAPER_COST_MINUTES.items())
    lines += ["", f"Paper (one GPU, Alpaca 52k): {paper}; LLaMA2-7B / GPT-2 = "
              f"{PAPER_COST_MINUTES['LLaMA2-7B IFD'] / PAPER_COST_MINUTES['GPT-2 IFD']:.0f}×. Ours: each score "
              "stage's own timing (the run that built it; a resumed stage times only its last part), projected "
              "linearly to 52,002 records.", ""]
    return lines


def ifd_plot(found: list[Scorer], path: Path) -> Path | None:
    """IFD distributions of every scorer, log x, IFD = 1 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tables = [(s, pd.read_parquet(s.path / SCORES_FILE)) for s in found if s.path is not None]
    tables = [(s, t["ifd"][np.isfinite(t["ifd"]) & (t["ifd"] > 0)]) for s, t in tables]
    tables = [(s, ifd) for s, ifd in tables if len(ifd)]
    if not tables:
        return None
    low = min(float(ifd.min()) for _, ifd in tables)
    high = max(float(ifd.max()) for _, ifd in tables)
    bins = np.geomspace(low, high, 60) if high > low else 10
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for scorer, ifd in tables:
        ax.hist(ifd, bins=bins, alpha=0.5, label=f"{scorer.model} on {scorer.data} (n={len(ifd)})")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("IFD")
    ax.set_ylabel("records")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path




def budget_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """One row per distinct evaluation (a rerun of the same job is counted once)."""
    rows: dict[str, dict[str, Any]] = {}
    for run in runs:
        if "eval" not in run.stages or run.stages["eval"]["key"] in rows:
            continue
        select, evaluation = run.metrics("select"), run.metrics("eval")
        eval_dir = run.stage_path("eval")
        pairwise_file = read_json(eval_dir / "eval" / "pairwise.json") if eval_dir else None
        pairwise = evaluation.get("pairwise") or {}
        filter_name = select.get("selector", "?")
        ratio = 1.0 if filter_name == "full" else select.get("ratio")
        rows[run.stages["eval"]["key"]] = {
            "job": job_label(run), "filter": filter_name, "ratio": ratio, "n": select.get("count"),
            "response_chars": (select.get("subset") or {}).get("response_chars", {}).get("mean"),
            "partner": (pairwise_file or {}).get("reference") if "winning_score" in pairwise else None,
            "sets": pairwise.get("sets") or {}, "overall": pairwise.get("winning_score"),
            "wtl": (pairwise.get("win"), pairwise.get("tie"), pairwise.get("lose")),
            "suites": suite_columns(evaluation),
            "train": run.stage_path("train"), "partner_train": run.stage_path("train_reference"),
            "partner_is_full": partner_is_full(run, pairwise_file),
            "eval_settings": ((read_json(eval_dir / STAGE_CONFIG_FILE) if eval_dir else None) or {}).get("params", {}),
            "open_llm_over": ((read_json(eval_dir / "eval" / "open_llm.json") if eval_dir else None) or {}).get(
                "average_over"),
        }
    return sorted(rows.values(), key=lambda r: (filter_rank(r["filter"]), r["ratio"] or 0))


def suite_columns(evaluation: dict[str, Any]) -> dict[str, Any]:
    """Each registered suite's report columns from its metrics (eval/suites/); pairwise has its own columns."""
    from eval import suites

    columns: dict[str, Any] = {}
    for name, suite in suites.REGISTRY.items():
        if suite.report is not None and isinstance(evaluation.get(name), dict) and "skipped" not in evaluation[name]:
            columns.update(suite.report(evaluation[name]))
    return columns


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def settings_differences(rows: list[dict[str, Any]]) -> list[str]:
    """Evaluation settings that are not the same in every row: such rows are not comparable."""
    flat = [flatten(r["eval_settings"]) for r in rows if r["eval_settings"]]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def settings_note(rows: list[dict[str, Any]]) -> list[str]:
    """What the evaluations measured (from the first row's saved eval config), so small limits are not missed."""
    settings = next((flatten(r["eval_settings"]) for r in rows if r["eval_settings"]), {})
    if not settings:
        return []
    judge = settings.get("eval.judge.backend")
    judge_name = settings.get("eval.judge.api_model") if judge == "openai" else settings.get("eval.judge.model.name")

    def limit(key: str) -> str:
        value = settings.get(key) or settings.get("eval.limit")
        return "all" if not value else str(value)

    over = next((r["open_llm_over"] for r in rows if r["open_llm_over"]), None)
    arena = (f" Arena-Hard-Auto v0.1 on {limit('eval.arena_hard.limit')} questions;"
             if "arena_hard" in (settings.get("eval.suites") or []) else "")
    return [f"Evaluation settings: judge {judge} `{judge_name}`; pairwise {limit('eval.pairwise.limit')} prompts per "
            f"test set; AlpacaEval {settings.get('eval.alpaca_eval.version')} on {limit('eval.alpaca_eval.limit')} "
            f"prompts;{arena} Open LLM average over {', '.join(over) if over else '–'} with "
            f"{limit('eval.open_llm.limit')} items per task; answers of at most "
            f"{settings.get('eval.generation.max_new_tokens')} new tokens.", ""]


def partner_is_full(run: Run, pairwise_file: dict[str, Any] | None) -> bool:
    label = str((pairwise_file or {}).get("reference", ""))
    return run.config.get("eval", {}).get("reference") == "full" or label.startswith("full")


def filter_rank(name: str) -> int:
    return FILTER_ORDER.index(name) if name in FILTER_ORDER else len(FILTER_ORDER)


def budget_section(rows: list[dict[str, Any]], out: Path) -> list[str]:
    suite_header = list(dict.fromkeys(column for row in rows for column in row["suites"]))
    header = ["filter", "budget", "n", "mean response chars", "partner", *TEST_SETS.values(), "overall (W/T/L)",
              *suite_header, "paper: pairwise", "paper: Open LLM", "paper: AlpacaEval"]
    body = []
    for row in rows:
        paper = PAPER_BUDGET.get((row["filter"], round(row["ratio"] or 0, 4)), {})
        # The paper's pairwise numbers are vs the 100% model: set beside ours only when that is our partner too.
        paper_pairwise = paper.get("pairwise") if row["partner_is_full"] or row["filter"] == "full" else None
        wtl = "/".join(fmt(v) for v in row["wtl"]) if row["overall"] is not None else ""
        body.append([row["filter"], f"{row['ratio']:.0%}" if row["ratio"] is not None else "–", row["n"],
                     fmt(row["response_chars"], 0), row["partner"] or "–",
                     *[row["sets"].get(name) for name in TEST_SETS],
                     f"{fmt(row['overall'])} ({wtl})" if row["overall"] is not None else "–",
                     *[fmt(row["suites"].get(column), 2) for column in suite_header], paper_pairwise,
                     fmt(paper.get("open_llm"), 2), fmt(paper.get("alpaca_eval"), 2)])
    lines = ["## Budget: winning score vs the partner and benchmarks (paper Tables 2/3)", ""]
    differing = settings_differences(rows)
    if differing:
        lines += [f"**Warning: the evaluations below differ in {', '.join(differing)}; rows are not comparable.**", ""]
    lines += table(header, body)
    lines += ["", *settings_note(rows)]
    lines += ["Winning score = (W − L) / N + 1 over both answer orders (1.0 = parity with the partner). Paper "
              "columns: Alpaca 52k → LLaMA2-7B with GPT-2 IFD (Table 2; random, k-means, perplexity and "
              "self-filtering from Table 3), GPT-4 judge, the full test sets; AlpacaEval v1 and the Open LLM "
              "average in %. Ours: see the judge and limits in each evaluation's summary.md.", ""]
    chart = winning_plot(rows, out / "winning_scores.png")
    if chart is not None:
        lines += [f"![winning scores]({chart.name})", ""]
    curves = loss_plot(rows, out / "loss_curves.png")
    if curves is not None:
        lines += [f"![loss curves]({curves.name})", ""]
    return lines


def winning_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Overall winning score per budget, one bar per filter; 1.0 = parity with the partner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in rows if r["overall"] is not None]
    if not scored:
        return None
    ratios = sorted({r["ratio"] for r in scored})
    filters = sorted({r["filter"] for r in scored}, key=filter_rank)
    width = 0.8 / len(filters)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, name in enumerate(filters):
        xs, ys = [], []
        for r in scored:
            if r["filter"] == name:
                xs.append(ratios.index(r["ratio"]) + (i - (len(filters) - 1) / 2) * width)
                ys.append(r["overall"])
        ax.bar(xs, ys, width=width, label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
    ax.set_xlabel("budget")
    ax.set_ylabel("winning score vs partner")
    partners = sorted({r["partner"] for r in scored if r["partner"]})
    ax.set_title("partner: " + ", ".join(partners))
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curve(train_dir: Path | None) -> pd.DataFrame | None:
    log_file = train_dir / TRAIN_METRICS_FILE if train_dir else None
    if log_file is None or not log_file.exists():
        return None
    frame = pd.read_json(log_file, lines=True)
    return frame if {"step", "loss"} <= set(frame.columns) and len(frame) else None


def loss_plot(rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss per step of every model in the table (the partner's too, when it was trained here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = []
    seen: set[Path] = set()
    for row in rows:
        label = f"{row['filter']} {row['ratio']:.0%} (n={row['n']})" if row["ratio"] is not None else row["filter"]
        for train_dir, name in ((row["train"], label), (row["partner_train"], f"{row['partner']} (partner)")):
            curve = loss_curve(train_dir)
            if curve is not None and train_dir not in seen:
                seen.add(train_dir)
                curves.append((name, curve))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for label, curve in curves:
        ax.plot(curve["step"], curve["loss"], marker="." if len(curve) < 20 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path




STAGE_COLUMNS = ("prepare", "score", "score_strong", "select", "train", "train_reference", "eval")


def reuse_section(runs: list[Run]) -> list[str]:
    """Which stages each job built and which it found cached: a ratio sweep scores once, trains once per budget."""
    present = [name for name in STAGE_COLUMNS if any(name in r.stages for r in runs)]
    rows = [[job_label(r), *[cell(r.stages.get(name)) for name in present]] for r in runs]
    built = {name: len({r.stages[name]["key"] for r in runs if name in r.stages and not r.stages[name]["cache_hit"]})
             for name in present}
    lines = ["## Stages built and reused", ""]
    lines += table(["job", *present], rows)
    lines += ["", "built `key` = computed by this job; cached = reused from the artifact store (same content key). "
              "Artifacts built here: " + ", ".join(f"{name} {n}" for name, n in built.items()) + ".", ""]
    return lines


def cell(info: dict[str, Any] | None) -> str:
    if info is None:
        return "–"
    return f"{'cached' if info['cache_hit'] else 'built'} `{info['key'][:8]}`"


def compute_seconds(runs: list[Run]) -> dict[str, float]:
    """Seconds each kind of stage took when built, over distinct artifacts (cache hits cost nothing)."""
    seconds: dict[str, float] = {}
    seen: set[str] = set()
    fields = {"score": "scoring_seconds", "score_strong": "scoring_seconds", "train": "wall_s",
              "train_reference": "wall_s", "eval": "seconds"}
    for run in runs:
        for name, info in run.stages.items():
            value = (info.get("metrics") or {}).get(fields.get(name, ""))
            if info["key"] in seen or not isinstance(value, (int, float)):
                continue
            seen.add(info["key"])
            kind = name.removesuffix("_strong").removesuffix("_reference")
            seconds[kind] = seconds.get(kind, 0.0) + float(value)
    return seconds




def build_report(folder: Path, out: Path, reference: str | None = None) -> Path:
    runs = find_runs(folder)
    if not runs:
        raise SystemExit(f"{folder}: no run_summary.json below this folder")
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Report: {shown(folder)}", "", f"{len(runs)} run(s).", "", "## Commands", "", "```"]
    lines += commands(folder, runs, out) + ["```", ""]

    found = scorers(runs)
    groups = scored_groups(found)
    if groups:
        lines += consistency_section(groups, runs, reference, out)
    if found:
        lines += efficiency_section(found)
        hist = ifd_plot(found, out / "ifd_distributions.png")
        if hist is not None:
            lines += ["IFD distributions:", "", f"![IFD distributions]({hist.name})", ""]
    rows = budget_rows(runs)
    if rows:
        lines += budget_section(rows, out)
    lines += reuse_section(runs)
    seconds = compute_seconds(runs)
    if seconds:
        lines += ["Compute recorded in the artifacts these runs used (each counted once, whether built here or "
                  "reused): " + ", ".join(
            f"{name} {value / 60:.1f} min" for name, value in seconds.items()) + ".", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a Hydra run or multirun folder (or any folder above them)")
    parser.add_argument("--out", type=Path, help="where report.md and the plots go (default: the folder)")
    parser.add_argument("--reference", help="the scorer the consistency section compares the others with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    report = build_report(args.folder, args.out or args.folder, args.reference)
    print(report.read_text())
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
