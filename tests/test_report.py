"""superfilter.report on synthetic run folders (sections appear when their stages ran, paper numbers sit beside), its
table layouts on hand-made records, and the thin script over it."""

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from superfilter import report
from superfilter.errors import DataError
from superfilter.report import BudgetRow, Comparison, Run, Scorer
from superfilter.runs import StageRecord

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "report.py"
N_RECORDS = 60
SUITE_COLUMNS = {"alpaca_eval": [["AlpacaEval win %", 40.0]], "open_llm": [["Open LLM avg %", 30.0]]}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def artifact(root: Path, stage: str, key: str, metrics: dict, upstream: dict | None = None,
             params: dict | None = None) -> dict:
    path = root / stage / key[:12]
    write_json(path / "metrics.json", metrics)
    write_json(path / "config.json", {"stage": stage, "version": 1, "key": key, "params": params or {},
                                      "upstream": upstream or {}})
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


def job(folder: Path, overrides: list[str], stages: dict, strong: str = "strong", setting: dict | None = None) -> None:
    """setting: the composed config's data/model/filter/name parts (conf names), as .hydra/config.yaml holds them."""
    write_json(folder / "run_summary.json", {"stages": stages, "overrides": overrides})
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    config = {"model": {"strong": {"name": strong}}, "eval": {"reference": "full"}, **(setting or {})}
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
               "alpaca_eval": {"win_rate": 40.0}, "open_llm": {"average": 0.3}, "seconds": 60.0,
               "report_columns": SUITE_COLUMNS}
    info = artifact(root, "eval", key.ljust(64, "0"), metrics, params={"eval": {"pairwise": {"limit": limit}}})
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


def test_consistency_only_folder(consistency_folder, tmp_path):
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


def test_reference_scorer_can_be_chosen(consistency_folder, tmp_path):
    text = report.build_report(consistency_folder, tmp_path / "out", reference="weak").read_text()
    assert "| alpaca_1k (60) | strong | weak | 60 |" in text


def test_budget_folder(budget_folder, tmp_path):
    text = report.build_report(budget_folder, tmp_path / "out").read_text()
    assert "python run.py -m experiment=cpu/budget_sweep" in text
    assert "## Weak-to-strong consistency" not in text  # one scorer: nothing to compare
    rows = {line.split(" | ")[0] + line.split(" | ")[1]: line for line in text.splitlines() if "full 100%" in line}
    # A CPU sweep (its data and models are not the paper's): no published number beside it.
    assert rows["| superfilter5%"].endswith("| – |") and "1.133" not in text and "55.67" not in text
    assert "1.100 (3/4/3)" in rows["| random5%"] and "0.936" not in rows["| random5%"]
    assert "| 40.00 | 30.00 |" in rows["| superfilter10%"]  # AlpacaEval %, Open LLM as %
    assert "cached `" in text and "score 1," in text  # later jobs reused the one scoring
    assert "Warning" not in text
    for plot in ("winning_scores.png", "loss_curves.png"):
        assert (tmp_path / "out" / plot).exists()


def test_rows_evaluated_differently_are_flagged(budget_folder, tmp_path):
    config = tmp_path / "artifacts" / "eval" / "eval20000000" / "config.json"  # superfilter 10%
    write_json(config, {**json.loads(config.read_text()), "params": {"eval": {"pairwise": {"limit": 4}}}})
    text = report.build_report(budget_folder, tmp_path / "out").read_text()
    assert "Warning: the evaluations below differ in eval.pairwise.limit" in text


def test_missing_artifacts_do_not_break_the_report(consistency_folder, budget_folder, tmp_path):
    shutil.rmtree(tmp_path / "artifacts" / "score")
    shutil.rmtree(tmp_path / "artifacts" / "train")
    text = report.build_report(tmp_path / "multirun", tmp_path / "out").read_text()
    assert "not found (artifact missing)" in text
    assert "## Budget" in text and "1.100 (3/4/3)" in text
    assert "python run.py -m experiment=cpu/consistency" in text and "experiment=cpu/budget_sweep" in text


def test_empty_folder_fails_clearly(tmp_path):
    with pytest.raises(DataError, match="no run_summary.json"):
        report.build_report(tmp_path, tmp_path / "out")


def test_an_evaluation_without_recorded_report_columns_is_named(budget_folder, tmp_path):
    summary_file = budget_folder / "1" / "run_summary.json"  # random 5%
    summary = json.loads(summary_file.read_text())
    del summary["stages"]["eval"]["metrics"]["report_columns"]
    write_json(summary_file, summary)
    text = report.build_report(budget_folder, tmp_path / "out").read_text()
    assert "ratio=0.05 filter=random: its evaluation `eval1000` was built before" in text
    row = next(line for line in text.splitlines() if line.startswith("| random | 5%"))
    assert "| 1.100 (3/4/3) | – | – |" in row  # blank, not guessed
    assert "| 40.00 | 30.00 |" in next(line for line in text.splitlines() if line.startswith("| superfilter | 5%"))


def test_malformed_report_columns_fail_naming_the_field(budget_folder, tmp_path):
    summary_file = budget_folder / "0" / "run_summary.json"
    summary = json.loads(summary_file.read_text())
    summary["stages"]["eval"]["metrics"]["report_columns"] = {"open_llm": {"Open LLM avg %": 30.0}}
    write_json(summary_file, summary)
    with pytest.raises(DataError, match=r"run_summary.json: stages.eval.metrics: field report_columns.open_llm"):
        report.build_report(budget_folder, tmp_path / "out")


def test_budget_table_layout():
    setting = {"dataset": "alpaca", "strong": "llama2_7b"}
    rows = [BudgetRow("full", 1.0, n=100, suites={"Open LLM avg %": 30.0}, **setting),
            BudgetRow("superfilter", 0.05, n=5, response_chars=812.4, partner="full 100%",
                      sets={"vicuna": 1.2, "lima": 0.9}, overall=1.05, wtl=(4, 3, 2),
                      suites={"AlpacaEval win %": 40.0, "Open LLM avg %": 31.5}, partner_is_full=True,
                      scorer="gpt2", **setting)]
    lines = report.budget_table(rows)
    assert lines[0] == ("| filter | budget | n | mean response chars | partner | Vicuna | Koala | WizardLM | "
                        "Self-Instruct | LIMA | overall (W/T/L) | Open LLM avg % | AlpacaEval win % | "
                        "published (same setting) |")
    assert lines[1] == "|" + "---|" * 14
    source = "(Superfiltering (ACL 2024), Table 2, alpaca → llama2_7b) |"
    assert lines[2] == ("| full | 100% | 100 | – | – | – | – | – | – | – | – | 30.00 | – | pairwise 1.000 · "
                        f"Open LLM 55.25 · AlpacaEval 27.75 {source}")
    assert lines[3] == ("| superfilter (gpt2) | 5% | 5 | 812 | full 100% | 1.200 | – | – | – | 0.900 | "
                        f"1.050 (4/3/2) | 31.50 | 40.00 | pairwise 1.133 · Open LLM 55.67 · AlpacaEval 33.04 {source}")


def test_paper_pairwise_is_shown_only_against_the_full_model():
    setting = {"dataset": "alpaca", "strong": "llama2_7b"}
    row = BudgetRow("random", 0.1, partner="random 10%", overall=1.0, wtl=(1, 1, 1), **setting)
    assert report.budget_table([row])[2].endswith("| 1.000 (1/1/1) | – |")
    against_full = report.budget_table([BudgetRow("random", 0.1, partner_is_full=True, **setting)])[2]
    assert "pairwise 0.968 (Superfiltering (ACL 2024), Table 3" in against_full


def test_consistency_table_layout():
    c = Comparison(data="alpaca_gpt4_1k", n_records=1000, weak="gpt2", strong="llama", n_aligned=990, rho_ppl=0.7,
                   rho_ifd=0.8, partial_rho_ifd=0.75, binned_rho_ifd=0.6,
                   overlaps={"ifd_weak_vs_strong": (0.3, 0.4, 0.5), "length_vs_strong_ifd": (0.1, 0.2, 0.3),
                             "random_vs_strong_ifd": (0.05, 0.1, 0.15)},
                   rho_with_length=(0.2, 0.1), share_below_one=(0.9, 0.8))
    lines = report.consistency_table([c])
    assert lines[2] == ("| alpaca_gpt4_1k (1,000) | gpt2 | llama | 990 | 0.700 | 0.800 | 0.30 / 0.40 / 0.50 | 0.750 "
                        "| 0.600 |")
    assert lines[3] == ("| alpaca_gpt4_1k (1,000) | length (longest responses) vs llama IFD |  |  | – | – | "
                        "0.10 / 0.20 / 0.30 | – | – |")
    assert [line.split(" | ")[0] for line in lines[5:]] == ["| paper: Alpaca-GPT4"]  # the same data family only
    assert report.length_table([c])[2] == "| alpaca_gpt4_1k (1,000) | gpt2 | llama | 0.200 | 0.100 | 0.900 | 0.800 |"
    assert len(report.consistency_table([])) == 2 + len(report.PAPER_CONSISTENCY)  # unknown family: every paper row


def test_cost_table_layout():
    found = [Scorer("a", None, "gpt2", "p", "alpaca", {"records_per_s": 10.0, "n_records": 600,
                                                       "records_scored_this_run": 600, "scoring_seconds": 60.0,
                                                       "n_processes": 1}),
             Scorer("b", None, "llama", "p", "alpaca", {"records_per_s": 1.0, "n_records": 600})]
    lines = report.cost_table(found)
    assert lines[2] == "| alpaca (600) | gpt2 | 600 | 60 | 10.000 | 1.0 | 87 | 1.00 | 1 |"
    assert lines[3] == "| alpaca (600) | llama | – | – | 1.000 | 10.0 | 867 | 10.00 | – |"


def test_reuse_table_and_compute_seconds():
    def record(name: str, key: str, cached: bool, metrics: dict | None = None) -> StageRecord:
        return StageRecord(name, Path(name), key, cached, metrics or {})

    runs = [Run("ratio=0.1", ["ratio=0.1"], {"score": record("score", "s" * 64, False, {"scoring_seconds": 120}),
                                             "train": record("train", "t1" * 32, False, {"wall_s": 60})}),
            Run("ratio=0.2", ["ratio=0.2"], {"score": record("score", "s" * 64, True, {"scoring_seconds": 120}),
                                             "train": record("train", "t2" * 32, False, {"wall_s": 30})})]
    assert report.reuse_table(runs)[2:] == ["| ratio=0.1 | built `ssssssss` | built `t1t1t1t1` |",
                                            "| ratio=0.2 | cached `ssssssss` | built `t2t2t2t2` |"]
    assert report.compute_seconds(runs) == {"score": 120.0, "train": 90.0}
    assert "score 1, train 2." in "".join(report.reuse_section(runs))


def test_script_writes_the_report_and_fails_in_one_line(budget_folder, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("report_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main([str(budget_folder), "--out", str(tmp_path / "out")])
    assert "## Budget" in capsys.readouterr().out and (tmp_path / "out" / "report.md").exists()
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "no run_summary.json" in capsys.readouterr().err


def sweep_job(root: Path, folder: Path, i: int, data: str, strong: str, weak: str, name: str, ratio: float,
              setting: str = "table2_main") -> None:
    prepare = artifact(root, "prepare", f"prep{data}".ljust(64, "0"), {"data": data, "n_records": N_RECORDS})
    score = score_stage(root, f"{weak}-{data}", i, prepare, 20.0)
    select = artifact(root, "select", f"sel{i:02d}".ljust(64, "0"),
                      {"selector": name, "ratio": ratio, "count": int(N_RECORDS * ratio)})
    stages = {"prepare": prepare, "score": score, "select": select, "train": train_stage(root, f"tr{i:02d}", 3),
              "eval": eval_stage(root, f"ev{i:02d}", 1.0)}
    config = {"data": {"name": data}, "model": {"strong": {"name": strong}, "weak": {"name": weak}},
              "filter": {"name": name, "scorer": "none" if name in ("random", "full") else "weak"}, "name": setting}
    job(folder / str(i), [f"data={data}", f"model/strong={strong}", f"model/weak={weak}", f"filter={name}",
                          f"ratio={ratio}"], stages, strong=strong, setting=config)


def test_published_numbers_are_those_of_exactly_the_same_setting(tmp_path):
    """A multi-dataset, multi-model sweep and a bench run: each row gets the cells of its own setting or none."""
    root, sweep = tmp_path / "artifacts", tmp_path / "multirun" / "m"
    jobs = [("alpaca", "llama2_7b", "gpt2", "superfilter", 0.05), ("alpaca_gpt4", "llama2_13b", "gpt2", "superfilter",
            0.05), ("alpaca", "llama2_7b", "gpt_neo_1.3b", "superfilter", 0.05), ("alpaca", "llama2_7b", "gpt2",
            "random", 0.1), ("alpaca", "llama2_13b", "gpt2", "superfilter", 0.1)]
    for i, spec in enumerate(jobs):
        sweep_job(root, sweep, i, *spec)
    sweep_job(root, sweep, 10, "metamathqa", "qwen2_5_7b", "gpt2", "superfilter", 0.1, setting="bench_math")
    sweep_job(root, sweep, 11, "metamathqa", "qwen2_5_7b", "gpt2", "random", 0.1, setting="bench_math")
    multirun_yaml(sweep, ["experiment=paper/table2_main"])
    lines = report.build_report(sweep, tmp_path / "out").read_text().splitlines()
    rows = [line for line in lines if line.startswith(("| superfilter", "| random"))]
    assert len(rows) == 7, rows
    by_label = {}
    for line in rows:
        cells = line.split(" | ")
        by_label.setdefault((cells[0].strip("| "), cells[1]), []).append(line)
    alpaca_7b, gpt4_13b = [r for r in by_label[("superfilter (gpt2)", "5%")]]
    assert "1.133" in alpaca_7b and "55.67" in alpaca_7b and "33.04" in alpaca_7b and "Table 2" in alpaca_7b
    assert "1.041" in gpt4_13b and "63.29" in gpt4_13b and "78.15" in gpt4_13b
    assert by_label[("superfilter (gpt_neo_1.3b)", "5%")][0].endswith("| – |")  # no GPT-Neo cell transcribed
    assert "0.968" in by_label[("random", "10%")][0]  # Table 3: random needs no scorer
    # Alpaca on 13B at 10% is not in the paper, and a bench setting shows its own published numbers only.
    superfilter_10 = by_label[("superfilter (gpt2)", "10%")]
    assert [r for r in superfilter_10 if r.endswith("| – |")] and not any("56.97" in r for r in superfilter_10)
    bench = next(r for r in superfilter_10 if "AIME24" in r)
    assert "GSM8K 7.6" in bench and "MATH-500 63.4" in bench and "recipe differs" in bench
    assert "Open LLM" not in bench and "1.101" not in bench
    assert [r for r in by_label[("random", "10%")] if r.endswith("| – |")]  # the bench random row: nothing published


def test_the_budget_table_goes_to_the_tracker_once_in_the_runs_group(budget_folder, tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr(report, "log_report_table", lambda cfg, columns, rows, *, group, root:
                        logged.append((cfg.mode, columns, rows, group, root)))
    report.build_report(budget_folder, tmp_path / "out")
    assert logged == []  # these runs recorded no tracking settings
    for config in budget_folder.glob("*/.hydra/config.yaml"):
        saved = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**saved, "tracking": {"mode": "offline", "project": "p"},
                                          "artifact_root": str(tmp_path / "artifacts"), "name": "budget_sweep"}))
    report.build_report(budget_folder, tmp_path / "out")
    ((mode, columns, rows, group, root),) = logged
    assert mode == "offline" and group == "budget_sweep" and root == tmp_path / "artifacts"
    assert columns[0] == "filter" and len(rows) == 3 and all(isinstance(c, (str, type(None))) for c in rows[0])
