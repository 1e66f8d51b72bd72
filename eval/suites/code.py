"""Suite `code`: HumanEval(+) and MBPP(+) with evalplus, BigCodeBench-Complete and -Instruct with bigcodebench; pass@1.

Greedy answers, in the model's training template, to the prompt the packages give chat models; the package's
sanitizer keeps the code; its checks run the programs (eval.metrics.code_benchmarks), which happens only with
eval.code.allow_code_execution=true. Per-task outputs, sanitized solutions and statuses go to
eval/code/<benchmark>.jsonl, in the packages' sample format ({task_id, solution}), so their own tools can re-check them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from eval import harness
from eval.generation import Prompt
from eval.metrics import code_benchmarks as bench
from eval.registry import Context, Prompts, Result, Suite, register
from superfilter.artifacts import write_jsonl
from superfilter.data import resolve_path
from superfilter.errors import ConfigError, DataError, check_limit, one_of

log = logging.getLogger(__name__)

ITEMS_DIR = "code"  # eval/code/<benchmark>.jsonl
SUBSETS = ("full", "hard")
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


@dataclass
class CodeConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("workers",)  # how many at once, not what is measured

    benchmarks: list[str] = field(default_factory=lambda: list(bench.BENCHMARKS))
    # Runs model-written programs (in child processes with time and memory limits, not a container): opt in.
    allow_code_execution: bool = False
    limit: int = 0  # first N tasks per benchmark; 0 = eval.limit
    # Local release files (the packages' formats); empty = evalplus's GitHub release, BigCodeBench's Hub dataset.
    humaneval_plus_path: str = ""
    mbpp_plus_path: str = ""
    bigcodebench_path: str = ""
    bigcodebench_subset: str = "full"  # full (1,140 tasks) | hard (148)
    timeout_s: float = 240.0  # per BigCodeBench program (its default); evalplus scales its own from the reference
    workers: int = 0  # programs checked at once; 0 = half the CPU cores, as both packages


def validate(cfg: CodeConfig, eval_cfg: Any) -> None:
    if not cfg.benchmarks:
        raise ConfigError(f"eval.code.benchmarks is empty: name some of {list(bench.BENCHMARKS)}")
    one_of("eval.code.benchmarks", cfg.benchmarks, bench.BENCHMARKS)
    one_of("eval.code.bigcodebench_subset", [cfg.bigcodebench_subset], SUBSETS)
    check_limit("eval.code.limit", cfg.limit)
    if cfg.timeout_s <= 0 or cfg.workers < 0:
        raise ConfigError("eval.code.timeout_s must be > 0 and eval.code.workers >= 0 (0 = half the CPU cores)")


def path_of(cfg: CodeConfig, name: str) -> str:
    setting = cfg.bigcodebench_path if name in bench.BIGCODEBENCH else getattr(cfg, f"{name}_path")
    return str(resolve_path(setting)) if setting else ""


def preflight(cfg: CodeConfig, eval_cfg: Any) -> None:
    """Execution allowed, the packages installed, every benchmark's tasks readable (local file, package cache, or
    reachable): at the start of the run, before any training."""
    if not cfg.allow_code_execution:
        raise ConfigError("eval.suites=[code] executes model-written programs; allow it with "
                          "eval.code.allow_code_execution=true (preferably inside a container)")
    for name in cfg.benchmarks:
        bench.check_installed(name)
        path = path_of(cfg, name)
        key = "bigcodebench_path" if name in bench.BIGCODEBENCH else f"{name}_path"
        if path:
            if not os.path.isfile(path):
                raise DataError(f"eval.code.{key}: {path} does not exist")
        elif not _cached(cfg, name) and not _reachable(name):
            where = "the Hub" if name in bench.BIGCODEBENCH else "GitHub (evalplus's release)"
            raise DataError(f"eval.code: {name} is neither cached nor reachable from {where}; set "
                            f"eval.code.{key}=<release file>")


def _cached(cfg: CodeConfig, name: str) -> bool:
    """Whether the package already holds the release in its cache folder (it then reads no network)."""
    if name in bench.EVALPLUS:
        # deferred: evalplus is the optional `code` extra
        from evalplus.data.humaneval import HUMANEVAL_PLUS_VERSION
        from evalplus.data.mbpp import MBPP_PLUS_VERSION
        from evalplus.data.utils import get_dataset_metadata

        release, version = (("HumanEvalPlus", HUMANEVAL_PLUS_VERSION) if name == "humaneval_plus"
                            else ("MbppPlus", MBPP_PLUS_VERSION))
        return os.path.isfile(get_dataset_metadata(release, version, False)[1])
    # deferred: bigcodebench is the optional `code` extra
    from bigcodebench.data.bigcodebench import BIGCODEBENCH_VERSION
    from bigcodebench.data.utils import get_dataset_metadata as bigcodebench_metadata

    return os.path.isfile(bigcodebench_metadata(BIGCODEBENCH_VERSION, cfg.bigcodebench_subset)[1])


def _reachable(name: str, timeout_s: float = 3.0) -> bool:
    if name in bench.BIGCODEBENCH:
        return harness.hub_reachable(timeout_s)
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in OFFLINE_FLAGS):
        return False
    try:
        return httpx.head("https://github.com/evalplus", timeout=timeout_s).status_code < 500
    except httpx.HTTPError:
        return False


def tasks(ctx: Context, cfg: CodeConfig, name: str) -> list[dict[str, Any]]:
    loaded = bench.load_tasks(name, path_of(cfg, name), cfg.bigcodebench_subset)
    limit = ctx.limit(cfg.limit)
    return loaded[:limit] if limit else loaded


def prompts(ctx: Context, cfg: CodeConfig) -> Prompts:
    return Prompts(model={name: [Prompt(f"{name}/{t['task_id']}", bench.user_prompt(name, t))
                                 for t in tasks(ctx, cfg, name)] for name in cfg.benchmarks})


def workers(cfg: CodeConfig) -> int:
    return cfg.workers or max(1, (os.cpu_count() or 2) // 2)


def run(ctx: Context, cfg: CodeConfig) -> Result:
    if not cfg.allow_code_execution:  # preflight refuses earlier; never execute without the flag
        raise ConfigError("eval.code.allow_code_execution=false: no model-written program is run")
    benchmarks: dict[str, dict[str, Any]] = {}
    for name in cfg.benchmarks:
        items, outputs = tasks(ctx, cfg, name), ctx.outputs["code"][name]
        solutions = {t["task_id"]: bench.sanitize(name, output, t["entry_point"])
                     for t, output in zip(items, outputs, strict=True)}
        log.info("code: checking %d %s programs (%d at once)", len(solutions), name, workers(cfg))
        checked = bench.run_checks(name, path_of(cfg, name), cfg.bigcodebench_subset, solutions, cfg.timeout_s,
                                   workers(cfg))
        records = [{"task_id": t["task_id"], "solution": solutions[t["task_id"]], "output": output,
                    **checked[t["task_id"]]} for t, output in zip(items, outputs, strict=True)]
        write_jsonl(ctx.eval_dir / ITEMS_DIR / f"{name}.jsonl", records)
        benchmarks[name] = _rates(name, records)
    metrics = {key: value for b in benchmarks.values() for key, value in b["pass@1"].items()}
    result = {"protocol": {"evalplus": "evalplus 0.3.1 (base and plus tests, its sanitizer)",
                           "bigcodebench": "bigcodebench 0.2.5 (calibrated, its sanitizer)"},
              "greedy": True, "template": ctx.generation_stats.get("model", {}).get("template"),
              "limit": ctx.limit(cfg.limit) or None, "bigcodebench_subset": cfg.bigcodebench_subset,
              "timeout_s": cfg.timeout_s, "benchmarks": benchmarks, "outputs": f"eval/{ITEMS_DIR}/<benchmark>.jsonl"}
    notes = [f"code: first {ctx.limit(cfg.limit)} tasks per benchmark: not comparable to full runs"] \
        if ctx.limit(cfg.limit) else []
    return Result(result=result, metrics=metrics,
                  headline={f"code_{key}": value for key, value in metrics.items() if value is not None},
                  summary=_summary(benchmarks), notes=notes)


def _rates(name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """pass@1 (%) of greedy answers: HumanEval/MBPP on the base tests, the + variants on base and plus tests."""
    n = len(records)

    def rate(flag: str) -> float | None:
        return 100.0 * sum(r[flag] for r in records) / n if n else None

    if name in bench.EVALPLUS:
        base, plus = name.removesuffix("_plus"), name
        return {"n": n, "pass@1": {base: rate("base_passed"), plus: rate("plus_passed")}}
    return {"n": n, "pass@1": {name: rate("passed")}, "timeouts": sum(r["status"] == "timeout" for r in records)}


LABELS = {"humaneval": "HumanEval (base tests)", "humaneval_plus": "HumanEval+ (base + plus tests)",
          "mbpp": "MBPP (base tests)", "mbpp_plus": "MBPP+ (base + plus tests)",
          "bigcodebench_complete": "BigCodeBench-Complete", "bigcodebench_instruct": "BigCodeBench-Instruct"}


def _summary(benchmarks: dict[str, dict[str, Any]]) -> list[str]:
    rows = ["### Code (pass@1, greedy; evalplus and bigcodebench)", "",
            "| benchmark | N | pass@1 (%) |", "|---|---|---|"]
    for b in benchmarks.values():
        for key, value in b["pass@1"].items():
            rows.append(f"| {LABELS[key]} | {b['n']} | {'–' if value is None else f'{value:.1f}'} |")
    return rows


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{LABELS.get(key, key).split(' (')[0]} %": value for key, value in metrics.items()}


register(Suite("code", CodeConfig, run, prompts=prompts, validate=validate, preflight=preflight, report=report,
               description="HumanEval(+), MBPP(+) with evalplus, BigCodeBench with bigcodebench; executes code"))
