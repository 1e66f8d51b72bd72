"""Every conf/experiment/bench preset composes, and its evaluation runs end to end on a tiny model with small limits.

Offline, Hub datasets come from tests/fixtures/hub_task_datasets.json (synthetic records in each dataset's schema):
lm-eval's own task configs (prompts, choices, metrics) run on them unchanged. The math suite reads the shipped sets;
the code suite reads two-task release files (tests/fixtures/code_tasks/) through evalplus and bigcodebench, and runs
only once execution is allowed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.metrics import code_benchmarks
from eval.stage import eval_stage
from superfilter.config import register_configs, to_config
from superfilter.errors import ConfigError
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

PROJECT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (PROJECT / "conf" / "experiment" / "bench").glob("*.yaml"))
FIXTURES = json.loads((PROJECT / "tests" / "fixtures" / "hub_task_datasets.json").read_text())
CODE_TASKS = PROJECT / "tests" / "fixtures" / "code_tasks"
register_configs()


def compose_preset(name: str):
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=[f"experiment=bench/{name}"]))


def shrink(cfg) -> None:
    """Small limits, a fake judge, short answers, shipped reference files: the same suites and tasks."""
    e = cfg.eval
    e.reference = "none"
    e.judge.backend = "fake"
    e.generation.max_new_tokens = 4
    e.alpaca_eval.limit = e.arena_hard.limit = e.reference_nll.limit = 1
    e.alpaca_eval.df_gamed_path = ""
    e.open_llm.source, e.open_llm.limit, e.open_llm.mmlu_subjects = "local", 1, ["management"]
    e.math.limit = e.code.limit = 1
    e.code.humaneval_plus_path = str(CODE_TASKS / "HumanEvalPlus.jsonl")
    e.code.mbpp_plus_path = str(CODE_TASKS / "MbppPlus.jsonl")
    e.code.bigcodebench_path = str(CODE_TASKS / "BigCodeBench.jsonl")
    e.code.workers, e.code.timeout_s = 1, 20.0
    for entry in e.lm_eval.tasks:
        entry.limit = 1
        entry.num_fewshot = min(entry.num_fewshot or 0, 1)
        entry.gen_kwargs = {**entry.gen_kwargs, "max_gen_toks": 4}


def serve_fixtures(monkeypatch) -> None:
    import datasets

    real = datasets.load_dataset

    def load_dataset(path=None, name=None, **kwargs):
        key = f"{path}/{name}" if name else path
        if key in FIXTURES:
            return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)
                                         for split, rows in FIXTURES[key].items()})
        return real(path, name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr("eval.harness.hub_reachable", lambda timeout_s=3.0: True)


def test_there_is_a_preset_per_setting():
    assert PRESETS == ["code", "dolly", "finance", "general", "math", "medical"]


def test_each_preset_evaluates_in_the_training_format_and_says_so():
    for name in PRESETS:
        cfg = compose_preset(name)
        assert cfg.train.template == "vicuna_v1.1", name
        assert "Format:" in (PROJECT / "conf" / "experiment" / "bench" / f"{name}.yaml").read_text(), name
        if "lm_eval" in cfg.eval.suites:
            assert all(entry.apply_chat_template for entry in cfg.eval.lm_eval.tasks), name
        assert cfg.eval.template == "", name  # generation uses the template the model was trained with


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_evaluation_runs_end_to_end_on_a_tiny_model(name, tiny_train_folder, tmp_path, monkeypatch):
    cfg = compose_preset(name)
    assert cfg.name == f"bench_{name}" and cfg.eval.suites and cfg.model.strong.source == "hub"
    shrink(cfg)
    if name == "code":
        assert not cfg.eval.code.allow_code_execution  # execution is opt-in, and refused before any model loads
        with pytest.raises(ConfigError, match="eval.code.allow_code_execution=true"):
            eval_stage(tiny_train_folder, None, cfg.eval, RuntimeConfig(device="cpu"), tmp_path / "refused",
                       StageRun(None, "eval"))
        assert not (tmp_path / "refused").exists()
        missing = [b for b in cfg.eval.code.benchmarks if code_benchmarks.missing_modules(b)]
        if missing:
            pytest.skip(f"{missing} need the code extra: {code_benchmarks.INSTALL}")
        cfg.eval.code.allow_code_execution = True
    serve_fixtures(monkeypatch)
    out = tmp_path / "eval" / "k.partial"
    metrics = eval_stage(tiny_train_folder, None, cfg.eval, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    assert set(cfg.eval.suites) <= set(metrics)
    for suite in cfg.eval.suites:
        assert (out / "eval" / f"{suite}.json").is_file()
    if "lm_eval" in cfg.eval.suites:
        result = json.loads((out / "eval" / "lm_eval.json").read_text())
        assert [e["task"] for e in result["tasks"]] == [t.task for t in cfg.eval.lm_eval.tasks]
        assert all(e["headline"]["n"] == 1 and e["headline"]["value"] is not None for e in result["tasks"])
        assert {e["prompt_format"] for e in result["tasks"]} == {"alpaca"}  # the tiny model's training template
    if "math" in cfg.eval.suites:
        result = json.loads((out / "eval" / "math.json").read_text())
        assert {b: r["n"] for b, r in result["benchmarks"].items()} == dict.fromkeys(
            ["aime24", "amc23", "math500", "minerva_math", "olympiadbench"], 1)
    if "code" in cfg.eval.suites:
        assert set(metrics["code"]) == {"humaneval", "humaneval_plus", "mbpp", "mbpp_plus", "bigcodebench_complete",
                                        "bigcodebench_instruct"}
        assert all(value is not None for value in metrics["code"].values())
