"""The report of a run or multirun folder: its run summaries and the artifacts they name, in the paper's table layouts
beside the paper's numbers, with the plots and the commands that reproduce the folder.

Sections appear only when their stages ran: weak-to-strong consistency (two or more scorers on the same prepared
records, Table 1), scoring cost (Table 4), the budget table (Tables 2/3), which stages each job built or reused.
Collecting (reading artifacts, computing, plotting) is kept apart from laying out: each `*_section` and `*_table`
function turns records into markdown lines and reads nothing.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from superfilter.artifacts import write_text_atomic
from superfilter.consistency import RATIOS, consistency, scatter_plot
from superfilter.contracts import EVAL_DIR, PAIRWISE_SETS, REPORT_COLUMNS, SCORES_FILE, TRAIN_METRICS_FILE
from superfilter.errors import ConfigError, DataError
from superfilter.published import cells_for, describe
from superfilter.runs import StageRecord, find_run_summaries, read_object, read_stage
from superfilter.tracking import TrackingConfig, log_report_table

REPORT_FILE = "report.md"
REPORT_COMMAND = ("python", "experiments/report.py")  # the thin script over build_report, for the commands section
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a multirun's command line

ALPACA_SIZE = 52002  # the paper's costs are for scoring all of Alpaca
FILTER_ORDER = ("full", "superfilter", "superfilter_d", "self_ifd", "perplexity", "length", "kmeans", "random")
STAGE_COLUMNS = ("prepare", "score", "score_strong", "select", "train", "train_reference", "eval")
# The metric holding each stage's own compute time.
SECONDS_METRIC = {"score": "scoring_seconds", "score_strong": "scoring_seconds", "train": "wall_s",
                  "train_reference": "wall_s", "eval": "seconds"}

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

@dataclass(frozen=True)
class Run:
    """One Hydra job: its stages as its run summary lists them, where their folders are, and its composed config."""

    label: str  # the job's overrides, or its folder when it has none
    overrides: list[str]
    stages: dict[str, StageRecord]
    folders: dict[str, Path | None] = field(default_factory=dict)  # stage → folder; None once deleted or moved
    config: dict[str, Any] = field(default_factory=dict)  # .hydra/config.yaml
    summary_file: Path | None = None
    wandb_group: str = ""  # from the run summary: where the report's table goes

    def metrics(self, name: str) -> dict[str, Any]:
        return self.stages[name].metrics if name in self.stages else {}

    def folder(self, name: str) -> Path | None:
        return self.folders.get(name)


@dataclass(frozen=True)
class Scorer:
    """One score artifact: the model that scored, the records it scored, and its metrics."""

    key: str
    path: Path | None
    model: str
    prepare_key: str
    data: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Comparison:
    """A weak scorer against the reference scorer on the same records: a Table 1 row and its length views."""

    data: str
    n_records: int
    weak: str
    strong: str
    n_aligned: int
    rho_ppl: float
    rho_ifd: float
    partial_rho_ifd: float  # given response length
    binned_rho_ifd: float  # mean ρ within length bins
    overlaps: dict[str, tuple[float, ...]]  # ifd_weak_vs_strong, length_vs_strong_ifd, random_vs_strong_ifd: by ratio
    rho_with_length: tuple[float, float]  # (weak IFD, strong IFD) vs response length
    share_below_one: tuple[float, float]  # (weak, strong) share of IFD < 1
    plot: Path | None = None


@dataclass(frozen=True)
class BudgetRow:
    """One distinct evaluation: the subset it trained on, its pairwise result and its suites' report columns."""

    filter: str
    ratio: float | None
    n: int | None = None
    response_chars: float | None = None
    partner: str | None = None
    sets: dict[str, float] = field(default_factory=dict)  # pairwise winning score per test set
    overall: float | None = None
    wtl: tuple[Any, Any, Any] = (None, None, None)
    suites: dict[str, Any] | None = field(default_factory=dict)  # None: the eval artifact recorded no report columns
    partner_is_full: bool = False
    eval_settings: dict[str, Any] = field(default_factory=dict)  # the eval stage's key params
    open_llm_over: list[str] | None = None
    job: str = ""
    eval_key: str = ""
    train: Path | None = None
    partner_train: Path | None = None
    dataset: str = ""  # conf names of the setting, for the published numbers (superfilter.published)
    strong: str = ""
    scorer: str | None = None  # the model whose scores chose the subset; None for random, k-means, full
    setting: str = ""  # the experiment's name (cfg.name)


def locate(raw: Path, home: Path) -> Path | None:
    """A path as a run summary or stage config writes it: relative ones are relative to where the run started,
    the current folder or `home`. None when it is not on this machine (any more)."""
    for candidate in ((raw,) if raw.is_absolute() else (Path.cwd() / raw, home / raw)):
        if candidate.exists():
            return candidate
    return None


def shown(path: Path | str | None, home: Path) -> str:
    """A path for the report: relative to `home` when inside it, so reports carry no machine paths."""
    if path is None:
        return "–"
    path = Path(path)
    try:
        return str(path.resolve().relative_to(home.resolve()))
    except ValueError:
        return str(path)


def read_yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


def load_runs(folder: Path, home: Path) -> list[Run]:
    """Every run below `folder` (multirun jobs in launch order), with its stage folders located on this machine."""
    runs = []
    for summary in find_run_summaries(folder):
        label = " ".join(o for o in summary.overrides if not o.startswith(("experiment=", "hydra.")))
        runs.append(Run(label or shown(summary.folder, home), summary.overrides, summary.stages,
                        {name: locate(record.path, home) for name, record in summary.stages.items()},
                        read_yaml(summary.folder / ".hydra" / "config.yaml"), summary.file, summary.wandb_group))
    return runs


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def commands(folder: Path, runs: Sequence[Run], out: Path, home: Path) -> list[str]:
    """The multirun command(s) from multirun.yaml, else each run's own overrides; then the report's own."""
    lines = []
    for multirun_file in sorted(folder.rglob(MULTIRUN_FILE)):
        task = read_yaml(multirun_file).get("hydra", {}).get("overrides", {}).get("task", [])
        lines.append(shlex.join(["python", "run.py", "-m", *task]))
    if not lines:
        lines = [shlex.join(["python", "run.py", *run.overrides]) for run in runs]
    lines = list(dict.fromkeys(lines))
    lines.append(shlex.join([*REPORT_COMMAND, shown(folder, home), "--out", shown(out, home)]))
    return lines


def find_scorers(runs: Sequence[Run]) -> list[Scorer]:
    """Distinct score artifacts (by key) across runs, each with the prepared records it scored."""
    prepared = {r.stages["prepare"].key: r.metrics("prepare") for r in runs if "prepare" in r.stages}
    found: dict[str, Scorer] = {}
    for run in runs:
        for name in ("score", "score_strong"):
            record = run.stages.get(name)
            if record is None or record.key in found:
                continue
            path = run.folder(name)
            upstream = read_stage(path).upstream.get("prepare") if path else None
            prepare_key = upstream.key if upstream else run.stages["prepare"].key if "prepare" in run.stages else ""
            data = prepared.get(prepare_key, {}).get("data", "?")
            found[record.key] = Scorer(record.key, path, record.metrics.get("model", "?"), prepare_key, data,
                                       record.metrics)
    return list(found.values())


def strong_names(runs: Sequence[Run]) -> set[str]:
    return {run.config.get("model", {}).get("strong", {}).get("name") for run in runs} - {None}


def pick_reference(group: Sequence[Scorer], runs: Sequence[Run], requested: str | None) -> Scorer:
    """The scorer the others are compared with: as asked, else the runs' strong model, else the slowest scorer."""
    by_name = {s.model: s for s in group}
    if requested:
        if requested not in by_name:
            raise ConfigError(f"reference scorer {requested}: no such scorer among {sorted(by_name)}")
        return by_name[requested]
    for name in strong_names(runs):
        if name in by_name:
            return by_name[name]
    return min(group, key=lambda s: s.metrics.get("records_per_s") or math.inf)


def scored_groups(found: Sequence[Scorer]) -> list[list[Scorer]]:
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


def comparison(result: dict[str, Any], data: str, weak: str, strong: str, plot: Path | None = None) -> Comparison:
    """The numbers Table 1 and the length views show, from superfilter.consistency.consistency's result."""
    overlaps = {key: tuple(result["overlap"][r][key] for r in result["overlap"])
                for key in ("ifd_weak_vs_strong", "length_vs_strong_ifd", "random_vs_strong_ifd")}
    with_length, below = result["spearman_with_length"], result["share_below_threshold"]
    return Comparison(
        data=data, n_records=result["n_records"], weak=weak, strong=strong, n_aligned=result["n_aligned"],
        rho_ppl=result["spearman"]["ppl_conditioned"], rho_ifd=result["spearman"]["ifd"],
        partial_rho_ifd=result["partial_spearman_given_length"]["ifd"],
        binned_rho_ifd=result["length_binned_spearman"]["ifd"]["weighted_mean"], overlaps=overlaps,
        rho_with_length=(with_length["weak_ifd"], with_length["strong_ifd"]),
        share_below_one=(below["weak"], below["strong"]), plot=plot)


def compare(group: Sequence[Scorer], runs: Sequence[Run], reference: str | None, out: Path
            ) -> tuple[list[Comparison], list[str]]:
    """Each weak scorer of the group against the reference scorer (with its scatter plot), and notes on what is
    missing."""
    strong = pick_reference(group, runs, reference)
    weak_ones = [s for s in group if s.model != strong.model]
    missing = [s.model for s in [strong, *weak_ones] if s.path is None]
    if missing:
        return [], [f"- scores of {', '.join(missing)} not found (artifact missing): comparison skipped"]
    strong_table = pd.read_parquet(strong.path / SCORES_FILE)
    comparisons = []
    for weak in weak_ones:
        weak_table = pd.read_parquet(weak.path / SCORES_FILE)
        plot = scatter_plot(weak_table, strong_table, out / f"scatter_{weak.model}_vs_{strong.model}.png",
                            weak.model, strong.model)
        comparisons.append(comparison(consistency(weak_table, strong_table, ratios=RATIOS), strong.data,
                                      weak.model, strong.model, plot))
    return comparisons, []


def consistency_table(comparisons: Sequence[Comparison]) -> list[str]:
    """Paper Table 1: ρ and subset overlap per weak/strong pair, its length and random baselines, then the paper's
    rows for the same data families (all of them when the family is unknown)."""
    rows: list[list[Any]] = []
    for c in comparisons:
        data = f"{c.data} ({c.n_records:,})"
        rows.append([data, c.weak, c.strong, c.n_aligned, c.rho_ppl, c.rho_ifd,
                     overlap_cell(c.overlaps["ifd_weak_vs_strong"]), c.partial_rho_ifd, c.binned_rho_ifd])
        for key, label in (("length_vs_strong_ifd", f"length (longest responses) vs {c.strong} IFD"),
                           ("random_vs_strong_ifd", f"random vs {c.strong} IFD")):
            rows.append([data, label, "", "", None, None, overlap_cell(c.overlaps[key]), None, None])
    known = {data_family(c.data) for c in comparisons} - {None}
    for paper in PAPER_CONSISTENCY:
        if paper["data"] in known or not known:
            rows.append([f"paper: {paper['data']}", paper["filter"], "LLaMA2-7B", "", paper["rho_ppl"],
                         paper["rho_ifd"], overlap_cell(paper["overlap"]), None, None])
    return markdown_table(["data", "filter", "vs", "n", "ρ(PPL)", "ρ(IFD)", "overlap 5 / 10 / 15%",
                           "partial ρ(IFD \\| length)", "length-binned ρ(IFD)"], rows)


def overlap_cell(overlaps: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in overlaps)


def length_table(comparisons: Sequence[Comparison]) -> list[str]:
    """How much each IFD ranking follows response length (the length critique)."""
    rows = [[f"{c.data} ({c.n_records:,})", c.weak, c.strong, *c.rho_with_length, *c.share_below_one]
            for c in comparisons]
    return markdown_table(["data", "weak", "strong", "ρ(weak IFD, length)", "ρ(strong IFD, length)",
                           "weak share IFD < 1", "strong share IFD < 1"], rows)


def consistency_section(comparisons: Sequence[Comparison], notes: Sequence[str] = ()) -> list[str]:
    lines = ["## Weak-to-strong consistency (paper Table 1)", "", *consistency_table(comparisons)]
    lines += ["", "ρ = Spearman over the records both models scored; PPL = PPL(y|x); overlap = |A ∩ B| / k of the "
              "IFD-selected subsets (IFD < 1, highest first). The length rows select the longest responses, the "
              "random rows a seeded random subset: the overlap reached by tracking length alone or by chance. "
              "Length = response tokens of the weak tokenizer; partial ρ removes it, binned ρ is the mean ρ "
              "within length quintiles.", ""]
    lines += [*notes, *([""] if notes else [])]
    if comparisons:
        lines += ["How much each IFD ranking follows response length (the length critique):", "",
                  *length_table(comparisons), ""]
    lines += [f"![{c.plot.stem}]({c.plot.name})" for c in comparisons if c.plot is not None]
    return lines + [""]


def cost_table(found: Sequence[Scorer]) -> list[str]:
    """Paper Table 4: each scorer's own timing, projected to Alpaca 52k, relative to the fastest on the same data."""
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
    return markdown_table(["data", "scorer", "records timed", "seconds", "records/s", "minutes (all records)",
                           "minutes for Alpaca 52k (projected)", "time vs the fastest (×)", "processes"], rows)


def cost_section(found: Sequence[Scorer]) -> list[str]:
    paper = " · ".join(f"{name} {minutes:,} min" for name, minutes in PAPER_COST_MINUTES.items())
    return ["## Scoring cost (paper Table 4)", "", *cost_table(found),
            "", f"Paper (one GPU, Alpaca 52k): {paper}; LLaMA2-7B / GPT-2 = "
            f"{PAPER_COST_MINUTES['LLaMA2-7B IFD'] / PAPER_COST_MINUTES['GPT-2 IFD']:.0f}×. Ours: each score "
            "stage's own timing (the run that built it; a resumed stage times only its last part), projected "
            "linearly to 52,002 records.", ""]


def suite_result(eval_folder: Path | None, suite: str) -> dict[str, Any]:
    """An eval stage folder's eval/<suite>.json; {} when the folder or the file is not there."""
    file = eval_folder / EVAL_DIR / f"{suite}.json" if eval_folder else None
    return read_object(file) if file is not None and file.exists() else {}


def recorded_columns(metrics: dict[str, Any], where: str) -> dict[str, Any] | None:
    """The suites' report columns an eval stage recorded in its metrics (suite → [[column, value], ...]), merged
    in suite order; None when it recorded none (an artifact built before they were recorded)."""
    recorded = metrics.get(REPORT_COLUMNS)
    if recorded is None:
        return None
    if not isinstance(recorded, dict):
        raise DataError(f"{where}: field {REPORT_COLUMNS} must be an object (suite → [[column, value], ...])")
    columns: dict[str, Any] = {}
    for suite, pairs in recorded.items():
        if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
            raise DataError(f"{where}: field {REPORT_COLUMNS}.{suite} must be a list of [column, value] pairs")
        columns.update(dict(pairs))
    return columns


def budget_rows(runs: Sequence[Run]) -> list[BudgetRow]:
    """One row per distinct evaluation (a rerun of the same job is counted once), in filter and budget order."""
    rows: dict[str, BudgetRow] = {}
    for run in runs:
        if "eval" not in run.stages or run.stages["eval"].key in rows:
            continue
        select, evaluation = run.metrics("select"), run.metrics("eval")
        eval_folder = run.folder("eval")
        pairwise_file = suite_result(eval_folder, "pairwise")
        pairwise = evaluation.get("pairwise") or {}
        filter_name = select.get("selector", "?")
        key = run.stages["eval"].key
        rows[key] = BudgetRow(
            filter=filter_name, ratio=1.0 if filter_name == "full" else select.get("ratio"), n=select.get("count"),
            response_chars=(select.get("subset") or {}).get("response_chars", {}).get("mean"),
            partner=pairwise_file.get("reference") if "winning_score" in pairwise else None,
            sets=pairwise.get("sets") or {}, overall=pairwise.get("winning_score"),
            wtl=(pairwise.get("win"), pairwise.get("tie"), pairwise.get("lose")),
            suites=recorded_columns(evaluation, f"{run.summary_file}: stages.eval.metrics"),
            partner_is_full=(run.config.get("eval", {}).get("reference") == "full"
                             or str(pairwise_file.get("reference", "")).startswith("full")),
            eval_settings=read_stage(eval_folder).params if eval_folder else {},
            open_llm_over=suite_result(eval_folder, "open_llm").get("average_over"),
            job=run.label, eval_key=key, train=run.folder("train"), partner_train=run.folder("train_reference"),
            **setting_of(run.config))
    return sorted(rows.values(), key=lambda r: (filter_rank(r.filter), r.ratio or 0))


def setting_of(config: dict[str, Any]) -> dict[str, Any]:
    """The BudgetRow fields naming the setting, from the job's composed config (.hydra/config.yaml)."""
    models = config.get("model") or {}
    scorer_role = (config.get("filter") or {}).get("scorer", "weak")
    scorer = (models.get(scorer_role) or {}).get("name") if scorer_role in ("weak", "strong") else None
    return {"dataset": (config.get("data") or {}).get("name", ""),
            "strong": (models.get("strong") or {}).get("name", ""), "scorer": scorer,
            "setting": config.get("name", "")}


def row_label(row: BudgetRow) -> str:
    """The filter, and the model that scored for it: Table 3's rows differ only in that model."""
    return f"{row.filter} ({row.scorer})" if row.scorer else row.filter


def published_cell(row: BudgetRow) -> str:
    """The published numbers of exactly this setting; the paper's pairwise numbers are vs its 100% model, so they
    are shown only when that is this row's partner too."""
    cells = cells_for(row.dataset, row.strong, row.scorer, row.filter, row.ratio, row.setting)
    if not (row.partner_is_full or row.filter == "full"):
        cells = [c for c in cells if c.metric != "pairwise"]
    return describe(cells)


def filter_rank(name: str) -> int:
    return FILTER_ORDER.index(name) if name in FILTER_ORDER else len(FILTER_ORDER)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def settings_differences(rows: Sequence[BudgetRow]) -> list[str]:
    """Evaluation settings that are not the same in every row: such rows are not comparable."""
    flat = [flatten(r.eval_settings) for r in rows if r.eval_settings]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def settings_note(rows: Sequence[BudgetRow]) -> list[str]:
    """What the evaluations measured (from the first row's saved eval config), so small limits are not missed."""
    settings = next((flatten(r.eval_settings) for r in rows if r.eval_settings), {})
    if not settings:
        return []
    judge = settings.get("eval.judge.backend")
    judge_name = settings.get("eval.judge.api_model") if judge == "openai" else settings.get("eval.judge.model.name")

    def limit(key: str) -> str:
        value = settings.get(key) or settings.get("eval.limit")
        return "all" if not value else str(value)

    over = next((r.open_llm_over for r in rows if r.open_llm_over), None)
    arena = (f" Arena-Hard-Auto v0.1 on {limit('eval.arena_hard.limit')} questions;"
             if "arena_hard" in (settings.get("eval.suites") or []) else "")
    return [f"Evaluation settings: judge {judge} `{judge_name}`; pairwise {limit('eval.pairwise.limit')} prompts per "
            f"test set; AlpacaEval {settings.get('eval.alpaca_eval.version')} on {limit('eval.alpaca_eval.limit')} "
            f"prompts;{arena} Open LLM average over {', '.join(over) if over else '–'} with "
            f"{limit('eval.open_llm.limit')} items per task; answers of at most "
            f"{settings.get('eval.generation.max_new_tokens')} new tokens.", ""]


def budget_table(rows: Sequence[BudgetRow]) -> list[str]:
    """Paper Tables 2/3 as markdown (see budget_cells)."""
    return markdown_table(*budget_cells(rows))


def budget_cells(rows: Sequence[BudgetRow]) -> tuple[list[str], list[list[Any]]]:
    """Paper Tables 2/3: per filter and budget, the pairwise winning score per test set, each suite's report columns,
    and the published numbers of the same setting: (header, rows)."""
    suite_header = list(dict.fromkeys(column for row in rows for column in row.suites or {}))
    header = ["filter", "budget", "n", "mean response chars", "partner", *PAIRWISE_SETS.values(), "overall (W/T/L)",
              *suite_header, "published (same setting)"]
    body = []
    for row in rows:
        wtl = "/".join(fmt(v) for v in row.wtl) if row.overall is not None else ""
        body.append([row_label(row), f"{row.ratio:.0%}" if row.ratio is not None else "–", row.n,
                     fmt(row.response_chars, 0), row.partner or "–", *[row.sets.get(name) for name in PAIRWISE_SETS],
                     f"{fmt(row.overall)} ({wtl})" if row.overall is not None else "–",
                     *[fmt((row.suites or {}).get(column), 2) for column in suite_header], published_cell(row)])
    return header, body


def budget_section(rows: Sequence[BudgetRow], charts: Sequence[tuple[str, Path]] = ()) -> list[str]:
    """The budget table with its warnings, settings and explanation; charts: (alt text, image) pairs."""
    lines = ["## Budget: winning score vs the partner and benchmarks (paper Tables 2/3)", ""]
    differing = settings_differences(rows)
    if differing:
        lines += [f"**Warning: the evaluations below differ in {', '.join(differing)}; rows are not comparable.**", ""]
    lines += budget_table(rows)
    unrecorded = [f"- {row.job}: its evaluation `{row.eval_key[:8]}` was built before eval stages recorded their "
                  f"suites' report columns ({REPORT_COLUMNS} in metrics.json), so its suite columns are blank; "
                  "delete that eval folder and rerun to fill them" for row in rows if row.suites is None]
    lines += ["", *unrecorded, *([""] if unrecorded else []), *settings_note(rows)]
    lines += ["Winning score = (W − L) / N + 1 over both answer orders (1.0 = parity with the partner). Published: "
              "the numbers of exactly this setting (data, strong model, scoring model, filter, budget), each with "
              "its source: the paper's Tables 2/3 (GPT-4 judge, full test sets, AlpacaEval v1, Open LLM average "
              "in %), or for a bench/* setting the numbers later papers report for Superfiltering as their "
              "baseline, whose recipes differ. Ours: see the judge and limits in each evaluation's summary.md.", ""]
    for alt, chart in charts:
        lines += [f"![{alt}]({chart.name})", ""]
    return lines


def reuse_table(runs: Sequence[Run]) -> list[str]:
    """Per job, each stage built or found cached, with its key."""
    present = [name for name in STAGE_COLUMNS if any(name in r.stages for r in runs)]
    return markdown_table(["job", *present], [[r.label, *[reuse_cell(r.stages.get(name)) for name in present]]
                                              for r in runs])


def reuse_cell(record: StageRecord | None) -> str:
    if record is None:
        return "–"
    return f"{'cached' if record.cache_hit else 'built'} `{record.key[:8]}`"


def reuse_section(runs: Sequence[Run]) -> list[str]:
    """Which stages each job built and which it found cached: a ratio sweep scores once, trains once per budget."""
    present = [name for name in STAGE_COLUMNS if any(name in r.stages for r in runs)]
    built = {name: len({r.stages[name].key for r in runs if name in r.stages and not r.stages[name].cache_hit})
             for name in present}
    return ["## Stages built and reused", "", *reuse_table(runs),
            "", "built `key` = computed by this job; cached = reused from the artifact store (same content key). "
            "Artifacts built here: " + ", ".join(f"{name} {n}" for name, n in built.items()) + ".", ""]


def compute_seconds(runs: Sequence[Run]) -> dict[str, float]:
    """Seconds each kind of stage took when built, over distinct artifacts (cache hits cost nothing)."""
    seconds: dict[str, float] = {}
    seen: set[str] = set()
    for run in runs:
        for name, record in run.stages.items():
            value = record.metrics.get(SECONDS_METRIC.get(name, ""))
            if record.key in seen or not isinstance(value, (int, float)):
                continue
            seen.add(record.key)
            kind = name.removesuffix("_strong").removesuffix("_reference")
            seconds[kind] = seconds.get(kind, 0.0) + float(value)
    return seconds


def compute_section(seconds: dict[str, float]) -> list[str]:
    if not seconds:
        return []
    return ["Compute recorded in the artifacts these runs used (each counted once, whether built here or reused): "
            + ", ".join(f"{name} {value / 60:.1f} min" for name, value in seconds.items()) + ".", ""]


def ifd_plot(found: Sequence[Scorer], path: Path) -> Path | None:
    """IFD distributions of every scorer, log x, IFD = 1 marked."""
    tables = [(s, pd.read_parquet(s.path / SCORES_FILE)) for s in found if s.path is not None]
    tables = [(s, t["ifd"][np.isfinite(t["ifd"]) & (t["ifd"] > 0)]) for s, t in tables]
    tables = [(s, ifd) for s, ifd in tables if len(ifd)]
    if not tables:
        return None
    plt = pyplot()
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


def winning_plot(rows: Sequence[BudgetRow], path: Path) -> Path | None:
    """Overall winning score per budget, one bar per filter; 1.0 = parity with the partner."""
    scored = [r for r in rows if r.overall is not None]
    if not scored:
        return None
    plt = pyplot()
    ratios = sorted({r.ratio for r in scored})
    filters = sorted({r.filter for r in scored}, key=filter_rank)
    width = 0.8 / len(filters)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for i, name in enumerate(filters):
        xs, ys = [], []
        for r in scored:
            if r.filter == name:
                xs.append(ratios.index(r.ratio) + (i - (len(filters) - 1) / 2) * width)
                ys.append(r.overall)
        ax.bar(xs, ys, width=width, label=name)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(ratios)), [f"{r:.0%}" for r in ratios])
    ax.set_xlabel("budget")
    ax.set_ylabel("winning score vs partner")
    ax.set_title("partner: " + ", ".join(sorted({r.partner for r in scored if r.partner})))
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


def loss_plot(rows: Sequence[BudgetRow], path: Path) -> Path | None:
    """Training loss per step of every model in the table (the partner's too, when it was trained here)."""
    curves = []
    seen: set[Path] = set()
    for row in rows:
        label = f"{row.filter} {row.ratio:.0%} (n={row.n})" if row.ratio is not None else row.filter
        for train_dir, name in ((row.train, label), (row.partner_train, f"{row.partner} (partner)")):
            curve = loss_curve(train_dir)
            if curve is not None and train_dir not in seen:
                seen.add(train_dir)
                curves.append((name, curve))
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for label, curve in curves:
        ax.plot(curve["step"], curve["loss"], marker="." if len(curve) < 20 else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (response tokens)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only backend."""
    import matplotlib  # deferred: heavy, and only needed once there is something to plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred: with matplotlib, after choosing its backend

    return plt


def log_to_tracker(runs: Sequence[Run], header: list[str], body: list[list[Any]]) -> None:
    """The budget table, once, as a W&B table in the runs' group, when their tracking was on."""
    config = runs[-1].config
    known = {f.name for f in fields(TrackingConfig)}
    tracking = {k: v for k, v in (config.get("tracking") or {}).items() if k in known}
    if not tracking:
        return
    group = runs[-1].wandb_group or str(config.get("name", "default"))
    log_report_table(TrackingConfig(**tracking), header, [[str(c) if c is not None else None for c in row]
                                                          for row in body],
                     group=group, root=Path(str(config.get("artifact_root", "artifacts"))))


def build_report(folder: Path, out: Path, reference: str | None = None, home: Path | None = None) -> Path:
    """Write <out>/report.md and its plots for every run below `folder`; return the report's path.

    reference: the scorer the consistency section compares the others with (default: the runs' strong model).
    home: where relative stage paths are looked up after the current folder, and what the report's paths are shown
    relative to (default: the current folder).
    """
    folder, out = Path(folder), Path(out)
    home = Path(home) if home is not None else Path.cwd()
    runs = load_runs(folder, home)
    if not runs:
        raise DataError(f"{folder}: no run_summary.json below this folder")
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Report: {shown(folder, home)}", "", f"{len(runs)} run(s).", "", "## Commands", "", "```",
             *commands(folder, runs, out, home), "```", ""]

    found = find_scorers(runs)
    groups = scored_groups(found)
    if groups:
        comparisons, notes = [], []
        for group in groups:
            compared, missing = compare(group, runs, reference, out)
            comparisons += compared
            notes += missing
        lines += consistency_section(comparisons, notes)
    if found:
        lines += cost_section(found)
        hist = ifd_plot(found, out / "ifd_distributions.png")
        if hist is not None:
            lines += ["IFD distributions:", "", f"![IFD distributions]({hist.name})", ""]
    rows = budget_rows(runs)
    if rows:
        charts = [(alt, chart) for alt, chart in (("winning scores", winning_plot(rows, out / "winning_scores.png")),
                                                  ("loss curves", loss_plot(rows, out / "loss_curves.png")))
                  if chart is not None]
        lines += budget_section(rows, charts)
        log_to_tracker(runs, *budget_cells(rows))
    lines += reuse_section(runs)
    lines += compute_section(compute_seconds(runs))
    report = out / REPORT_FILE
    write_text_atomic(report, "\n".join(lines))
    return report
