"""experiments/cpu_selectors/report.py: per-item files of several jobs → seed-pooled paired comparisons."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from superfilter.stats import compare

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("cpu_selectors_report", ROOT / "experiments/cpu_selectors/report.py")
report = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = report  # dataclasses resolve their module's annotations through sys.modules
spec.loader.exec_module(report)


def write_rows(path: Path, field: str, values: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": k, field: v}) + "\n" for k, v in values.items()))


def fake_job(root: Path, name: str, selector: str, seed: int, nll: dict, partner_nll: dict, acc: dict,
             partner_acc: dict) -> None:
    train, select, evaluation = root / name / "train", root / name / "select", root / name / "eval"
    train.mkdir(parents=True)
    (train / "config.json").write_text(json.dumps({"params": {"seed": seed}}))
    write_rows(evaluation / "eval" / "reference_nll" / "answers.jsonl", "nll_mean", nll)
    write_rows(evaluation / "eval" / "reference_nll" / "answers.reference.jsonl", "nll_mean", partner_nll)
    write_rows(evaluation / "eval" / "lm_eval" / "mmlu_local.jsonl", "value", acc)
    write_rows(evaluation / "eval" / "lm_eval" / "mmlu_local.reference.jsonl", "value", partner_acc)
    (evaluation / "eval" / "lm_eval.json").write_text(json.dumps({"tasks": [{
        "task": "mmlu_local", "headline": {"metric": "acc,none"},
        "higher_is_better": {"mmlu_local": {"acc": True}}}]}))
    stages = {"train": {"path": str(train)}, "select": {"path": str(select), "metrics": {"selector": selector}},
              "eval": {"path": str(evaluation)}}
    (root / name / "run_summary.json").write_text(json.dumps({"stages": stages}))


def test_seeds_are_pooled_per_item_and_directions_follow_the_measure(tmp_path):
    items = [str(i) for i in range(30)]
    nll = [{i: 2.0 + 0.01 * int(i) - 0.05 * (s + 1) for i in items} for s in range(2)]
    partner = [{i: 2.0 + 0.01 * int(i) for i in items} for _ in range(2)]
    acc = [{i: float(int(i) % 2) for i in items}, {i: float(int(i) % 3 == 0) for i in items}]
    partner_acc = [{i: float(int(i) % 2) for i in items}] * 2
    for s in range(2):
        fake_job(tmp_path, f"job{s}", "superfilter", 42 + s, nll[s], partner[s], acc[s], partner_acc[s])
    rows = report.collect([tmp_path])
    assert [(sel, budget, c.measure) for sel, budget, c in rows] == [
        ("superfilter", "equal records", "mmlu_local"), ("superfilter", "equal records", "reference NLL answers")]
    mmlu, answers = rows[0][2], rows[1][2]
    assert answers == compare(nll, partner, "reference NLL answers", False, partner="random (equal records)")
    assert answers.seeds == (2, 2) and answers.delta == pytest.approx(-0.075) and answers.verdict == "better"
    assert mmlu.higher_is_better and mmlu == compare(acc, partner_acc, "mmlu_local", True,
                                                     partner="random (equal records)")
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| superfilter | equal records | reference NLL answers (lower is better) | -0.0750" in text
    assert (tmp_path / "out" / "paired.png").exists()
