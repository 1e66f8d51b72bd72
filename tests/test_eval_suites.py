"""The suite registry: a suite registered from any module runs in the stage, its summary and tracker rows included."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest

from eval import registry as suites
from eval.config import EvalConfig
from eval.generation import Prompt
from eval.registry import Context, Prompts, Result, Suite, Table
from eval.settings import GenerationConfig
from eval.stage import eval_stage, report_columns
from superfilter.errors import ConfigError
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun


@dataclass
class EchoConfig:
    word: str = "hello"


def _prompts(ctx: Context, cfg: EchoConfig) -> Prompts:
    return Prompts(model={"words": [Prompt("a", f"Say {cfg.word}"), Prompt("b", "Count to three")]})


def _run(ctx: Context, cfg: EchoConfig) -> Result:
    answers = ctx.outputs["echo"]["words"]
    share = sum(cfg.word in a for a in answers) / len(answers)
    return Result(result={"answers": answers, "share": share}, metrics={"share": share},
                  headline={"echo_share": share}, summary=["### Echo", "", f"share {share:.2f}"],
                  tables=[Table("echo", ["id", "answer"], [["a", answers[0]], ["b", answers[1]]])])


@pytest.fixture
def echo_suite():
    suite = suites.register(Suite("echo", EchoConfig, _run, prompts=_prompts,
                                  report=lambda m: {"echo share": m.get("share")}))
    yield suite
    suites.REGISTRY.pop("echo")


class Recorder(StageRun):
    def __init__(self) -> None:
        super().__init__(None, "eval")
        self.calls: list[tuple[str, object]] = []

    def log(self, metrics, step=None) -> None:
        self.calls.append(("log", metrics))

    def table(self, name, columns, rows) -> None:
        self.calls.append(("table", name))

    def image(self, name, path) -> None:
        self.calls.append(("image", name))


def test_every_suite_module_has_a_config_section():
    names = {f.name for f in dataclasses.fields(EvalConfig)}
    assert {"pairwise", "alpaca_eval", "open_llm"} <= set(suites.REGISTRY) <= names
    for name, suite in suites.REGISTRY.items():
        assert isinstance(getattr(EvalConfig(), name), suite.schema)


def test_a_suite_registered_elsewhere_runs_in_the_stage(echo_suite, tiny_train_folder, tmp_path):
    cfg = EvalConfig(suites=["echo"], reference="none", generation=GenerationConfig(max_new_tokens=4))
    tracker = Recorder()
    out = tmp_path / "eval" / "k.partial"
    metrics = eval_stage(tiny_train_folder, None, cfg, RuntimeConfig(device="cpu"), out, tracker)
    result = json.loads((out / "eval" / "echo.json").read_text())
    assert len(result["answers"]) == 2 and metrics["echo"] == {"share": result["share"]}
    assert "### Echo" in (out / "eval" / "summary.md").read_text()
    assert tracker.calls == [("log", {"echo_share": result["share"]}), ("table", "echo")]
    generation = json.loads((out / "eval" / "generation.json").read_text())
    assert generation["model"]["prompts"] == 2 and "reference" not in generation
    assert "echo" in metrics["seconds_by_phase"] and "generation" in metrics["seconds_by_phase"]
    assert metrics["report_columns"] == {"echo": [["echo share", result["share"]]]}


def test_report_columns_come_from_the_registry(echo_suite):
    metrics = {"echo": {"share": 0.5}, "open_llm": {"average": 0.25}, "alpaca_eval": {"win_rate": 40.0},
               "pairwise": {"skipped": "no partner"}}
    columns = report_columns({name: Result(result={}, metrics=m) for name, m in metrics.items()})
    assert columns == {"echo": [["echo share", 0.5]], "open_llm": [["Open LLM avg %", 25.0]],
                       "alpaca_eval": [["AlpacaEval win %", 40.0]]}


def test_an_unknown_suite_fails_in_one_line_before_any_model_loads(tmp_path):
    cfg = EvalConfig(suites=["pairwise", "alpaca_evel"])
    with pytest.raises(ConfigError) as failure:
        # The model folder does not exist: reaching it would raise another error.
        eval_stage(tmp_path / "missing", None, cfg, RuntimeConfig(device="cpu"), tmp_path / "out", StageRun(None, "e"))
    message = str(failure.value)
    assert "\n" not in message and "'alpaca_evel'" in message and "did you mean alpaca_eval" in message
    assert not (tmp_path / "out").exists()


def test_registering_another_suite_under_a_taken_name_fails(echo_suite):
    with pytest.raises(ValueError, match="registered twice"):
        suites.register(Suite("echo", EchoConfig, lambda ctx, cfg: None))


def test_the_pipeline_checks_evaluation_requests_before_any_stage_runs(tmp_path):
    from superfilter import pipeline
    from superfilter.config import Config
    from superfilter.errors import DataError

    cfg = Config(artifact_root=str(tmp_path / "artifacts"))
    cfg.eval.suites = ["reference_nll"]
    cfg.eval.reference_nll.paths = [str(tmp_path / "missing.json")]
    with pytest.raises(DataError, match="missing.json does not exist"):
        pipeline.run(cfg)
    assert not (tmp_path / "artifacts").exists()


def test_the_eval_key_holds_only_the_suites_that_run():
    from superfilter.pipeline import key_params

    def key(cfg: EvalConfig) -> dict:
        return key_params(cfg, drop=cfg.unselected_sections())

    base = EvalConfig(suites=["pairwise"])
    other = EvalConfig(suites=["pairwise"])
    other.open_llm.limit = 7
    assert key(other) == key(base) and "open_llm" not in key(base) and "pairwise" in key(base)
    other.pairwise.limit = 3
    assert key(other) != key(base)
    assert key(EvalConfig(suites=["pairwise", "open_llm"])) != key(base)


@pytest.mark.parametrize("chosen, reference, trains_partner", [
    (["open_llm", "lm_eval"], "random", False),  # no selected suite compares with a partner
    (["alpaca_eval", "arena_hard"], "full", False),
    (["open_llm", "pairwise"], "random", True),
    (["reference_nll"], "full", True),  # its paired comparison
    (["pairwise"], "none", False),
])
def test_the_partner_model_is_trained_only_for_suites_that_compare_with_it(monkeypatch, tmp_path, chosen, reference,
                                                                            trains_partner):
    from superfilter import pipeline
    from superfilter.artifacts import Artifact
    from superfilter.config import Config

    def fake(stage: str):
        return lambda cfg, *upstream: Artifact(stage, f"{stage}-{cfg.filter.name}", tmp_path / stage, False)

    partners, evaluated = [], []
    for stage in ("prepare", "score", "select", "train"):
        monkeypatch.setattr(pipeline, stage, fake(stage))
    monkeypatch.setattr(pipeline, "scores_for_selection", lambda cfg, examples: fake("score")(cfg))
    monkeypatch.setattr(pipeline, "trained_model", lambda cfg, examples: partners.append(cfg.filter.name)
                        or fake("train")(cfg))
    monkeypatch.setattr(pipeline, "evaluate", lambda cfg, tiny_train_folder, ref: evaluated.append(ref)
                        or Artifact("eval", "e", tmp_path / "eval", False))
    monkeypatch.setattr(pipeline, "check_eval", lambda eval_cfg: None)
    monkeypatch.setattr(pipeline, "check_plan", lambda cfg, run: None)  # its walk would call the fakes twice
    cfg = Config(artifact_root=str(tmp_path / "artifacts"))
    cfg.eval.suites, cfg.eval.reference = chosen, reference
    summary = pipeline.run(cfg)
    assert partners == ([reference] if trains_partner else [])
    assert (evaluated[0] is not None) == trains_partner
    assert ("train_reference" in summary["stages"]) == trains_partner
