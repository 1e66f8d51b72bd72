"""Pairwise protocol: score parsing, the win/tie/lose rule, winning score, replay of the authors' review logs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval.commands import pairwise as command
from eval.judge import JudgeRequest, ReplayJudge, judge_all
from eval.metrics import pairwise
from eval.metrics.pairwise import PROMPT_FIELDS, Tally, load_test_set, outcome, parse_scores, tally_reviews

PROJECT_DATA = Path(__file__).resolve().parents[1] / "data" / "pairwise_test_sets"
SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")

# (forward = (model, reference) with the model first, reverse = (reference, model) with the reference first)
NINE = [
    ((8, 6), (6, 8), "win"),  # wins both orders
    ((8, 6), (7, 7), "win"),  # wins, then ties
    ((7, 7), (6, 8), "win"),  # ties, then wins
    ((5, 9), (9, 5), "lose"),  # loses both
    ((5, 9), (7, 7), "lose"),  # loses, then ties
    ((7, 7), (9, 5), "lose"),  # ties, then loses
    ((8, 6), (8, 6), "tie"),  # wins first order, loses the second (position bias)
    ((6, 8), (6, 8), "tie"),  # loses first order, wins the second
    ((7, 7), (7, 7), "tie"),  # ties both
]


@pytest.mark.parametrize(("forward", "reverse", "expected"), NINE)
def test_all_nine_order_combinations(forward, reverse, expected):
    assert outcome(forward, reverse) == expected


def test_tie_margin_treats_close_expected_scores_as_ties():
    assert outcome((7.2, 7.0), (7.1, 7.3), tie_margin=0.5) == "tie"
    assert outcome((7.8, 7.0), (7.1, 7.3), tie_margin=0.5) == "win"
    assert outcome((7.2, 7.0), (7.1, 7.3)) == "win"  # margin 0: the paper's exact rule


@pytest.mark.parametrize(("review", "scores"), [
    ("8 9\nbecause", (8.0, 9.0)), ("8,9", (8.0, 9.0)), ("8, 9", (8.0, 9.0)), (" 7.5 6 \nx", (7.5, 6.0)),
    ("Scores: 8 9", None), ("8", None), ("", None), ("8 9 10", None), ("\n8 9", None),
])
def test_parse_scores_reads_only_a_first_line_of_two_numbers(review, scores):
    assert parse_scores(review) == scores


def test_winning_score_and_unparseable_reviews_are_counted_not_tied():
    reviews = [("a", "8 6", "6 8"), ("b", "5 9", "9 5"), ("c", "7 7", "7 7"), ("d", "I cannot judge", "6 8"),
               ("e", "8 6", None)]
    tally = tally_reviews("vicuna", reviews)
    assert (tally.win, tally.tie, tally.lose, tally.unparseable) == (1, 1, 1, 2)
    assert tally.unparseable_ids == ["d", "e"]
    assert tally.n == 3 and tally.winning_score == pytest.approx((1 - 1) / 3 + 1)
    assert math.isnan(Tally("empty").winning_score)
    total = pairwise.pooled([tally, Tally("koala", win=4, tie=1, lose=0)])
    assert (total.win, total.n, total.unparseable) == (5, 8, 2)
    assert total.winning_score == pytest.approx((5 - 1) / 8 + 1)


def test_shipped_test_sets_load_with_their_sizes_and_inputs():
    sizes = {name: len(load_test_set(name, PROJECT_DATA)) for name in SETS}
    assert sizes == {"vicuna": 80, "koala": 180, "wizardlm": 218, "sinstruct": 252, "lima": 300}
    sinstruct = load_test_set("sinstruct", PROJECT_DATA, limit=3)
    assert len(sinstruct) == 3 and sinstruct[0].input and sinstruct[0].input in sinstruct[0].question
    assert all(p.instruction.strip() for name in SETS for p in load_test_set(name, PROJECT_DATA, limit=5))


def test_malformed_test_set_names_file_line_and_field(tmp_path):
    (tmp_path / "koala_test_set.jsonl").write_text('{"prompt": "ok"}\n{"id": 3}\n')
    with pytest.raises(Exception, match=r"koala_test_set.jsonl:2: field 'prompt'"):
        load_test_set("koala", tmp_path)


def _independent_count(records: list[dict]) -> tuple[int, int, int]:
    """W/T/L from the logs' own parsed score fields, written without the module's helpers."""
    win = tie = lose = 0
    for r in records:
        a1, a2 = json.loads(r["scores"])  # Answer1 first
        b2, b1 = json.loads(r["scores_reverse"])  # Answer2 first
        net = (a1 > a2) - (a1 < a2) + (b1 > b2) - (b1 < b2)
        win, tie, lose = win + (net > 0), tie + (net == 0), lose + (net < 0)
    return win, tie, lose


@pytest.mark.assets
def test_replay_of_the_gpt35_logs_equals_an_independent_count(shared_data):
    logs = sorted((shared_data / "judge_logs").glob("*_wrap_reviews_gpt3.5.json"))
    assert len(logs) == 5
    judge = ReplayJudge(logs)
    totals = [0, 0, 0]
    for log_file in logs:
        name = log_file.name.split("_")[0]
        records = json.loads(log_file.read_text())["data"]
        # Requests as an evaluation would make them: Answer1 = the model under test, shown first, then second.
        question = PROMPT_FIELDS[name]
        requests = [JudgeRequest("scores", r[question], r["Answer1"], r["Answer2"], "model_first") for r in records]
        requests += [JudgeRequest("scores", r[question], r["Answer2"], r["Answer1"], "reference_first")
                     for r in records]
        annotations, summary = judge_all(judge, requests, caches=[])
        n = len(records)
        reviews = [(str(i), f.raw, r.raw) for i, (f, r) in enumerate(zip(annotations[:n], annotations[n:],
                                                                          strict=True))]
        tally = tally_reviews(name, reviews)
        expected = _independent_count(records)
        assert (tally.win, tally.tie, tally.lose) == expected, log_file.name
        assert tally.unparseable == 0 and summary["unparseable"] == 0
        totals = [t + e for t, e in zip(totals, expected, strict=True)]
    assert sum(totals) == 80 + 180 + 218 + 252 + 300


@pytest.mark.assets
def test_cli_recomputes_wtl_from_review_logs(shared_data, tmp_path, capsys):
    logs = sorted((shared_data / "judge_logs").glob("*_wrap_reviews_gpt3.5.json"))
    chart = tmp_path / "wtl.png"
    assert command.main([*map(str, logs), "--json", "--plot", str(chart)]) == 0
    result = json.loads(capsys.readouterr().out)
    counts = [_independent_count(json.loads(f.read_text())["data"]) for f in logs]
    assert result["overall"]["win"] == sum(c[0] for c in counts)
    assert result["overall"]["lose"] == sum(c[2] for c in counts)
    assert chart.stat().st_size > 1000


def _authors_finds(folder: Path, task: str, api_model: str) -> Path | None:
    """The file the authors' review_eval_score.py picks for one task: the last match while walking the folder."""
    tag = "reviews_gpt3.5" if "gpt-3.5" in api_model else "reviews_gpt4" if "gpt-4" in api_model else None
    found = None
    for f in sorted(p.name for p in folder.iterdir()):
        if tag and tag in f and f.endswith(".json") and task.lower() in f:
            found = folder / f
    return found


@pytest.mark.parametrize("judge, tag", [("gpt-4-0613", "gpt4"), ("gpt-3.5-turbo", "gpt3.5"),
                                        ("smollm2_135m_instruct", "smollm2_135m_instruct"), ("fake", "fake")])
def test_review_logs_are_named_as_the_authors_script_finds_them(tmp_path, judge, tag):
    for name in SETS:
        (tmp_path / pairwise.review_log_name(name, judge)).write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}_wrap_reviews_{tag}.json" for n in SETS)
    for task in ("Vicuna", "Koala", "WizardLM", "SInstruct", "LIMA"):  # the script's default task list
        found = _authors_finds(tmp_path, task, judge)
        assert (found is not None) == judge.startswith("gpt"), task
        if found is not None:
            assert found.name.startswith(task.lower())


@pytest.mark.assets
def test_review_log_meta_info_matches_the_authors_averages(shared_data):
    checked = 0
    for log_file in sorted((shared_data / "judge_logs").glob("*_wrap_reviews_gpt3.5.json")):
        payload = json.loads(log_file.read_text())
        name = payload["Meta_Info"]["dataset_name"]
        ours = pairwise.review_log(name, payload["data"], {})["Meta_Info"]
        assert ours["dataset_name"] == name
        if any(r[k] == "[-1, -1]" for r in payload["data"] for k in ("scores", "scores_reverse")):
            continue  # the authors averaged their -1 markers in; ours leaves unreadable reviews out
        for key in ("average_scores", "average_scores_reverse"):
            theirs = json.loads(payload["Meta_Info"][key])
            assert json.loads(ours[key]) == pytest.approx(theirs, abs=1e-9), (log_file.name, key)
        checked += 1
    assert checked >= 1


def test_cli_fails_in_one_line_on_a_missing_or_foreign_file(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    records.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "z", "output": "w"}\n')
    not_a_log = tmp_path / "list.json"
    not_a_log.write_text("[]")
    for path, message in [(tmp_path / "missing.json", "missing.json: cannot read review log"),
                          (records, "records.jsonl: cannot read review log"),
                          (not_a_log, "the authors' review log format")]:
        assert command.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m eval.commands.pairwise: error: "), err
        assert message in err and err.count("\n") == 1, err
