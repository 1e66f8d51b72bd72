"""reference_nll: per-item NLL equals an independent loss, batching changes nothing, paired comparison, file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval.commands import reference_nll
from eval.config import EvalConfig
from eval.stage import eval_stage
from eval.suites import reference_nll as suite
from eval.suites.reference_nll import ReferenceNllConfig, item_nll, load_items, paired
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig, build_tiny_model, load_model
from superfilter.prompts import generation_prompt
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

ALPACA_EVAL = Path(__file__).resolve().parents[1] / "data" / "alpaca_eval" / "text_davinci_003_model_outputs.json"


def _trained(root: Path, name: str, seed: int) -> Path:
    folder = root / "train" / name
    build_tiny_model("llama", folder / "model", seed=seed)
    (folder / "model" / "superfilter_train.json").write_text(json.dumps({"template": "alpaca"}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return _trained(root, "model", 11), _trained(root, "reference", 12)


def test_item_nll_equals_a_one_item_labels_loss_and_ignores_batching(models):
    model, tokenizer = load_model(ModelConfig(source="local", path=str(models[0] / "model")), "cpu")
    items = load_items(str(ALPACA_EVAL), 5)
    batched = item_nll(model, tokenizer, items, "alpaca", 1024, batch_size=4)
    single = item_nll(model, tokenizer, items, "alpaca", 1024, batch_size=1)
    assert [r["nll_mean"] for r in batched] == pytest.approx([r["nll_mean"] for r in single], abs=1e-4)
    for item, row in zip(items, batched, strict=True):
        prompt = generation_prompt(item["instruction"], "alpaca", tokenizer)
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + item["output"] + tokenizer.eos_token)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids  # the tiny byte-level tokenizer keeps the boundary
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        assert row["nll_mean"] == pytest.approx(float(loss), abs=1e-4)
        assert row["n_tokens"] == len(ids) - len(prompt_ids) and not row["truncated"]


def test_paired_difference_interval_and_verdict():
    ours = [{"id": str(i), "nll_mean": v} for i, v in enumerate([1.0, 2.0, 3.0, 4.0])]
    theirs = [{"id": str(i), "nll_mean": v} for i, v in enumerate([1.5, 2.0, 3.5, 5.0])]
    result = paired(ours, theirs + [{"id": "extra", "nll_mean": 9.0}], "set", "random 10%")
    assert (result["n"], result["delta"], result["share_better"]) == (4, -0.5, 0.75)  # diffs −0.5, 0, −0.5, −1
    assert result["lo"] < -0.5 < result["hi"] < 0 and result["verdict"] == "better"
    assert (result["measure"], result["partner"]) == ("reference NLL set (nats/token)", "random 10%")


def test_stage_scores_both_models_and_saves_per_item_values(models, tmp_path):
    model_dir, reference_dir = models
    cfg = EvalConfig(suites=["reference_nll"], reference="random")
    cfg.reference_nll = ReferenceNllConfig(paths=[str(ALPACA_EVAL)], limit=3, max_tokens=300)
    out = tmp_path / "eval" / "r.partial"
    metrics = eval_stage(model_dir, reference_dir, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    name = "text_davinci_003_model_outputs"
    ours = [json.loads(line) for line in (out / "eval" / "reference_nll" / f"{name}.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in
              (out / "eval" / "reference_nll" / f"{name}.reference.jsonl").read_text().splitlines()]
    assert len(ours) == len(theirs) == 3 and any(r["truncated"] for r in ours)  # 300 byte-level tokens cut long answers
    assert all(r["n_tokens"] > 0 for r in ours)
    summary = json.loads((out / "eval" / "reference_nll.json").read_text())["sets"][name]
    assert summary["paired"] == paired(ours, theirs, name, "reference")
    assert metrics["reference_nll"]["paired"] == [summary["paired"]]
    assert metrics["reference_nll"][name]["nll_mean"] == pytest.approx(sum(r["nll_mean"] for r in ours) / 3)
    assert "Reference-answer NLL" in (out / "eval" / "summary.md").read_text()
    assert reference_nll.main([str(out / "eval" / "reference_nll" / f"{name}.jsonl"),
                               str(out / "eval" / "reference_nll" / f"{name}.reference.jsonl")]) == 0


def test_each_model_is_scored_once_then_read_from_the_cache(models, tmp_path, monkeypatch):
    model_dir, reference_dir = models
    cfg = EvalConfig(suites=["reference_nll"], reference="random", cache_dir=str(tmp_path / "cache"))
    cfg.reference_nll = ReferenceNllConfig(paths=[str(ALPACA_EVAL)], limit=2, max_tokens=64)
    first = eval_stage(model_dir, reference_dir, cfg, RuntimeConfig(device="cpu"), tmp_path / "a",
                       StageRun(None, "eval"))

    def no_scoring(*args, **kwargs):
        raise AssertionError("a cached model was scored again")

    monkeypatch.setattr(suite, "item_nll", no_scoring)
    again = eval_stage(model_dir, reference_dir, cfg, RuntimeConfig(device="cpu"), tmp_path / "b",
                       StageRun(None, "eval"))
    assert again["reference_nll"] == first["reference_nll"]


def test_offsets_skip_the_first_records_of_a_set():
    items = load_items(str(ALPACA_EVAL), 2, offset=3)
    assert [i["id"] for i in items] == ["3", "4"]
    assert items[0]["instruction"] == load_items(str(ALPACA_EVAL), 4)[3]["instruction"]
    with pytest.raises(ConfigError, match="offsets.other: no file"):
        suite.validate(ReferenceNllConfig(paths=[str(ALPACA_EVAL)], offsets={"other": 1}), None)
    with pytest.raises(ConfigError, match="limits.text_davinci_003_model_outputs must be an integer >= 0"):
        suite.validate(ReferenceNllConfig(paths=[str(ALPACA_EVAL)], limits={"text_davinci_003_model_outputs": -1}),
                       None)
    with pytest.raises(DataError, match="no record after it"):
        suite.preflight(ReferenceNllConfig(paths=[str(ALPACA_EVAL)],
                                           offsets={"text_davinci_003_model_outputs": 805}), None)


def test_arena_hard_answers_and_malformed_files(tmp_path):
    arena = tmp_path / "gpt-4-0314.jsonl"
    arena.write_text(json.dumps({"uid": "q1", "messages": [{"role": "user", "content": "Hi?"},
                                                           {"role": "assistant", "content": {"answer": "Hello."}}]}))
    assert load_items(str(arena)) == [{"id": "q1", "instruction": "Hi?", "input": "", "output": "Hello."}]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x"}]))
    with pytest.raises(DataError, match="bad.json: record 1 needs string fields"):
        load_items(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        suite.preflight(ReferenceNllConfig(paths=[str(tmp_path / "missing.json")]), None)


def test_the_comparison_command_fails_in_one_line_on_a_wrong_file(tmp_path, capsys):
    good = tmp_path / "a.jsonl"
    good.write_text("".join(json.dumps({"id": str(i), "nll_mean": 1.0 + i}) + "\n" for i in range(3)))
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps({"id": str(i), "nll_mean": 1.5}) + "\n" for i in range(3)))
    assert reference_nll.main([str(good), str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps({"instruction": "x", "output": "y"}) + "\n")
    unrelated = tmp_path / "c.jsonl"
    unrelated.write_text(json.dumps({"id": "z", "nll_mean": 1.0}) + "\n")
    for argv, message in [([good, tmp_path / "missing.jsonl"], "missing.jsonl: no such file"),
                          ([records, good], "records.jsonl:1: no id or nll_mean field"),
                          ([good, unrelated], "share no item id")]:
        assert reference_nll.main([str(p) for p in argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


def test_two_files_with_one_set_name_are_refused():
    with pytest.raises(ConfigError, match="share a set name"):
        suite.validate(ReferenceNllConfig(paths=["a/answers.json", "b/answers.jsonl"]), None)
    suite.validate(ReferenceNllConfig(paths=["a/answers.json", "b/other.jsonl"]), None)
