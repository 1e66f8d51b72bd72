"""HumanEval+ / MBPP+ with evalplus and BigCodeBench with bigcodebench: their data, prompts, sanitizers and checks.

Both packages run each program in a child process with time and memory limits and dangerous os/shutil calls
disabled (their `reliability_guard`); that is not a container. Here their checks run in a separate Python process in
its own session, killed afterwards with everything it left behind (a timed-out BigCodeBench check orphans the
process manager its sandbox started). evalplus compares a program's outputs with the canonical solution's on the
original (base) and the added (plus) inputs; bigcodebench runs each task's unittest class.
Install: pip install 'superfilter[code]' && pip install --no-deps evalplus==0.3.1 bigcodebench==0.2.5 (their
declared dependencies pull vLLM and API clients, and pin an older protobuf).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import ConfigError, UserError

EVALPLUS = {"humaneval_plus": "humaneval", "mbpp_plus": "mbpp"}  # our name → evalplus's dataset name
BIGCODEBENCH = {"bigcodebench_complete": "complete", "bigcodebench_instruct": "instruct"}  # → its split
BENCHMARKS = (*EVALPLUS, *BIGCODEBENCH)
TITLES = {"humaneval_plus": ("HumanEval", "HumanEval+"), "mbpp_plus": ("MBPP", "MBPP+"),
          "bigcodebench_complete": ("BigCodeBench-Complete",), "bigcodebench_instruct": ("BigCodeBench-Instruct",)}
# The modules each package imports on the paths used here (declared dependencies of the `code` extra).
MODULES = {"evalplus": ("evalplus", "tree_sitter", "tree_sitter_python", "wget", "tempdir", "appdirs", "termcolor",
                        "psutil"),
           "bigcodebench": ("bigcodebench", "tree_sitter", "tree_sitter_python", "wget", "tempdir", "appdirs",
                            "pqdm")}
INSTALL = ("pip install 'superfilter[code]' && pip install --no-deps evalplus==0.3.1 bigcodebench==0.2.5")
# The instruction both packages give chat models (evalplus codegen, bigcodebench generate).
INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
# bigcodebench evaluate's defaults: address space, data and stack limits (MB); the time limit used when the
# canonical solution's own time is not measured (its per-task timeout, 240 s, dominates either way).
BCB_MAX_AS_MB, BCB_MAX_DATA_MB, BCB_MAX_STACK_MB = 30 * 1024, 30 * 1024, 10
BCB_MIN_TIME_S, BCB_GT_TIME_S = 1.0, 20.0
PASS = "pass"
# evalplus's own bound per test set (EVALPLUS_TIMEOUT_PER_TASK) plus its grace seconds, for the sandbox's deadline.
EVALPLUS_TASK_BOUND_S = 2 * (60 + 2)


def package(benchmark: str) -> str:
    return "evalplus" if benchmark in EVALPLUS else "bigcodebench"


def missing_modules(benchmark: str) -> list[str]:
    return [m for m in MODULES[package(benchmark)] if importlib.util.find_spec(m) is None]


def check_installed(benchmark: str) -> None:
    missing = missing_modules(benchmark)
    if missing:
        raise ConfigError(f"eval.code.benchmarks: {benchmark} needs {package(benchmark)} (missing: "
                          f"{', '.join(missing)}): {INSTALL}")


@contextlib.contextmanager
def _override(module: Any, attribute: str, value: str) -> Iterator[None]:
    """The packages' documented *_OVERRIDE_PATH settings, which they read from the environment at import time."""
    if not value:
        yield
        return
    before = getattr(module, attribute)
    setattr(module, attribute, value)
    try:
        yield
    finally:
        setattr(module, attribute, before)


def load_tasks(benchmark: str, path: str = "", subset: str = "full") -> list[dict[str, Any]]:
    """The benchmark's task records, in release order, through the package's own loader: from `path` (a release
    file) when given, else evalplus's GitHub release / BigCodeBench's Hub dataset (cached by the package)."""
    if benchmark in EVALPLUS:
        # deferred: evalplus is the optional `code` extra
        from evalplus.data import get_human_eval_plus, get_mbpp_plus
        from evalplus.data import humaneval as humaneval_data
        from evalplus.data import mbpp as mbpp_data

        if benchmark == "humaneval_plus":
            with _override(humaneval_data, "HUMANEVAL_OVERRIDE_PATH", path):
                return list(get_human_eval_plus().values())
        with _override(mbpp_data, "MBPP_OVERRIDE_PATH", path):
            return list(get_mbpp_plus().values())
    # deferred: bigcodebench is the optional `code` extra
    from bigcodebench.data import bigcodebench as bigcodebench_data
    from bigcodebench.data import get_bigcodebench

    with _override(bigcodebench_data, "BIGCODEBENCH_OVERRIDE_PATH", path):
        return list(get_bigcodebench(subset=subset).values())


def user_prompt(benchmark: str, task: dict[str, Any]) -> str:
    """The user turn the packages build for chat models: the instruction, then the function stub in a code block
    (HumanEval+, MBPP+, BigCodeBench-Complete) or the natural-language task (BigCodeBench-Instruct)."""
    if benchmark == "bigcodebench_instruct":
        return f"{INSTRUCTION_PREFIX}\n{task['instruct_prompt'].strip()}\n"
    stub = task["complete_prompt"] if benchmark == "bigcodebench_complete" else task["prompt"]
    return f"{INSTRUCTION_PREFIX}\n```\n{stub.strip()}\n```\n"


def sanitize(benchmark: str, output: str, entry_point: str) -> str:
    """The package's sanitizer: the code block that defines the entry point and what it needs, prose dropped."""
    if benchmark in EVALPLUS:
        # deferred: evalplus is the optional `code` extra
        from evalplus.sanitize import sanitize as evalplus_sanitize

        return evalplus_sanitize(output, entrypoint=entry_point)
    # deferred: bigcodebench is the optional `code` extra
    from bigcodebench.sanitize import sanitize as bigcodebench_sanitize

    return bigcodebench_sanitize(output, entry_point)


def expected_outputs(benchmark: str, tasks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """evalplus's ground truth: the canonical solution's outputs and times on the base and plus inputs, computed as
    its `get_groundtruth` does (trusted code, in this process), without its pickle cache in the home folder."""
    # deferred: evalplus is the optional `code` extra
    from evalplus.eval._special_oracle import MBPP_OUTPUT_NOT_NONE_TASKS
    from evalplus.gen.util import trusted_exec

    not_none = MBPP_OUTPUT_NOT_NONE_TASKS if benchmark == "mbpp_plus" else []
    expected = {}
    for task in tasks:
        code, entry = task["prompt"] + task["canonical_solution"], task["entry_point"]
        oracle: dict[str, Any] = {}
        for tests in ("base", "plus"):
            oracle[tests], oracle[f"{tests}_time"] = trusted_exec(
                code, task[f"{tests}_input"], entry, record_time=True, output_not_none=entry in not_none)
        expected[task["task_id"]] = oracle
    return expected


def check_evalplus(benchmark: str, task: dict[str, Any], solution: str, expected: dict[str, Any]) -> dict[str, Any]:
    """evalplus's check of one program: base status, plus status (pass / fail / timeout) and pass flags."""
    # deferred: evalplus is the optional `code` extra
    from evalplus.evaluate import check_correctness

    checked = check_correctness(EVALPLUS[benchmark], 0, task, solution, expected, base_only=False, fast_check=True)
    base, plus = checked["base"][0], checked["plus"][0]
    # evalplus counts a program for the plus score only when it passes both test sets.
    return {"base_status": base, "plus_status": plus, "base_passed": base == PASS,
            "plus_passed": base == PASS and plus == PASS}


def check_bigcodebench(task: dict[str, Any], solution: str, timeout_s: float) -> dict[str, Any]:
    """bigcodebench's check of one program, calibrated as its leaderboard is (the task's code_prompt first)."""
    # deferred: bigcodebench is the optional `code` extra
    from bigcodebench import eval as bigcodebench_eval

    program = task["code_prompt"] + "\n    pass\n" + solution
    # untrusted_check reads its per-task timeout from this module constant (its environment override is unusable:
    # it compares a string with a float); every call sets it, so concurrent checks agree.
    bigcodebench_eval.TIMEOUT_LIMIT = timeout_s
    status, details = bigcodebench_eval.untrusted_check(
        program, task["test"], task["entry_point"], BCB_MAX_AS_MB, BCB_MAX_DATA_MB, BCB_MAX_STACK_MB,
        min(BCB_MIN_TIME_S, timeout_s), min(BCB_GT_TIME_S, timeout_s))
    return {"status": status, "passed": status == PASS, "failed_tests": sorted(details)}


def check_all(benchmark: str, path: str, subset: str, solutions: dict[str, str], timeout_s: float,
              workers: int) -> dict[str, dict[str, Any]]:
    """Every solution checked by its package (in this process's children), keyed by task id."""
    tasks = [t for t in load_tasks(benchmark, path, subset) if t["task_id"] in solutions]
    if benchmark in EVALPLUS:
        expected = expected_outputs(benchmark, tasks)

        def one(task: dict[str, Any]) -> dict[str, Any]:
            return check_evalplus(benchmark, task, solutions[task["task_id"]], expected[task["task_id"]])
    else:
        def one(task: dict[str, Any]) -> dict[str, Any]:
            return check_bigcodebench(task, solutions[task["task_id"]], timeout_s)
    # Threads suffice: each check waits on its own child process.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip([t["task_id"] for t in tasks], pool.map(one, tasks), strict=True))


def run_checks(benchmark: str, path: str, subset: str, solutions: dict[str, str], timeout_s: float,
               workers: int) -> dict[str, dict[str, Any]]:
    """check_all in a fresh Python process in its own session; the whole session is killed when it is done."""
    per_task = timeout_s + 2 if benchmark in BIGCODEBENCH else EVALPLUS_TASK_BOUND_S
    deadline = 120 + per_task * -(-len(solutions) // workers)  # startup and ground truth, then rounds of checks
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as scratch:
        request, results, log = (Path(scratch) / name for name in ("request.json", "results.json", "stderr.txt"))
        path = str(Path(path).resolve()) if path else ""  # the sandbox runs in the scratch folder
        request.write_text(json.dumps({"benchmark": benchmark, "path": path, "subset": subset, "solutions": solutions,
                                       "timeout_s": timeout_s, "workers": workers}))
        with open(log, "w") as stderr:
            # stdout is discarded: the sandboxes print what they intercept.
            proc = subprocess.Popen([sys.executable, "-m", "eval.metrics.code_benchmarks", str(request), str(results)],
                                    cwd=scratch, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                    start_new_session=True)
            try:
                proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                pass
            finally:
                _kill_session(proc)
        if proc.returncode != 0 or not results.is_file():
            tail = log.read_text(errors="replace")[-2000:]
            raise UserError(f"eval.code: checking {benchmark} failed (exit status {proc.returncode}, deadline "
                            f"{deadline:.0f} s): {tail.strip().splitlines()[-1] if tail.strip() else 'no output'}")
        return json.loads(results.read_text())


def _kill_session(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGKILL to every process of the sandbox's session, then wait (bounded) until none is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)  # raises once the group is empty
        except ProcessLookupError:
            return
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    """python -m eval.metrics.code_benchmarks REQUEST.json RESULTS.json: the sandbox process run_checks starts."""
    request, results = argv
    r = json.loads(Path(request).read_text())
    checked = check_all(r["benchmark"], r["path"], r["subset"], r["solutions"], r["timeout_s"], r["workers"])
    Path(results).write_text(json.dumps(checked))


if __name__ == "__main__":
    main(sys.argv[1:])
