"""Eval stage on tiny models: generation and its cache, lm-eval over local task files, the whole stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.config import EvalConfig
from eval.generation import Prompt, generate, model_key, training_template
from eval.metrics import pairwise
from eval.open_llm_tasks import hellaswag_records, mmlu_records, run_open_llm, truthfulqa_records
from eval.settings import GenerationConfig, JudgeConfig
from eval.stage import eval_stage
from eval.suites.open_llm import OpenLLMConfig
from eval.suites.pairwise import PairwiseConfig
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig, build_tiny_model, load_model
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

PROJECT_DATA = Path(__file__).resolve().parents[1] / "data"
SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")


def _train_stage_folder(root: Path, name: str, seed: int, template: str = "alpaca") -> Path:
    """What the train stage leaves: <root>/train/<key>/model (weights, tokenizer, template) + config.json."""
    folder = root / "train" / name
    build_tiny_model("llama", folder / "model", seed=seed)
    (folder / "model" / "superfilter_train.json").write_text(json.dumps({"template": template}))
    (folder / "config.json").write_text(json.dumps({"stage": "train", "key": f"{name}-key" * 4}))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return _train_stage_folder(root, "model", seed=1), _train_stage_folder(root, "reference", seed=2)


def _prompts(per_set: int) -> list[Prompt]:
    return [Prompt(p.id, p.instruction, p.input) for name in SETS
            for p in pairwise.load_test_set(name, PROJECT_DATA / "pairwise_test_sets", per_set)]


def test_generation_three_prompts_per_set_then_all_from_the_cache(models, tmp_path):
    model_dir, _ = models
    prompts = _prompts(3)
    cfg = GenerationConfig(max_new_tokens=6, max_prompt_tokens=128)
    outputs, stats = generate(model_dir, prompts, cfg, tmp_path / "cache", batch_size=4)
    assert len(outputs) == 15 and all(isinstance(o, str) for o in outputs)
    assert stats["generated"] == 15 and stats["template"] == "alpaca"
    assert stats["new_tokens"] <= 15 * 6 and sum(stats["finish_reasons"].values()) == 15
    again, stats = generate(model_dir, prompts, cfg, tmp_path / "cache", batch_size=2)
    assert again == outputs and stats["generated"] == 0 and stats["cached"] == 15
    longer, stats = generate(model_dir, prompts[:2], GenerationConfig(max_new_tokens=7, max_prompt_tokens=128),
                             tmp_path / "cache")
    assert stats["generated"] == 2  # another decoding setting is another cache entry


def test_model_key_and_template_come_from_the_train_stage(models, tmp_path):
    model_dir, reference_dir = models
    assert model_key(model_dir) == "train:" + "model-key" * 4 != model_key(reference_dir)
    assert training_template(model_dir) == "alpaca" and training_template(model_dir, "vicuna_v1.1") == "vicuna_v1.1"
    plain = build_tiny_model("gpt2", tmp_path / "plain")
    assert model_key(plain).startswith("files:")
    with pytest.raises(ConfigError, match="training template is unknown"):
        training_template(plain)


def test_local_benchmark_files_parse_and_malformed_ones_fail_loudly(tmp_path):
    local = PROJECT_DATA / "eval"
    hellaswag = hellaswag_records(local / "hellaswag" / "hellaswag_val_first100.txt")
    assert len(hellaswag) == 100 and all(len(r["choices"]) == 4 and 0 <= r["label"] < 4 for r in hellaswag)
    mmlu = mmlu_records(local / "mmlu" / "dev" / "management_dev.csv")
    assert len(mmlu) == 5 and all(len(r["choices"]) == 4 for r in mmlu)
    tqa = truthfulqa_records(local / "truthfulqa" / "TruthfulQA.csv")
    assert len(tqa) == 100 and all(0 < sum(r["mc2_targets"]["labels"]) < len(r["mc2_targets"]["labels"]) for r in tqa)
    bad = tmp_path / "bad.csv"
    bad.write_text("q,a,b,c,d,A\nq,a,b,c,d,E\n")
    with pytest.raises(DataError, match=r"bad.csv:2"):
        mmlu_records(bad)


@pytest.mark.slow
def test_lm_eval_runs_leaderboard_tasks_on_local_files(models, tmp_path):
    model_dir, _ = models
    model, tokenizer = load_model(ModelConfig(source="local", path=str(model_dir / "model")), "cpu")
    cfg = OpenLLMConfig(source="local", data_dir=str(PROJECT_DATA / "eval"), mmlu_subjects=["management"])
    result = run_open_llm(model, tokenizer, cfg.tasks, cfg.source, cfg.mmlu_subjects, cfg.share_prefix,
                          PROJECT_DATA / "eval", limit=2, device="cpu", batch_size=2, out_dir=tmp_path)
    assert set(result["benchmarks"]) == {"hellaswag", "mmlu", "truthfulqa_mc2"}
    assert "arc_challenge" in result["skipped"] and result["limit"] == 2 and result["source"] == "local"
    assert all(0.0 <= b["value"] <= 1.0 for b in result["benchmarks"].values())
    assert result["benchmarks"]["hellaswag"]["num_fewshot"] == 10 and result["benchmarks"]["mmlu"]["n"] == 2
    assert any("limit=2" in n for n in result["notes"]) and (tmp_path / "lm_eval_tasks" / "mmlu_local.yaml").exists()


def _fake_cfg(**overrides) -> EvalConfig:
    return EvalConfig(
        suites=["pairwise", "alpaca_eval"], reference="random", batch_size=4,
        generation=GenerationConfig(max_new_tokens=5, max_prompt_tokens=128),
        judge=JudgeConfig(backend="fake"), pairwise=PairwiseConfig(limit=2), **overrides,
    )


class Recorder(StageRun):
    """A tracker that records what the stage mirrors."""

    def __init__(self) -> None:
        super().__init__(None, "eval")
        self.calls: list[tuple[str, object]] = []

    def log(self, metrics, step=None) -> None:
        self.calls.append(("log", metrics))

    def image(self, name, path) -> None:
        self.calls.append(("image", name))

    def table(self, name, columns, rows) -> None:
        self.calls.append(("table", (name, len(rows))))


def test_eval_stage_end_to_end_with_a_fake_judge(models, tmp_path):
    model_dir, reference_dir = models
    out = tmp_path / "eval" / "abc.partial"
    cfg = _fake_cfg()
    cfg.alpaca_eval.limit = 3
    tracker = Recorder()
    metrics = eval_stage(model_dir, reference_dir, cfg, RuntimeConfig(device="cpu"), out, tracker)
    assert [c[0] for c in tracker.calls] == ["log", "table", "table", "table", "table", "image"]
    tables = dict(c[1] for c in tracker.calls if c[0] == "table")  # name → rows
    assert {k: v for k, v in tables.items() if k != "paired"} == {  # per set and overall; a row per prompt
        "pairwise": len(SETS) + 1, "pairwise_samples": 2 * len(SETS), "alpaca_eval_samples": 3}
    assert tables["paired"] == 2  # the paired comparisons: pairwise and alpaca_eval
    assert metrics["pairwise"]["paired"][0]["n"] == metrics["pairwise"]["n"]
    assert metrics["alpaca_eval"]["paired"][0]["partner"] == "text_davinci_003"
    assert set(tracker.calls[0][1]) == {"pairwise_winning_score", "alpaca_eval_win_rate"}
    assert metrics["pairwise"]["n"] + metrics["pairwise"]["unparseable"] == 2 * len(SETS)
    assert 0.0 <= metrics["pairwise"]["winning_score"] <= 2.0 and 0.0 <= metrics["alpaca_eval"]["win_rate"] <= 100
    for name in ("eval/pairwise.json", "eval/alpaca_eval.json", "eval/alpaca_eval/model_outputs.json",
                 "eval/alpaca_eval/annotations.json", "eval/summary.md", "eval/generation.json",
                 "eval/pairwise_wtl.png", "judge/annotations.jsonl", "judge/summary.json"):
        assert (out / name).exists(), name
    annotations = (out / "judge" / "annotations.jsonl").read_text().splitlines()
    assert len(annotations) == 2 * 2 * len(SETS) + 3  # both orders per pairwise prompt, one per AlpacaEval prompt
    outputs = json.loads((out / "eval" / "alpaca_eval" / "model_outputs.json").read_text())
    assert [set(o) for o in outputs] == [{"dataset", "instruction", "output", "generator"}] * 3

    # The authors' review-log format is written, and the CLI recomputes the same counts from it.
    logs = sorted((out / "judge").glob("*_wrap_reviews_*.json"))
    tallies = [pairwise.tally_reviews(*pairwise.read_review_log(f)[:2]) for f in logs]
    total = pairwise.pooled(tallies)
    assert (total.win, total.tie, total.lose) == tuple(metrics["pairwise"][k] for k in ("win", "tie", "lose"))
    assert "Pairwise vs" in (out / "eval" / "summary.md").read_text()

    # Another evaluation (new folder) of the same models regenerates nothing and asks the judge nothing.
    second = tmp_path / "eval" / "def.partial"
    eval_stage(model_dir, reference_dir, cfg, RuntimeConfig(device="cpu"), second, StageRun(None, "eval"))
    generation = json.loads((second / "eval" / "generation.json").read_text())
    assert generation["model"]["generated"] == 0 and generation["reference"]["generated"] == 0
    judged = json.loads((second / "judge" / "summary.json").read_text())
    assert all(s["asked"] == 0 for s in judged.values())


def test_eval_stage_without_a_reference_skips_pairwise(models, tmp_path):
    model_dir, _ = models
    out = tmp_path / "eval" / "x.partial"
    cfg = _fake_cfg(limit=1)
    metrics = eval_stage(model_dir, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    assert "skipped" in metrics["pairwise"] and metrics["alpaca_eval"]["n"] == 1


@pytest.mark.parametrize(("override", "message"), [
    ({"suites": ["pairwise", "mtbench"]}, "eval.suites"),
    ({"reference": "half"}, "eval.reference"),
    ({"judge": JudgeConfig(backend="gpt")}, "eval.judge.backend"),
    ({"judge": JudgeConfig(backend="replay")}, "replay_files"),
    ({"limit": -1}, "eval.limit"),
])
def test_eval_config_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**override).validate()


@pytest.mark.slow
def test_prefix_sharing_scores_equal_lm_evals_own(models):
    import torch
    from lm_eval.models.huggingface import HFLM

    from eval.open_llm_tasks import prefix_sharing_lm

    model_dir, _ = models
    model, tokenizer = load_model(ModelConfig(source="local", path=str(model_dir / "model")), "cpu")
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(5, 400, (60,), generator=gen).tolist()
    other = torch.randint(5, 400, (9,), generator=gen).tolist()
    too_long = torch.randint(5, 400, (1100,), generator=gen).tolist()  # beyond 1024 positions: lm-eval truncates
    requests = [(("c", "a"), context, [11, 12, 13]), (("c", "b"), context, [14]), (("o", "c"), other, [15, 16]),
                (("c", "d"), context, [17, 18, 19, 20, 21]), (("o", "e"), other, [22]), (("l", "f"), too_long, [7, 8])]
    ours = prefix_sharing_lm(model, tokenizer, "cpu", 2)._loglikelihood_tokens(requests, disable_tqdm=True)
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, device="cpu")._loglikelihood_tokens(
        requests, disable_tqdm=True)
    assert [g for _, g in ours] == [g for _, g in stock]
    assert [lp for lp, _ in ours] == pytest.approx([lp for lp, _ in stock], abs=1e-4)
