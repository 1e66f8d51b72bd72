"""Paired statistics: known differences recovered, identical models undecided, seeded intervals, seed pooling."""

import math

import numpy as np
import pytest

from superfilter import stats


def items(values) -> dict[str, float]:
    return {f"item{i}": float(v) for i, v in enumerate(values)}


def test_a_known_difference_is_recovered_with_its_direction():
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 0.5, size=300)  # between-item spread far larger than the effect: pairing removes it
    ours = base - 0.05 + rng.normal(0.0, 0.02, size=300)
    result = stats.compare(items(ours), items(base), "NLL", higher_is_better=False, partner="random 10%")
    assert result.n == 300
    assert result.delta == pytest.approx(-0.05, abs=0.005)
    assert result.lo < -0.05 < result.hi < 0
    assert result.verdict == stats.BETTER and result.share_better > 0.9
    flipped = stats.compare(items(ours), items(base), "accuracy", higher_is_better=True)
    assert flipped.verdict == stats.WORSE and (flipped.lo, flipped.hi) == (result.lo, result.hi)


def test_identical_models_have_an_interval_containing_zero():
    values = items(np.random.default_rng(2).normal(size=50))
    result = stats.compare(values, dict(values), "NLL", higher_is_better=False)
    assert result.lo <= 0.0 <= result.hi and result.delta == 0.0
    assert result.verdict == stats.NO_DIFFERENCE
    noise = stats.compare_differences(items(np.random.default_rng(3).choice([-1, 0, 1], size=200)), "win share",
                                      higher_is_better=True)
    assert noise.lo < 0.0 < noise.hi and noise.verdict == stats.NO_DIFFERENCE


def test_the_bootstrap_is_seeded_and_independent_of_chunking(monkeypatch):
    d = np.random.default_rng(4).normal(0.1, 1.0, size=120)
    first = stats.bootstrap_interval(d, resamples=2000, seed=7)
    assert stats.bootstrap_interval(d, resamples=2000, seed=7) == first
    assert stats.bootstrap_interval(d, resamples=2000, seed=8) != first
    monkeypatch.setattr(stats, "CHUNK_VALUES", 1000)  # 8 resamples per call instead of all at once
    assert stats.bootstrap_interval(d, resamples=2000, seed=7) == first


def test_the_interval_matches_a_plain_loop_bootstrap():
    d = np.random.default_rng(5).normal(size=40)
    rng = np.random.default_rng(0)
    means = [d[rng.integers(0, d.size, size=d.size)].mean() for _ in range(500)]
    expected = np.quantile(means, [0.025, 0.975])
    assert stats.bootstrap_interval(d, resamples=500, seed=0) == pytest.approx(tuple(expected))


def test_only_items_both_models_have_and_finite_values_are_paired():
    ours = {"a": 1.0, "b": 2.0, "c": math.nan, "d": 4.0}
    theirs = {"a": 0.5, "b": 1.0, "c": 3.0, "e": 9.0}
    ids, a, b = stats.align(ours, theirs)
    assert ids == ["a", "b"] and list(a - b) == [0.5, 1.0]
    one = stats.compare({"a": 1.0}, {"a": 0.0}, "NLL", higher_is_better=False)
    assert one.n == 1 and math.isnan(one.lo) and one.verdict == stats.TOO_FEW
    assert one.to_dict()["lo"] is None
    none = stats.compare({"a": 1.0}, {"b": 0.0}, "NLL", higher_is_better=False)
    assert none.n == 0 and none.verdict == stats.TOO_FEW and "n = 0" in none.line()


def test_seeds_are_pooled_per_item_before_the_bootstrap():
    seed_a = {"x": 1.0, "y": 3.0, "z": 5.0}
    seed_b = {"x": 3.0, "y": 5.0, "w": 0.0}
    pooled, n = stats.pool_seeds([seed_a, seed_b])
    assert n == 2 and pooled == {"x": 2.0, "y": 4.0}  # z and w are not in every seed
    result = stats.compare([seed_a, seed_b], {"x": 1.0, "y": 1.0}, "NLL", higher_is_better=False)
    assert (result.n, result.delta, result.seeds) == (2, 2.0, (2, 1))


def test_verdict_words_and_lines_round_trip():
    assert stats.verdict(0.1, 0.3, higher_is_better=True) == stats.BETTER
    assert stats.verdict(0.1, 0.3, higher_is_better=False) == stats.WORSE
    assert stats.verdict(-0.3, -0.1, higher_is_better=False) == stats.BETTER
    assert stats.verdict(-0.1, 0.0, higher_is_better=False) == stats.NO_DIFFERENCE
    result = stats.compare(items([1, 2, 3, 4]), items([2, 3, 4, 5]), "NLL", higher_is_better=False,
                           partner="random 10%")
    assert stats.from_dict(result.to_dict()) == result
    line = stats.verdict_lines([result.to_dict()], "superfilter 10% vs random 10%")[0]
    assert line.startswith("- superfilter 10% vs random 10%: NLL, lower is better: Δ = −1.0000 [−1.0000, −1.0000]")
    assert line.endswith("**better**")


def test_the_eval_summary_and_tracker_show_every_suites_verdict(tmp_path):
    from eval.registry import Context, Result
    from eval.settings import EvalSettings
    from eval.stage import mirror, summary_markdown

    comparison = stats.compare(items([1.0, 1.1, 0.9, 1.2]), items([1.5, 1.6, 1.4, 1.8]), "reference NLL x (nats/token)",
                               higher_is_better=False, partner="random 10%").to_dict()
    results = {"reference_nll": Result(result={}, metrics={"x": {"nll_mean": 1.05}, stats.PAIRED: [comparison]}),
               "open_llm": Result(result={}, metrics={"average": 0.3}, summary=["### Open LLM"])}
    ctx = Context(tmp_path, tmp_path, EvalSettings(), "cpu", tmp_path, tmp_path, "superfilter 10%", "random 10%")
    text = summary_markdown(ctx, results, 1.0)
    assert "### Paired comparisons" in text
    line = next(line for line in text.splitlines() if line.startswith("- superfilter 10% vs random 10%: "))
    assert "reference NLL x (nats/token), lower is better: Δ = −0.5250 [" in line and line.endswith("**better**")

    class Tracker:
        def __init__(self):
            self.tables = {}

        def log(self, values):
            pass

        def table(self, name, columns, rows):
            self.tables[name] = (columns, rows)

    tracker = Tracker()
    mirror(tracker, results)
    columns, rows = tracker.tables[stats.PAIRED]
    assert dict(zip(columns, rows[0], strict=True))["verdict"] == "better" and rows[0][0] == "reference_nll"


def _tiny_trained(root, name: str, seed: int):
    import json

    from superfilter.models import build_tiny_model

    folder = root / "train" / name
    build_tiny_model("llama", folder / "model", seed=seed)
    (folder / "model" / "superfilter_train.json").write_text(json.dumps({"template": "alpaca"}))
    (folder / "config.json").write_text(json.dumps({"stage": "train", "key": name * 8}))
    return folder


@pytest.mark.slow
def test_lm_eval_pairs_two_models_per_document_and_runs_each_model_once(tmp_path, monkeypatch):
    import json

    from eval.config import EvalConfig
    from eval.stage import eval_stage
    from eval.suites import lm_eval
    from superfilter.runtime import RuntimeConfig
    from superfilter.tracking import StageRun

    ours, theirs = _tiny_trained(tmp_path, "ours", 1), _tiny_trained(tmp_path, "theirs", 2)
    cfg = EvalConfig(suites=["lm_eval"], reference="random")
    cfg.lm_eval = lm_eval.LmEvalConfig(tasks=[lm_eval.LmEvalTask("hellaswag_local", num_fewshot=0, limit=4,
                                                                    metric="acc_norm,none")],
                                       source="local", paired=True)
    out = tmp_path / "eval" / "a.partial"
    metrics = eval_stage(ours, theirs, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    (comparison,) = metrics["lm_eval"][stats.PAIRED]
    assert comparison["n"] == 4 and comparison["measure"] == "hellaswag_local acc_norm,none"
    rows = [json.loads(line) for line in (out / "eval" / "lm_eval" / "hellaswag_local.jsonl").read_text().splitlines()]
    partner = [json.loads(line) for line in
               (out / "eval" / "lm_eval" / "hellaswag_local.reference.jsonl").read_text().splitlines()]
    assert len(rows) == len(partner) == 4 and {r["value"] for r in rows} <= {0.0, 1.0}
    expected = stats.compare({r["id"]: r["value"] for r in rows}, {r["id"]: r["value"] for r in partner},
                             comparison["measure"], higher_is_better=True, partner=comparison["partner"])
    assert comparison == expected.to_dict()
    assert sum(r["value"] for r in rows) / 4 == pytest.approx(metrics["lm_eval"]["hellaswag_local"]["value"])

    def no_run(*args, **kwargs):
        raise AssertionError("an entry cached for this model ran again")

    monkeypatch.setattr(lm_eval, "run_entries", no_run)
    again = eval_stage(ours, theirs, cfg, RuntimeConfig(device="cpu"), tmp_path / "eval" / "b.partial",
                       StageRun(None, "eval"))
    assert again["lm_eval"] == metrics["lm_eval"]
