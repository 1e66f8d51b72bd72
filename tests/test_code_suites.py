"""The code suite: evalplus (HumanEval+, MBPP+) and bigcodebench checks on fixture tasks with known correct and broken
programs, the sanitizers, the prompts, the opt-in and the refusals before any model loads, and a tiny-model run."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from eval.config import EvalConfig
from eval.metrics import code_benchmarks as bench
from eval.stage import check, eval_stage
from eval.suites.code import CodeConfig
from superfilter.errors import ConfigError, DataError
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "code_tasks"
FILES = {"humaneval_plus": "HumanEvalPlus.jsonl", "mbpp_plus": "MbppPlus.jsonl",
         "bigcodebench_complete": "BigCodeBench.jsonl", "bigcodebench_instruct": "BigCodeBench.jsonl"}


def needs(benchmark: str):
    missing = bench.missing_modules(benchmark)
    return pytest.mark.skipif(bool(missing), reason=f"{bench.package(benchmark)} is not installed ({missing}): "
                                                    f"{bench.INSTALL}")


def _cfg(**options) -> EvalConfig:
    cfg = EvalConfig(suites=["code"], reference="none")
    paths = {"humaneval_plus_path": str(FIXTURES / FILES["humaneval_plus"]),
             "mbpp_plus_path": str(FIXTURES / FILES["mbpp_plus"]),
             "bigcodebench_path": str(FIXTURES / FILES["bigcodebench_complete"])}
    cfg.code = CodeConfig(**{**paths, "workers": 2, "timeout_s": 20.0, **options})
    return cfg


def _tasks(benchmark: str) -> list[dict]:
    return bench.load_tasks(benchmark, str(FIXTURES / FILES[benchmark]))


def _canonical(benchmark: str, task: dict) -> str:
    """The reference program: MBPP+'s solutions are whole, HumanEval+'s complete the prompt, BigCodeBench's the stub."""
    if benchmark in bench.BIGCODEBENCH:
        return task["code_prompt"] + task["canonical_solution"]
    return task["canonical_solution"] if benchmark == "mbpp_plus" else task["prompt"] + task["canonical_solution"]


def _evalplus_programs(benchmark: str) -> dict[str, dict[str, str]]:
    """Per task: the canonical solution, a wrong one, one that never returns."""
    programs = {}
    for task in _tasks(benchmark):
        name = task["entry_point"]
        programs[task["task_id"]] = {"canonical": _canonical(benchmark, task),
                                     "wrong": f"def {name}(*args):\n    return None\n",
                                     "endless": f"def {name}(*args):\n    while True:\n        pass\n"}
    return programs


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(b, marks=needs(b)) for b in bench.EVALPLUS])
def test_evalplus_passes_the_canonical_solutions_and_fails_broken_programs(name):
    programs = _evalplus_programs(name)
    path = str(FIXTURES / FILES[name])
    for kind in ("canonical", "wrong", "endless"):
        checked = bench.run_checks(name, path, "full", {t: p[kind] for t, p in programs.items()}, 20.0, 2)
        assert set(checked) == set(programs)
        for result in checked.values():
            assert result["base_passed"] is result["plus_passed"] is (kind == "canonical"), (kind, result)
            if kind == "endless":
                assert result["base_status"] in ("fail", "timeout")


@pytest.mark.slow
@needs("humaneval_plus")
def test_the_plus_tests_catch_what_the_base_tests_miss():
    task = _tasks("humaneval_plus")[1]  # below_zero; its base inputs never start with a negative deposit
    lenient = "def below_zero(operations):\n    balance = operations[0] if len(operations) > 1 else 0\n" \
              "    for op in operations[1:]:\n        balance += op\n        if balance < 0:\n" \
              "            return True\n    return False\n"
    (checked,) = bench.run_checks("humaneval_plus", str(FIXTURES / FILES["humaneval_plus"]), "full",
                                  {task["task_id"]: lenient}, 20.0, 1).values()
    assert checked["base_passed"] and not checked["plus_passed"] and checked["plus_status"] == "fail"


@pytest.mark.slow
@needs("bigcodebench_complete")
def test_bigcodebench_passes_the_canonical_solutions_and_fails_broken_programs():
    tasks = _tasks("bigcodebench_complete")
    path = str(FIXTURES / FILES["bigcodebench_complete"])
    canonical = {t["task_id"]: _canonical("bigcodebench_complete", t) for t in tasks}
    assert all(r["passed"] and r["status"] == "pass" for r in bench.run_checks(
        "bigcodebench_complete", path, "full", canonical, 20.0, 2).values())
    broken = {tasks[0]["task_id"]: "def task_func(words):\n    return {}\n",
              tasks[1]["task_id"]: "def task_func(text):\n    while True:\n        pass\n"}
    checked = bench.run_checks("bigcodebench_complete", path, "full", broken, 2.0, 2)
    assert checked[tasks[0]["task_id"]]["status"] == "fail"
    assert checked[tasks[0]["task_id"]]["failed_tests"] == ["test_mixed_case", "test_single"]
    assert checked[tasks[1]["task_id"]]["status"] == "timeout" and not checked[tasks[1]["task_id"]]["passed"]


def _sandbox_processes() -> list[int]:
    """Live processes started as the checking sandbox (forks keep its command line)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"eval.metrics.code_benchmarks" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
@needs("bigcodebench_complete")
def test_the_sandbox_session_leaves_no_process_behind(tmp_path):
    """A timed-out BigCodeBench check orphans its sandbox's process manager; the session kill takes it too."""
    task = _tasks("bigcodebench_complete")[1]
    endless = "def task_func(text):\n    while True:\n        pass\n"
    bench.run_checks("bigcodebench_complete", str(FIXTURES / FILES["bigcodebench_complete"]), "full",
                     {task["task_id"]: endless}, 2.0, 1)
    leftovers = _sandbox_processes()
    for _ in range(50):  # killed processes can take a moment to disappear
        if not leftovers:
            break
        time.sleep(0.2)
        leftovers = _sandbox_processes()
    for pid in leftovers:  # never leave them running, whatever the assertion says
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


@pytest.mark.parametrize("name", [pytest.param(b, marks=needs(b)) for b in bench.BENCHMARKS])
def test_chat_answers_are_sanitized_to_the_code_that_passes(name):
    task = _tasks(name)[0]
    code = f"{_canonical(name, task)}\n\nprint({task['entry_point']}.__name__)"
    answer = f"Here is a solution.\n```python\n{code}\n```\nIt is fast."
    sanitized = bench.sanitize(name, answer, task["entry_point"])
    assert f"def {task['entry_point']}(" in sanitized
    assert "Here is" not in sanitized and "print(" not in sanitized and "```" not in sanitized


@pytest.mark.parametrize("name", [pytest.param(b, marks=needs(b)) for b in bench.BENCHMARKS])
def test_prompts_are_the_packages_chat_prompts(name):
    task = _tasks(name)[0]
    prompt = bench.user_prompt(name, task)
    assert prompt.startswith("Please provide a self-contained Python script that solves the following problem in a "
                             "markdown code block:\n")
    if name == "bigcodebench_instruct":
        assert task["instruct_prompt"].strip() in prompt and "```python" not in prompt
    else:
        stub = task["complete_prompt"] if name == "bigcodebench_complete" else task["prompt"]
        assert f"```\n{stub.strip()}\n```\n" in prompt


def test_execution_is_opt_in_and_refused_before_any_model_loads(tmp_path):
    cfg = _cfg()
    assert cfg.code.allow_code_execution is False
    with pytest.raises(ConfigError) as refused:
        eval_stage(tmp_path / "no-model-here", None, cfg, RuntimeConfig(device="cpu"), tmp_path / "out",
                   StageRun(None, "eval"))
    assert "\n" not in str(refused.value) and "eval.code.allow_code_execution=true" in str(refused.value)
    assert not (tmp_path / "out").exists()


@needs("mbpp_plus")
def test_a_missing_release_file_is_refused_in_one_line(tmp_path):
    with pytest.raises(DataError, match="eval.code.mbpp_plus_path: .*nowhere.jsonl does not exist"):
        check(_cfg(allow_code_execution=True, benchmarks=["mbpp_plus"], mbpp_plus_path=str(tmp_path / "nowhere.jsonl")))


def test_a_missing_package_is_refused_with_the_install_command(monkeypatch):
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"bigcodebench_instruct needs bigcodebench \(missing: bigcodebench, .*"
                                          r"pip install 'superfilter\[code\]' && pip install --no-deps"):
        check(_cfg(allow_code_execution=True, benchmarks=["bigcodebench_instruct"]))


@needs("bigcodebench_complete")
def test_offline_without_a_release_file_or_cache_names_the_setting(monkeypatch, tmp_path):
    from bigcodebench.data import utils as bigcodebench_utils

    monkeypatch.setattr(bigcodebench_utils, "CACHE_DIR", str(tmp_path))  # nothing cached
    with pytest.raises(DataError, match="bigcodebench_complete is neither cached nor reachable from the Hub; set "
                                        "eval.code.bigcodebench_path"):
        check(_cfg(allow_code_execution=True, benchmarks=["bigcodebench_complete"], bigcodebench_path=""))


@pytest.mark.parametrize(("options", "message"), [
    ({"benchmarks": ["humaneval"]}, "eval.code.benchmarks: unknown"),
    ({"benchmarks": []}, "is empty"),
    ({"bigcodebench_subset": "tiny"}, "bigcodebench_subset"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"limit": -1}, "eval.code.limit"),
])
def test_bad_settings_fail_at_config_time(options, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(**options).validate()


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(b, marks=needs(b)) for b in bench.BENCHMARKS])
def test_one_task_of_each_benchmark_on_a_tiny_model(name, tiny_train_folder, tmp_path):
    cfg = _cfg(allow_code_execution=True, benchmarks=[name], limit=1)
    cfg.generation.max_new_tokens = 8
    out = tmp_path / "eval" / "c.partial"
    metrics = eval_stage(tiny_train_folder, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    keys = [name.removesuffix("_plus"), name] if name in bench.EVALPLUS else [name]
    assert list(metrics["code"]) == keys and all(v is not None for v in metrics["code"].values())
    (record,) = [json.loads(line) for line in (out / "eval" / "code" / f"{name}.jsonl").read_text().splitlines()]
    assert {"task_id", "solution", "output"} <= set(record)
    result = json.loads((out / "eval" / "code.json").read_text())
    assert result["template"] == "alpaca" and result["benchmarks"][name]["n"] == 1
