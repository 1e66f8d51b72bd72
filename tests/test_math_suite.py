"""The math suite: answer extraction, the math-verify comparison on the shipped gold answers and hand-written outputs,
the prompts, data loading and a run of one problem per benchmark on a tiny model."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from eval.config import EvalConfig
from eval.metrics.math_answers import extract_answer, gold_text, is_equivalent, last_boxed, score
from eval.stage import check, eval_stage
from eval.suites import math as suite
from eval.suites.math import BENCHMARKS, MathConfig
from superfilter.errors import ConfigError, DataError
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

PROJECT = Path(__file__).resolve().parents[1]
SHIPPED = {"aime24": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675}
needs_math_verify = pytest.mark.skipif(
    importlib.util.find_spec("math_verify") is None,
    reason="the math extra (math-verify) is not installed: pip install 'superfilter[math]'")


def _cfg(**options) -> EvalConfig:
    cfg = EvalConfig(suites=["math"], reference="none")
    cfg.math = MathConfig(**options)
    return cfg


def test_the_last_boxed_answer_is_extracted_with_nested_braces():
    assert last_boxed("first \\boxed{1}, then \\boxed{\\frac{1}{2}} and text") == "\\frac{1}{2}"
    assert last_boxed("so $\\fbox{x^{2}}$") == "x^{2}"
    assert last_boxed("the result is $\\boxed 5$.") == "5"
    assert last_boxed("cut off at \\boxed{\\frac{1}{") is None
    assert last_boxed("no box here") is None


@pytest.mark.parametrize(("output", "answer", "how"), [
    ("Work... so $x = \\boxed{\\dfrac{3}{4}}$. Done.", "\\dfrac{3}{4}", "boxed"),
    ("Final Answer: The final answer is $12$. I hope it is correct.", "12", "minerva"),
    ("18 - 3 = 15 chickens.\nThe answer is: 15", "15", "answer_is"),  # MetaMathQA's ending
    ("so the final answer is 2\\sqrt{2}.\n\nQuestion: next", "2\\sqrt{2}", "answer_is"),
    ("She pays 1,250 dollars, then 3,400 more.", "3400", "last_number"),
    ("I do not know.", "", "none"),
])
def test_extraction_follows_the_toolkit_order(output, answer, how):
    assert extract_answer(output) == (answer, how)


def test_reference_answers_become_text():
    assert gold_text(27.0) == "27"  # AMC23 stores answers as JSON numbers
    assert gold_text(0.5) == "0.5"
    assert gold_text(["$\\frac{1}{2}$", "other"]) == "\\frac{1}{2}"  # OlympiadBench's final_answer list
    assert gold_text("$2^{1009}$") == "2^{1009}"


def test_numbers_are_compared_numerically():
    assert is_equivalent("27", gold_text(27.0)) and is_equivalent("27.0", "27") and is_equivalent("27.00", "27")
    assert is_equivalent("58500", "58,500") and is_equivalent("4.5\\times10^{33}", "4.5e33")
    # The toolkit's relative tolerance, 1e-4, for non-integers.
    assert is_equivalent("1.60012", "1.6") and not is_equivalent("1.61", "1.6")
    assert not is_equivalent("13536", "13535")  # integers must match exactly
    assert not is_equivalent("2.88e-20", "2.88e-19") and not is_equivalent("", "5")


@needs_math_verify
@pytest.mark.parametrize(("output", "gold", "correct"), [
    ("so $p = \\boxed{\\dfrac{1}{2}}$", "\\frac{1}{2}", True),
    ("$\\boxed{\\frac12}$", "0.5", True),
    ("$\\boxed{\\frac{2}{4}}$", "\\frac{1}{2}", True),
    ("$\\boxed{\\frac{1}{3}}$", "\\frac{1}{2}", False),
    ("The length is $\\boxed{5\\text{ cm}}$.", "5", True),  # a unit
    ("$\\boxed{12 \\mbox{ inches}^2}$", "12", True),
    ("$\\boxed{\\$18.90}$", "18.90", True),
    ("$\\boxed{10\\%}$", "10", True),
    ("$\\boxed{\\text{Evelyn}}$", "\\text{Evelyn}", True),  # \text{}
    ("$\\boxed{Evelyn}$", "\\text{Evelyn}", True),
    ("$\\boxed{\\text{Bob}}$", "\\text{Evelyn}", False),
    ("$\\boxed{(-\\infty, 3]}$", "(-\\infty,3]", True),  # intervals
    ("$\\boxed{(-\\infty, 3)}$", "(-\\infty,3]", False),
    ("$\\boxed{[2,5)}$", "[2,5)", True),
    ("$\\boxed{(-\\infty,-5)\\cup(-5,5)}$", "(-\\infty,-5)\\cup(-5,5)", True),
    ("$\\boxed{-2, 1}$", "1, -2", True),  # multiple answers, in any order
    ("$x = 1$ or $x = -2$, so $\\boxed{x=1 \\text{ or } x=-2}$", "-2, 1", True),
    ("$\\boxed{1, 2}$", "1, -2", False),
    ("$\\boxed{(1,8,19), (2,7,13), (4,5,7)}$", "(1,8,19),(2,7,13),(4,5,7)", True),
    ("The angle is $\\boxed{90^\\circ}$.", "90", True),  # degrees
    ("$\\boxed{90}$", "90^\\circ", True),
    ("$\\boxed{45^{\\circ}}$", "90^\\circ", False),
    ("$\\boxed{2\\pi}$", "2 \\pi", True),  # pi
    ("$\\boxed{\\frac12\\pi}$", "\\frac{\\pi}{2}", True),
    ("$\\boxed{\\pi}$", "\\frac{\\pi}{2}", False),
    ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$", "(3,\\frac{\\pi}{2})", True),
    ("$\\boxed{\\frac{1}{2(n+1)}}$", "\\frac{1}{2 n+2}", True),  # algebraic equivalence
    ("$\\boxed{2^{1010}}$", "2^{1009}", False),
])
def test_hand_written_outputs_are_scored_as_mathematical_objects(output, gold, correct):
    assert score(output, gold).correct is correct


def _perturbed(gold: str) -> str:
    """A wrong answer: a number moved by at least its size, else its first integer plus one, else the answer + 1."""
    try:
        value = float(gold.replace(",", ""))
        return repr(value + max(1.0, abs(value)))
    except ValueError:
        pass
    number = re.search(r"\d+", gold)
    if number:
        return f"{gold[:number.start()]}{int(number.group()) + 1}{gold[number.end():]}"
    return f"{gold}+1"


@pytest.mark.slow
@needs_math_verify
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_shipped_gold_answers_score_100_and_perturbed_answers_0(name):
    problems = suite.load_local(PROJECT / "data" / "eval" / name / "test.jsonl")
    assert len(problems) == SHIPPED[name]
    gold = [score(f"Reasoning ... so the answer is $\\boxed{{{p.answer}}}$.", p.answer).correct for p in problems]
    assert sum(gold) == len(problems), [p.answer for p, ok in zip(problems, gold, strict=True) if not ok][:5]
    wrong = [p.answer for p in problems if is_equivalent(_perturbed(p.answer), p.answer)]
    assert wrong == []


def test_shipped_copies_equal_the_shared_files(shared_data):
    for name, count in SHIPPED.items():
        shipped = suite.load_local(PROJECT / "data" / "eval" / name / "test.jsonl")
        shared = suite.load_local(shared_data / "eval" / name / "test.jsonl")
        assert len(shipped) == count and shipped == shared, name


def test_prompts_are_the_toolkits():
    boxed = suite.instruction("What is 1+1?", "boxed", [])
    assert boxed == "What is 1+1?\nPlease reason step by step, and put your final answer within \\boxed{}."
    shots = suite.shots(MathConfig(num_fewshot=2), "aime24")
    fewshot = suite.instruction("What is 1+1?", "fewshot", shots)
    assert fewshot.startswith(f"Question: {shots[0][0]}\nAnswer: Let's think step by step\n")
    assert fewshot.endswith("\n\n\nQuestion: What is 1+1?\nAnswer:") and fewshot.count("Question:") == 3
    assert suite.shots(MathConfig(), "minerva_math")[1][1].endswith("\\boxed{24}.$")  # Minerva's own four shots
    # A few-shot answer ends where the model starts the next question.
    assert suite.answer_text("so \\boxed{2}.\n\nQuestion: 3+3?\nAnswer: \\boxed{6}", "fewshot") == "so \\boxed{2}."
    assert score(suite.answer_text("The answer is 2\n\nQuestion: x\nAnswer: 6", "fewshot"), "2").correct


def test_hub_rows_use_each_datasets_fields(monkeypatch):
    import datasets

    rows = {"math-ai/olympiadbench": [{"question": "Find n.", "final_answer": ["$2n$"], "id": 7}],
            "math-ai/amc23": [{"question": "How far?", "answer": 27.0}]}
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split: rows[path])
    assert suite.load_hub("olympiadbench") == [suite.Problem("7", "Find n.", "2n")]
    assert suite.load_hub("amc23", limit=1) == [suite.Problem("0", "How far?", "27")]


def test_bad_settings_and_data_fail_in_one_line(tmp_path):
    for options, message in (({"benchmarks": ["gsm8k"]}, "eval.math.benchmarks: unknown"),
                             ({"prompt": "cot"}, "eval.math.prompt"), ({"benchmarks": []}, "is empty"),
                             ({"num_fewshot": 0}, "num_fewshot"), ({"limit": -1}, "eval.math.limit")):
        with pytest.raises(ConfigError, match=message):
            _cfg(**options).validate()
    bad = tmp_path / "aime24" / "test.jsonl"
    bad.parent.mkdir()
    bad.write_text('{"problem": "p", "answer": "1"}\n{"problem": "q"}\n')
    with pytest.raises(DataError, match=r"aime24/test.jsonl:2: field 'answer'"):
        suite.load_local(bad)
    # Offline (tests run with HF_HUB_OFFLINE=1), a benchmark with no local copy stops before any model loads.
    with pytest.raises(DataError, match="amc23 is not in .* and the Hub is unreachable"):
        check(_cfg(benchmarks=["aime24", "amc23"], data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="needs at least 9 examples"):
        check(_cfg(prompt="fewshot", num_fewshot=9))


@pytest.mark.slow
@needs_math_verify
@pytest.mark.parametrize("prompt", ["boxed", "fewshot"])
def test_one_problem_of_each_benchmark_on_a_tiny_model(prompt, tiny_train_folder, tmp_path):
    cfg = _cfg(limit=1, prompt=prompt)
    cfg.generation.max_new_tokens = 8
    out = tmp_path / "eval" / "m.partial"
    metrics = eval_stage(tiny_train_folder, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    assert set(metrics["math"]) == {*BENCHMARKS, "average"}
    result = json.loads((out / "eval" / "math.json").read_text())
    assert result["template"] == "alpaca" and result["prompt"] == prompt and result["limit"] == 1
    for name in BENCHMARKS:
        (record,) = [json.loads(line) for line in (out / "eval" / "math" / f"{name}.jsonl").read_text().splitlines()]
        assert {"id", "problem", "gold", "output", "answer", "found_by", "correct"} <= set(record)
        assert result["benchmarks"][name]["n"] == 1 and result["benchmarks"][name]["source"] == "local"
    summary = (out / "eval" / "summary.md").read_text()
    assert "| Minerva-Math | 1 |" in summary and "answers were cut at 8 new tokens" in summary
