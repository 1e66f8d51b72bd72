"""experiments/report.py on synthetic run folders: sections appear when their stages ran, paper numbers sit beside."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "report.py"
N_RECORDS = 60


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["report"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def artifact(root: Path, stage: str, key: str, metrics: dict, upstream: dict | None = None) -> dict:
    path = root / stage / key[:12]
    write_json(path / "metrics.json", metrics)
    write_json(path / "config.json", {"stage": stage, "key": key, "upstream": upstream or {}})
    (path / "_SUCCESS").touch()
    return {"path": str(path), "key": key, "cache_hit": False, "metrics": metrics}


def scores_table(seed: int, base: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ifd = np.clip(base + rng.normal(0, 0.05, N_RECORDS), 0.3, 1.4)
    ppl = np.exp(rng.uniform(1, 3, N_RECORDS))
    return pd.DataFrame({
        "id": [f"r{i:03d}" for i in range(N_RECORDS)], "n_prompt_tokens": 20,
        "n_response_tokens": rng.integers(5, 300, N_RECORDS), "loss_direct": np.log(ppl / ifd),
        "loss_conditioned": np.log(ppl), "ppl_direct": ppl / ifd, "ppl_conditioned": ppl, "ifd": ifd,
        "skip_reason": None})


def score_stage(root: Path, model: str, seed: int, prepare: dict, rate: float) -> dict:
    base = np.linspace(0.5, 1.2, N_RECORDS)
    info = artifact(root, "score", f"{model}-score".ljust(64, "0"),
                    {"model": model, "n_records": N_RECORDS, "records_scored_this_run": N_RECORDS,
                     "records_per_s": rate, "scoring_seconds": N_RECORDS / rate, "n_processes": 1},
                    {"prepare": {"key": prepare["key"], "path": prepare["path"]}})
    scores_table(seed, base).to_parquet(Path(info["path"]) / "scores.parquet")
    return info


def job(folder: Path, overrides: list[str], stages: dict, strong: str = "strong") -> None:
    write_json(folder / "run_summary.json", {"stages": stages, "overrides": overrides})
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    config = {"model": {"strong": {"name": strong}}, "eval": {"reference": "full"}}
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))


def multirun_yaml(folder: Path, task: list[str]) -> None:
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))


def prepare_stage(root: Path) -> dict:
    return artifact(root, "prepare", "p" * 64, {"data": "alpaca_1k", "n_records": N_RECORDS})


@pytest.fixture
def consistency_folder(tmp_path):
    root, sweep = tmp_path / "artifacts", tmp_path / "multirun" / "t"
    prepare = prepare_stage(root)
    for i, (model, rate) in enumerate((("weak", 20.0), ("strong", 2.0))):
        job(sweep / str(i), [f"model/weak={model}", "experiment=cpu/consistency"],
            {"prepare": prepare, "score": score_stage(root, model, i, prepare, rate)})
    multirun_yaml(sweep, ["experiment=cpu/consistency"])
    return sweep


def train_stage(root: Path, key: str, n: int) -> dict:
    info = artifact(root, "train", key.ljust(64, "0"), {"wall_s": 10.0 * n})
    lines = [json.dumps({"step": s, "loss": 2.0 / s}) for s in range(1, 4)]
    (Path(info["path"]) / "train_metrics.jsonl").write_text("\n".join(lines) + "\n")
    return info


def eval_stage(root: Path, key: str, overall: float, limit: int = 2) -> dict:
    sets = {name: overall for name in ("vicuna", "koala", "wizardlm", "sinstruct", "lima")}
    metrics = {"pairwise": {"sets": sets, "winning_score": overall, "win": 3, "tie": 4, "lose": 3, "n": 10},
               "alpaca_eval": {"win_rate": 40.0}, "open_llm": {"average": 0.3}, "seconds": 60.0}
    info = artifact(root, "eval", key.ljust(64, "0"), metrics)
    write_json(Path(info["path"]) / "config.json", {"params": {"eval": {"pairwise": {"limit": limit}}}})
    write_json(Path(info["path"]) / "eval" / "pairwise.json", {"reference": "full 100%"})
    return info


@pytest.fixture
def budget_folder(tmp_path):
    root, sweep = tmp_path / "artifacts", tmp_path / "multirun" / "b"
    prepare = prepare_stage(root)
    score = score_stage(root, "weak", 0, prepare, 20.0)
    full = train_stage(root, "full", 60)
    for i, (name, ratio) in enumerate((("superfilter", 0.05), ("random", 0.05), ("superfilter", 0.1))):
        select = artifact(root, "select", f"select{i}".ljust(64, "0"),
                          {"selector": name, "ratio": ratio, "count": int(N_RECORDS * ratio),
                           "subset": {"response_chars": {"mean": 100.0}}})
        stages = {"prepare": prepare, "score": dict(score, cache_hit=i > 0), "select": select,
                  "train": train_stage(root, f"train{i}", 3), "train_reference": dict(full, cache_hit=i > 0),
                  "eval": eval_stage(root, f"eval{i}", 1.0 + i / 10)}
        job(sweep / str(i), [f"ratio={ratio}", f"filter={name}", "experiment=cpu/budget_sweep"], stages)
    multirun_yaml(sweep, ["experiment=cpu/budget_sweep"])
    return sweep


def test_consistency_only_folder(report, consistency_folder, tmp_path):
    text = report.build_report(consistency_folder, tmp_path / "out").read_text()
    assert "python run.py -m experiment=cpu/consistency" in text
    assert "## Weak-to-strong consistency" in text and "## Scoring cost" in text
    assert "| alpaca_1k (60) | weak | strong | 60 |" in text  # the run config's strong model is the reference
    assert "paper: Alpaca | GPT-2 | LLaMA2-7B" in text and "0.679" in text
    assert "length (longest responses) vs strong IFD" in text and "random vs strong IFD" in text
    assert "| 10.00 |" in text  # the strong scorer takes 10× the weak one's time
    assert "## Budget" not in text
    for plot in ("scatter_weak_vs_strong.png", "ifd_distributions.png"):
        assert (tmp_path / "out" / plot).exists()


def test_reference_scorer_can_be_chosen(report, consistency_folder, tmp_path):
    text = report.build_report(consistency_folder, tmp_path / "out", reference="weak").read_text()
    assert "| alpaca_1k (60) | strong | weak | 60 |" in text


def test_budget_folder(report, budget_folder, tmp_path):
    text = report.build_report(budget_folder, tmp_path / "out").read_text()
    assert "python run.py -m experiment=cpu/budget_sweep" in text
    assert "## Weak-to-strong consistency" not in text  # one scorer: nothing to compare
    rows = {line.split(" | ")[0] + line.split(" | ")[1]: line for line in text.splitlines() if "full 100%" in line}
    assert "1.133" in rows["| superfilter5%"] and "55.67" in rows["| superfilter5%"]
    assert "0.936" in rows["| random5%"] and "1.100 (3/4/3)" in rows["| random5%"]
    assert "| 40.00 | 30.00 |" in rows["| superfilter10%"]  # AlpacaEval %, Open LLM as %
    assert "cached `" in text and "score 1," in text  # later jobs reused the one scoring
    assert "Warning" not in text
    for plot in ("winning_scores.png", "loss_curves.png"):
        assert (tmp_path / "out" / plot).exists()


def test_rows_evaluated_differently_are_flagged(report, budget_folder, tmp_path):
    config = tmp_path / "artifacts" / "eval" / "eval20000000" / "config.json"  # superfilter 10%
    write_json(config, {"params": {"eval": {"pairwise": {"limit": 4}}}})
    text = report.build_report(budget_folder, tmp_path / "out").read_text()
    assert "Warning: the evaluations below differ in eval.pairwise.limit" in text


def test_missing_artifacts_do_not_break_the_report(report, consistency_folder, budget_folder, tmp_path):
    shutil.rmtree(tmp_path / "artifacts" / "score")
    shutil.rmtree(tmp_path / "artifacts" / "train")
    text = report.build_report(tmp_path / "multirun", tmp_path / "out").read_text()
    assert "not found (artifact missing)" in text
    assert "## Budget" in text and "1.133" in text
    assert "python run.py -m experiment=cpu/consistency" in text and "experiment=cpu/budget_sweep" in text


def test_empty_folder_fails_clearly(report, tmp_path):
    with pytest.raises(SystemExit, match="no run_summary.json"):
        report.build_report(tmp_path, tmp_path / "out")
