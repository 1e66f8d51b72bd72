"""Every conf/experiment/bench preset composes, and its evaluation runs end to end on a tiny model with small limits.

Offline, Hub datasets come from tests/fixtures/hub_task_datasets.json (synthetic records in each dataset's schema):
lm-eval's own task configs (prompts, choices, metrics) run on them unchanged. Code tasks other than HumanEval need
the Hub twice (data, and lm-eval's `code_eval` metric): there, the preset's refusal offline is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from eval.stage import eval_stage
from eval.suites import lm_eval as lm_eval_suite
from superfilter.config import register_configs, to_config
from superfilter.errors import ConfigError
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

PROJECT = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.stem for p in (PROJECT / "conf" / "experiment" / "bench").glob("*.yaml"))
FIXTURES = json.loads((PROJECT / "tests" / "fixtures" / "hub_task_datasets.json").read_text())
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


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_evaluation_runs_end_to_end_on_a_tiny_model(name, tiny_train_folder, tmp_path, monkeypatch):
    cfg = compose_preset(name)
    assert cfg.name == f"bench_{name}" and cfg.eval.suites and cfg.model.strong.source == "hub"
    shrink(cfg)
    if name == "code":
        assert cfg.eval.lm_eval.allow_code_execution
        cfg.eval.lm_eval.source = "local"
        with pytest.raises(ConfigError, match="tasks\\[1\\].task=humaneval_plus: eval.lm_eval.source=local and it "
                                              "has no local copy"):
            lm_eval_suite.plan(cfg.eval.lm_eval)
        cfg.eval.lm_eval.tasks = cfg.eval.lm_eval.tasks[:1]  # HumanEval, from its local copy
    else:
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
