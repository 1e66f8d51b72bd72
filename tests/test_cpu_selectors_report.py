"""experiments/cpu_selectors/report.py: per-item files of several jobs → each selector vs random at its budget,
seeds pooled per item on both sides."""

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

ITEMS = [str(i) for i in range(30)]


def write_rows(path: Path, field: str, values: dict[str, float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": k, field: v}) + "\n" for k, v in values.items()))


def stage(path: Path, kind: str, params: dict, upstream: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"stage": kind, "key": path.name, "params": params, "upstream": {
        name: {"key": up.name, "path": str(up)} for name, up in (upstream or {}).items()}}))
    return path


def trained(root: Path, selector: str, seed: int, budget_tokens: int = 0, records: int = 24) -> Path:
    name = f"{selector}-{seed}-{budget_tokens}"
    select = stage(root / "select" / name, "select",
                   {"ratio": 0.1, "filter": {"name": selector, "budget_tokens": budget_tokens}})
    train = stage(root / "train" / name, "train", {"seed": seed}, {"select": select})
    (train / "train_result.json").write_text(json.dumps(
        {"data": {"n_kept": records, "n_tokens": 100 * records, "n_trainable_tokens": 60 * records}}))
    return train


def job(root: Path, name: str, model: Path, nll: dict, acc: dict, partner: Path | None = None,
        partner_nll: dict | None = None, partner_acc: dict | None = None) -> None:
    evaluation = stage(root / "eval" / name, "eval", {})
    write_rows(evaluation / "eval" / "reference_nll" / "answers.jsonl", "nll_mean", nll)
    write_rows(evaluation / "eval" / "lm_eval" / "mmlu_local.jsonl", "value", acc)
    if partner is not None:
        write_rows(evaluation / "eval" / "reference_nll" / "answers.reference.jsonl", "nll_mean", partner_nll)
        write_rows(evaluation / "eval" / "lm_eval" / "mmlu_local.reference.jsonl", "value", partner_acc)
    (evaluation / "eval" / "lm_eval.json").write_text(json.dumps({"tasks": [{
        "task": "mmlu_local", "headline": {"metric": "acc,none"},
        "higher_is_better": {"mmlu_local": {"acc": True}}}]}))
    stages = {"train": model, "eval": evaluation, **({"train_reference": partner} if partner else {})}
    (root / "multirun" / name).mkdir(parents=True)
    (root / "multirun" / name / "run_summary.json").write_text(json.dumps({"stages": {
        s: {"path": str(p), "key": p.name, "cache_hit": False, "metrics": {"stage_wall_s": 10.0}}
        for s, p in stages.items()}}))


def test_each_selector_meets_random_at_its_budget_with_the_seeds_of_both_sides_pooled(tmp_path):
    nll = {s: {i: 2.0 + 0.01 * int(i) - 0.05 for i in ITEMS} for s in ("ifd", "ifd_tokens")}
    randoms = {seed: {i: 2.0 + 0.01 * int(i) + 0.01 * (seed - 42) for i in ITEMS} for seed in (42, 43, 44)}
    random_tokens = {i: 2.0 + 0.01 * int(i) - 0.10 for i in ITEMS}
    acc = {i: float(int(i) % 2) for i in ITEMS}
    random_acc = {seed: {i: float((int(i) + seed) % 3 == 0) for i in ITEMS} for seed in (42, 43, 44)}
    r42 = trained(tmp_path, "random", 42)
    job(tmp_path, "0", trained(tmp_path, "superfilter", 42), nll["ifd"], acc, r42, randoms[42], random_acc[42])
    for seed in (43, 44):  # random's extra seeds are jobs of their own, with no partner
        job(tmp_path, f"r{seed}", trained(tmp_path, "random", seed), randoms[seed], random_acc[seed])
    job(tmp_path, "t0", trained(tmp_path, "superfilter", 42, 13500, records=10), nll["ifd_tokens"], acc,
        trained(tmp_path, "random", 42, 13500), random_tokens, random_acc[42])

    values, directions, summaries = report.collect([tmp_path / "multirun"])
    assert len(summaries) == 4 and directions == {"MMLU 0-shot": True, "reference_nll:answers": False}
    rows = report.comparisons(values, directions)
    assert [(sel, budget, c.measure) for sel, budget, c in rows] == [
        ("superfilter", "10% of records", "MMLU 0-shot"),
        ("superfilter", "10% of records", "reference_nll:answers"),
        ("superfilter", "13,500 response tokens", "MMLU 0-shot"),
        ("superfilter", "13,500 response tokens", "reference_nll:answers")]
    by_records = rows[1][2]
    assert by_records == compare([nll["ifd"]], list(randoms.values()), "reference_nll:answers", False,
                                 partner="random (10% of records)")
    assert by_records.seeds == (1, 3) and by_records.delta == pytest.approx(-0.06) and by_records.verdict == "better"
    assert rows[0][2] == compare([acc], list(random_acc.values()), "MMLU 0-shot", True,
                                 partner="random (10% of records)")
    by_tokens = rows[3][2]  # random at the token budget did better: the comparison says so
    assert by_tokens.seeds == (1, 1) and by_tokens.delta == pytest.approx(0.05) and by_tokens.verdict == "worse"

    assert report.main([str(tmp_path / "multirun"), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| superfilter | 10% of records | reference_nll:answers (lower is better) | -0.0600" in text
    assert "| superfilter | 13,500 response tokens | 42 | 10 | 1,000 | 600 |" in text
    assert "| train | 6 | 10 / 10 / 10 | 60 | – |" in text  # six models trained, each folder counted once
    assert (tmp_path / "out" / "paired.png").exists()


def test_no_random_at_a_budget_is_an_error_not_an_empty_report(tmp_path):
    job(tmp_path, "0", trained(tmp_path, "superfilter", 42), {"a": 1.0}, {"a": 1.0})
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "multirun"), "--out", str(tmp_path / "out")])


def test_the_one_command_runs_what_the_readme_lists() -> None:
    folder = ROOT / "experiments/cpu_selectors"
    script = [line.split("#")[0].strip() for line in (folder / "run.sh").read_text().splitlines()
              if line.startswith("python ")]
    readme = (folder / "README.md").read_text().split("```bash\n")[1].split("```")[0]
    listed = [line.split("#")[0].strip() for line in readme.splitlines() if line.startswith("python ")]
    assert script == listed and len(script) == 5
