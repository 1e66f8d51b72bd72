"""Open LLM Leaderboard v1 benchmarks with lm-evaluation-harness: Hub tasks, or task YAMLs over local files."""

from __future__ import annotations

import bz2
import csv
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eval import harness
from eval.harness import TASK_DIR, TASKS_FOLDER, hub_reachable, prefix_sharing_lm
from superfilter.artifacts import write_jsonl
from superfilter.errors import DataError, UserError

log = logging.getLogger(__name__)

__all__ = ["BENCHMARKS", "hub_reachable", "prefix_sharing_lm", "run_open_llm", "write_local_tasks"]


@dataclass(frozen=True)
class Benchmark:
    """One leaderboard-v1 column: the lm-eval task on the Hub, its local twin, shots and headline metric."""

    name: str
    hub_task: str
    local_task: str
    num_fewshot: int
    metric: str


# Leaderboard v1 settings [paper §4; HF Open LLM Leaderboard v1 "About"].
BENCHMARKS = {
    "arc_challenge": Benchmark("arc_challenge", "arc_challenge", "arc_challenge_local", 25, "acc_norm"),
    "hellaswag": Benchmark("hellaswag", "hellaswag", "hellaswag_local", 10, "acc_norm"),
    "mmlu": Benchmark("mmlu", "mmlu", "mmlu_local", 5, "acc"),
    "truthfulqa_mc2": Benchmark("truthfulqa_mc2", "truthfulqa_mc2", "truthfulqa_mc2_local", 0, "acc"),
}


# Local files (the upstream releases' layouts) → normalised JSON lines the task YAMLs read.


def hellaswag_records(path: Path) -> list[dict[str, Any]]:
    """6 lines per item: "activity_label: context" (already preprocessed as lm-eval does), gold 0-3, 4 endings."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().rstrip("\n").split("\n")
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6 (context, label, 4 endings)")
    records = []
    for start in range(0, len(lines), 6):
        query, label, *endings = lines[start : start + 6]
        if not label.strip().isdigit() or not 0 <= int(label) < 4:
            raise DataError(f"{path}:{start + 2}: the gold label must be 0-3, got {label!r}")
        records.append({"query": query, "choices": endings, "label": int(label)})
    return records


def mmlu_records(path: Path) -> list[dict[str, Any]]:
    """Headerless CSV rows: question, A, B, C, D, answer letter."""
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if len(row) != 6 or row[5].strip() not in "ABCD" or not row[5].strip():
                raise DataError(f"{path}:{number}: expected question, 4 choices and an answer letter A-D")
            records.append({"question": row[0], "choices": row[1:5], "answer": "ABCD".index(row[5].strip())})
    return records


def truthfulqa_records(path: Path) -> list[dict[str, Any]]:
    """TruthfulQA.csv → MC2 targets: every correct answer (label 1) then every incorrect one (label 0)."""
    records = []
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.DictReader(f), 2):
            try:
                true = [a.strip() for a in row["Correct Answers"].split(";") if a.strip()]
                false = [a.strip() for a in row["Incorrect Answers"].split(";") if a.strip()]
                question = row["Question"]
            except KeyError as e:
                raise DataError(f"{path}:{number}: missing column {e}") from e
            if not true or not false:
                raise DataError(f"{path}:{number}: needs at least one correct and one incorrect answer")
            records.append({"question": question,
                            "mc2_targets": {"choices": true + false, "labels": [1] * len(true) + [0] * len(false)}})
    return records


def arc_records(path: Path) -> list[dict[str, Any]]:
    """AI2's ARC .jsonl ({question: {stem, choices: [{text, label}]}, answerKey}) or the Hub's flat schema."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if isinstance(r["question"], dict):
                    choices = r["question"]["choices"]
                    r = {"question": r["question"]["stem"], "answerKey": r["answerKey"],
                         "choices": {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}}
                records.append({"question": r["question"], "choices": r["choices"], "answerKey": r["answerKey"]})
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{number}: not an ARC record ({e})") from e
    return records


def _first(directory: Path, patterns: Sequence[str]) -> Path | None:
    for pattern in patterns:
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


def mmlu_subjects(data_dir: Path) -> list[str]:
    return sorted(p.name[: -len("_test.csv")] for p in (data_dir / "mmlu" / "test").glob("*_test.csv"))


def write_local_tasks(data_dir: Path, tasks: Sequence[str], subjects: Sequence[str], out_dir: Path
                      ) -> tuple[dict[str, str], dict[str, str]]:
    """Normalise the local files into out_dir/data and write runnable task YAMLs beside them (kept with the results;
    their data paths are relative to the folder, so `lm_eval --include_path <folder>` reruns them from anywhere).

    Returns ({benchmark: lm-eval task name}, {benchmark: why it is skipped}).
    """
    data_out = out_dir / "data"
    found: dict[str, str] = {}
    skipped: dict[str, str] = {}
    harness.start_task_folder(out_dir)
    for name in tasks:
        bench = BENCHMARKS[name]
        if name == "mmlu":
            reason = _write_mmlu(data_dir, subjects, data_out, out_dir)
        else:
            reason = _write_single(name, data_dir, data_out)
        if reason:
            skipped[name] = reason
            continue
        if name != "mmlu":
            shutil.copy(TASK_DIR / f"{bench.local_task}.yaml", out_dir / f"{bench.local_task}.yaml")
        found[name] = bench.local_task
    return found, skipped


def _write_single(name: str, data_dir: Path, data_out: Path) -> str:
    if name == "hellaswag":
        source = _first(data_dir / "hellaswag", ["hellaswag_val*.txt.bz2", "hellaswag_val*.txt"])
        if source is None:
            return f"no {data_dir}/hellaswag/hellaswag_val*.txt[.bz2]"
        write_jsonl(data_out / "hellaswag.jsonl", hellaswag_records(source))
    elif name == "truthfulqa_mc2":
        source = data_dir / "truthfulqa" / "TruthfulQA.csv"
        if not source.is_file():
            return f"no {source}"
        write_jsonl(data_out / "truthfulqa.jsonl", truthfulqa_records(source))
    elif name == "arc_challenge":
        test = _first(data_dir / "arc_challenge", ["*[Tt]est*.jsonl"])
        train = _first(data_dir / "arc_challenge", ["*[Tt]rain*.jsonl"])
        if test is None or train is None:
            return (f"ARC-Challenge is not available offline (no {data_dir}/arc_challenge/*test*.jsonl and "
                    "*train*.jsonl); it runs from the Hub (allenai/ai2_arc) when the Hub is reachable")
        write_jsonl(data_out / "arc_challenge_test.jsonl", arc_records(test))
        write_jsonl(data_out / "arc_challenge_train.jsonl", arc_records(train))
    return ""


def _write_mmlu(data_dir: Path, subjects: Sequence[str], data_out: Path, out_dir: Path) -> str:
    available = mmlu_subjects(data_dir)
    wanted = list(subjects) or available
    missing = [s for s in wanted if s not in available]
    if missing:
        raise UserError(f"eval.open_llm.mmlu_subjects: {missing} not found in {data_dir}/mmlu/test "
                        f"(available: {available[:10]}{' ...' if len(available) > 10 else ''})")
    if not wanted:
        return f"no {data_dir}/mmlu/test/*_test.csv"
    shutil.copy(TASK_DIR / "_mmlu_local_template_yaml", out_dir / "_mmlu_local_template_yaml")
    for subject in wanted:
        dev = data_dir / "mmlu" / "dev" / f"{subject}_dev.csv"
        if not dev.is_file():
            raise DataError(f"{dev}: no such file (MMLU's 5 few-shot examples per subject)")
        files = {split: str(write_jsonl(data_out / "mmlu" / f"{subject}_{split}.jsonl",
                                         mmlu_records(data_dir / "mmlu" / split / f"{subject}_{split}.csv"))
                            .relative_to(out_dir)) for split in ("test", "dev")}
        spec = {"include": "_mmlu_local_template_yaml", "task": f"mmlu_local_{subject}", "task_alias": subject,
                "dataset_kwargs": {"data_files": files},
                "description": f"The following are multiple choice questions (with answers) about "
                               f"{subject.replace('_', ' ')}.\n\n"}
        (out_dir / f"mmlu_local_{subject}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    group = {"group": "mmlu_local", "task": [f"mmlu_local_{s}" for s in wanted],
             # Leaderboard v1 averaged the subjects' accuracies without weighting by size.
             "aggregate_metric_list": [{"metric": "acc", "weight_by_size": False}], "metadata": {"version": 1}}
    (out_dir / "mmlu_local.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return ""


# Running lm-eval.


def run_open_llm(model: Any, tokenizer: Any, benchmarks: list[str], source: str, mmlu_subjects: list[str],
                 share_prefix: bool, data_dir: Path, limit: int, device: str, batch_size: int, out_dir: Path
                 ) -> dict[str, Any]:
    """Leaderboard-v1 scores of an in-memory model; writes the rendered local tasks under out_dir/lm_eval_tasks.

    Each benchmark is one lm_eval-suite call (`harness.evaluate`) with the leaderboard's task and shots.
    """
    # deferred: lm-eval takes seconds to import; loaded only when a benchmark runs
    from lm_eval.tasks import TaskManager

    if source == "auto":
        source = "hub" if hub_reachable() else "local"
    skipped: dict[str, str] = {}
    if source == "hub":
        tasks = {name: BENCHMARKS[name].hub_task for name in benchmarks}
        if "mmlu" in tasks and mmlu_subjects:
            tasks["mmlu"] = "mmlu_subset"
        manager = TaskManager()
    else:
        tasks, skipped = write_local_tasks(data_dir, benchmarks, mmlu_subjects, out_dir / TASKS_FOLDER)
        manager = TaskManager(include_path=str(out_dir / TASKS_FOLDER), include_defaults=False)
    lm = harness.make_lm(model, tokenizer, device, batch_size, share_prefix)
    scores: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    for name, task in tasks.items():
        bench = BENCHMARKS[name]
        task_list = ([f"mmlu_{s}" for s in mmlu_subjects] if task == "mmlu_subset" else [task])
        log.info("lm-eval %s (%d-shot%s)", task, bench.num_fewshot, f", limit {limit}" if limit else "")
        result = harness.evaluate(lm, task_list, manager, bench.num_fewshot, limit)
        raw[name] = {k: result.get(k) for k in ("results", "groups", "configs", "n-shot", "n-samples", "versions")}
        scores[name] = _headline(name, bench, result)
    present = [scores[n]["value"] for n in scores if not math.isnan(scores[n]["value"])]
    summary = {
        "source": source, "limit": limit or None, "device": device, "benchmarks": scores, "skipped": skipped,
        "average": sum(present) / len(present) if present else math.nan, "average_over": sorted(scores),
        "settings": "Open LLM Leaderboard v1: ARC-Challenge 25-shot acc_norm, HellaSwag 10-shot acc_norm, "
                    "MMLU 5-shot acc (mean over subjects), TruthfulQA 0-shot mc2",
        "lm_eval_version": harness.version(),
    }
    notes = []
    if limit:
        notes.append(f"limit={limit} examples per task (per subject for MMLU): not comparable to full runs")
    if len(scores) < len(BENCHMARKS):
        notes.append(f"the average covers {len(scores)} of {len(BENCHMARKS)} leaderboard tasks")
    notes += [f"{k} skipped: {v}" for k, v in skipped.items()]
    if source == "local" and "hellaswag" in scores:
        notes.append("local HellaSwag draws its 10 shots from the validation file (the release has no train split)")
    summary["notes"] = notes
    (out_dir / "lm_eval_results.json").write_text(json.dumps(raw, indent=2, default=str))
    return summary


def _headline(name: str, bench: Benchmark, result: dict[str, Any]) -> dict[str, Any]:
    results = result["results"]
    if name == "mmlu":
        key = f"{bench.metric},none"
        groups = set(result.get("groups") or {})
        prefix = "mmlu_local_" if "mmlu_local" in groups or any(t.startswith("mmlu_local_") for t in results) \
            else "mmlu_"
        subjects = {t[len(prefix):]: r[key] for t, r in results.items()
                    if t.startswith(prefix) and t not in groups and key in r}
        n = sum(int(result["n-samples"].get(prefix + s, {}).get("effective", 0)) for s in subjects)
        return {"metric": "acc (mean over subjects)", "num_fewshot": bench.num_fewshot, "n": n,
                "value": sum(subjects.values()) / len(subjects) if subjects else math.nan, "subjects": subjects}
    (task, r), = results.items()
    stderr = r.get(f"{bench.metric}_stderr,none")
    return {"metric": bench.metric, "value": float(r[f"{bench.metric},none"]), "task": task,
            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None,
            "n": int(result["n-samples"][task]["effective"]), "num_fewshot": bench.num_fewshot}

