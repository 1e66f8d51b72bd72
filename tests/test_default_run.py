"""The embedded default: judge-free measures with enough items for a CI, partners at equal records and tokens."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval.registry import get as get_suite
from eval.suites.reference_nll import load_items, set_name
from superfilter import pipeline, stages
from superfilter.artifacts import Artifact
from superfilter.config import Config, compose_config, to_config
from superfilter.errors import ConfigError
from superfilter.stats import compare

ROOT = Path(__file__).resolve().parents[1]


def make(*overrides: str) -> Config:
    return to_config(compose_config(overrides))


def test_the_default_answers_with_judge_free_measures_of_at_least_200_items():
    cfg = make()
    assert (cfg.eval.reference, cfg.eval.equal_tokens) == ("random", True)
    free = pipeline.judge_free(cfg.eval.suites)
    assert free == ["reference_nll", "lm_eval"]
    nll = cfg.eval.reference_nll
    sizes = {set_name(p): len(load_items(p, nll.limits.get(set_name(p), nll.limit), nll.offsets.get(set_name(p), 0)))
             for p in nll.paths}
    assert sizes == {"gpt4_1106_preview_model_outputs": 200, "alpaca_5000": 100}
    assert cfg.eval.lm_eval.paired and all(e.limit * 3 >= 200 for e in cfg.eval.lm_eval.tasks)  # 3 MMLU subjects
    # the held-out Alpaca answers start where the training pool (the file's first data.limit records) ends
    assert Path(cfg.data.path).name == "alpaca_5000.json"
    assert nll.offsets == {"alpaca_5000": cfg.data.limit}
    assert free == cfg.eval.suites  # no judge: the small local one only runs as a protocol check on request
    assert get_suite("pairwise").prompts is not None and cfg.eval.pairwise.limit == 1


def test_partners_share_keys_with_plain_runs_and_the_token_partner_counts_tokens():
    cfg = make()
    records = pipeline.partner_config(cfg)
    assert stages.select_params(records) == stages.select_params(make("filter=random"))
    tokens = pipeline.partner_config(cfg, 12_345)
    assert (tokens.filter.name, tokens.filter.budget_tokens, tokens.filter.count) == ("random", 12_345, 0)
    assert stages.select_params(tokens) == stages.select_params(make("filter=random", "filter.budget_tokens=12345"))
    assert pipeline.needs_token_partner(cfg)
    assert not pipeline.needs_token_partner(make("filter=random"))  # the run is its own partner
    assert not pipeline.needs_token_partner(make("filter.budget_tokens=5000"))  # its partner already has equal tokens
    assert pipeline.partner_config(make("filter.budget_tokens=5000")).filter.budget_tokens == 5000
    assert not pipeline.needs_token_partner(make("eval.suites=[pairwise]"))
    assert not pipeline.needs_token_partner(make("eval.equal_tokens=false"))
    with pytest.raises(ConfigError, match="eval.equal_tokens=true .* needs eval.reference=random"):
        make("eval.reference=full")


def test_the_verdict_lists_the_judge_free_comparisons_of_both_evaluations(tmp_path):
    cfg = make()
    train = tmp_path / "train"
    train.mkdir()

    def comparison(partner: str, shift: float) -> dict:
        ours = {str(i): 1.0 + 0.01 * i for i in range(50)}
        return compare(ours, {k: v + shift for k, v in ours.items()}, "reference NLL x (nats/token)",
                       higher_is_better=False, partner=partner).to_dict()

    def artifact(stage: str, metrics: dict) -> Artifact:
        return Artifact(stage, "k" * 64, tmp_path / stage, cached=False, metrics=metrics)

    done = {"train": artifact("train", {}),
            "eval": artifact("eval", {"reference_nll": {"paired": [comparison("random 10%", 0.1)]},
                                      "pairwise": {"paired": [comparison("random 10%", 0.0)]}}),
            "eval_tokens": artifact("eval", {"reference_nll": {"paired": [comparison("random 9,000 tokens", 0.0)]}})}
    lines = pipeline.verdict(cfg, done)
    assert lines[0].startswith("## Verdict") and len(lines) == 4  # heading, blank, two lines: pairwise is judged
    assert lines[2].startswith("- train vs random 10% (equal records): reference NLL x") and "**better**" in lines[2]
    assert lines[3].startswith("- train vs random 9,000 tokens (equal tokens):")
    assert "**no detectable difference**" in lines[3]
    assert pipeline.summarize(done, lines)["verdict"] == lines


@pytest.mark.slow
def test_a_smoke_run_trains_both_partners_and_ends_with_the_verdict(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "experiment=smoke", f"artifact_root={tmp_path / 'artifacts'}",
         "tracking.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}", "eval.suites=[reference_nll,lm_eval]",
         "eval.reference_nll.limit=20", "eval.lm_eval.tasks.0.limit=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    stages_run = summary["stages"]
    assert {"train_reference", "eval", "train_ref_tokens", "eval_tokens"} <= set(stages_run)
    select_tokens = json.loads((Path(stages_run["train_ref_tokens"]["path"]) / "config.json").read_text())
    partner_select = Path(select_tokens["upstream"]["select"]["path"])
    partner = json.loads((partner_select / "metrics.json").read_text())
    ours = pipeline.subset_tokens(make("experiment=smoke"),
                                  Artifact("select", "", Path(stages_run["select"]["path"]), False))
    assert partner["budget_tokens"] == ours and partner["selected_tokens"] <= ours
    assert any("(equal records)" in line for line in summary["verdict"])
    assert any("(equal tokens)" in line for line in summary["verdict"])
    assert "## Verdict" in result.stdout and summary["verdict"][-1] in result.stdout
