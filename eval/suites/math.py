"""Suite `math`: AIME24, AMC23, MATH-500, Minerva-Math and OlympiadBench under the Qwen2.5-Math toolkit's protocol.

The toolkit's zero-shot prompt ("... Please reason step by step, and put your final answer within \\boxed{}.") or its
few-shot chain-of-thought prompt ("Question: ...\\nAnswer: ..." shots) in the model's training template, greedy
answers from the stage's generation, the final answer extracted and compared as eval.metrics.math_answers does; per-item
outputs in eval/math/<benchmark>.jsonl, accuracy (%) per benchmark and their unweighted average.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval import harness
from eval.generation import Prompt
from eval.metrics.math_answers import gold_text, score
from eval.registry import Context, Prompts, Result, Suite, register
from superfilter.artifacts import write_jsonl
from superfilter.data import iter_raw_records, resolve_path
from superfilter.errors import ConfigError, DataError, check_limit, one_of

log = logging.getLogger(__name__)

ITEMS_DIR = "math"  # eval/math/<benchmark>.jsonl
SOURCES = ("auto", "local", "hub")
PROMPTS = ("boxed", "fewshot")
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# The toolkit's "cot" prompt: shots and question as "Question: ...\nAnswer: ...", separated by two blank lines; the
# answer stops where the model starts another question.
FEWSHOT_SEPARATOR, FEWSHOT_STOP = "\n\n\n", "\n\nQuestion:"
MIN_TOOLKIT_TOKENS = 2048  # the toolkit's max_tokens_per_call


@dataclass(frozen=True)
class Benchmark:
    title: str
    hub_id: str
    hub_split: str
    problem_field: str  # in the Hub dataset; the shipped copies all use `problem` and `answer`
    answer_field: str
    fewshot: str  # the toolkit's few-shot set for this benchmark (data/eval/math_fewshot.json)


BENCHMARKS = {
    "aime24": Benchmark("AIME24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", "math"),
    "amc23": Benchmark("AMC23", "math-ai/amc23", "test", "question", "answer", "math"),
    "math500": Benchmark("MATH-500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", "math"),
    "minerva_math": Benchmark("Minerva-Math", "math-ai/minervamath", "test", "question", "answer", "minerva_math"),
    "olympiadbench": Benchmark("OlympiadBench", "math-ai/olympiadbench", "test", "question", "final_answer", "math"),
}


@dataclass
class MathConfig:
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    prompt: str = "boxed"  # boxed: zero-shot, the toolkit's instruction | fewshot: its chain-of-thought shots
    num_fewshot: int = 4  # shots of the fewshot prompt
    source: str = "auto"  # auto: <data_dir>/<benchmark>/test.jsonl where present, else the Hub | local | hub
    data_dir: str = "data/eval"
    fewshot_path: str = "data/eval/math_fewshot.json"
    limit: int = 0  # first N problems per benchmark; 0 = eval.limit


@dataclass(frozen=True)
class Problem:
    id: str
    problem: str
    answer: str


def validate(cfg: MathConfig, eval_cfg: Any) -> None:
    if not cfg.benchmarks:
        raise ConfigError(f"eval.math.benchmarks is empty: name some of {list(BENCHMARKS)}")
    one_of("eval.math.benchmarks", cfg.benchmarks, tuple(BENCHMARKS))
    one_of("eval.math.prompt", [cfg.prompt], PROMPTS)
    one_of("eval.math.source", [cfg.source], SOURCES)
    check_limit("eval.math.limit", cfg.limit)
    if cfg.num_fewshot < 1:
        raise ConfigError(f"eval.math.num_fewshot must be >= 1, got {cfg.num_fewshot}")


def preflight(cfg: MathConfig, eval_cfg: Any) -> None:
    """math-verify installed, every benchmark's data reachable, the shots there: before any model loads."""
    if importlib.util.find_spec("math_verify") is None:
        raise ConfigError("eval.suites=[math] compares answers with math-verify: pip install 'superfilter[math]'")
    hub = None
    for name in cfg.benchmarks:
        if source(cfg, name) == "hub":
            hub = harness.hub_reachable() if hub is None else hub
            if not hub:
                raise DataError(f"eval.math: {name} is not in {local_file(cfg, name)} and the Hub is unreachable; "
                                f"set eval.math.data_dir to a folder holding {name}/test.jsonl")
    if cfg.prompt == "fewshot":
        for name in cfg.benchmarks:
            shots(cfg, name)


def local_file(cfg: MathConfig, name: str) -> Path:
    return resolve_path(cfg.data_dir) / name / "test.jsonl"


def source(cfg: MathConfig, name: str) -> str:
    if cfg.source == "auto":
        return "local" if local_file(cfg, name).is_file() else "hub"
    return cfg.source


def load_local(path: Path, limit: int = 0) -> list[Problem]:
    """Problems of a shipped copy (problem, answer; id optional), failing on the first malformed line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (set eval.math.data_dir, or eval.math.source=hub)")
    problems = []
    for line, record in iter_raw_records(path):
        if limit and len(problems) == limit:
            break
        problems.append(_problem(record, "problem", "answer", f"{path}:{line}", len(problems)))
    return problems


def load_hub(name: str, limit: int = 0) -> list[Problem]:
    bench = BENCHMARKS[name]
    # deferred: datasets loads pyarrow and the Hub client; only for benchmarks read from the Hub
    import datasets

    rows = datasets.load_dataset(bench.hub_id, split=bench.hub_split)
    count = min(limit, len(rows)) if limit else len(rows)
    return [_problem(rows[i], bench.problem_field, bench.answer_field, f"{bench.hub_id} row {i}", i)
            for i in range(count)]


def _problem(record: Any, problem_field: str, answer_field: str, where: str, index: int) -> Problem:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    problem, answer = record.get(problem_field), record.get(answer_field)
    if not isinstance(problem, str) or not problem.strip():
        raise DataError(f"{where}: field {problem_field!r} must be a non-empty string")
    if not isinstance(answer, (str, int, float, list)) or not gold_text(answer):
        raise DataError(f"{where}: field {answer_field!r} must be a non-empty answer (string, number or list)")
    identifier = record.get("id", record.get("unique_id", index))  # MATH-500 names its problems by unique_id
    return Problem(str(identifier), problem, gold_text(answer))


def load(cfg: MathConfig, name: str, limit: int = 0) -> list[Problem]:
    if source(cfg, name) == "local":
        return load_local(local_file(cfg, name), limit)
    return load_hub(name, limit)


def shots(cfg: MathConfig, name: str) -> list[tuple[str, str]]:
    """The toolkit's few-shot (question, worked answer) pairs for a benchmark, the first num_fewshot of them."""
    path = resolve_path(cfg.fewshot_path)
    try:
        sets = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"eval.math.fewshot_path: cannot read {path} ({e})") from e
    wanted = BENCHMARKS[name].fewshot
    examples = sets.get(wanted) if isinstance(sets, dict) else None
    if not isinstance(examples, list) or len(examples) < cfg.num_fewshot:
        raise DataError(f"{path}: needs at least {cfg.num_fewshot} examples under {wanted!r} "
                        "(eval.math.num_fewshot)")
    return [(e["question"], e["answer"]) for e in examples[: cfg.num_fewshot]]


def instruction(problem: str, prompt: str, examples: list[tuple[str, str]]) -> str:
    """The user turn: the toolkit's boxed instruction after the problem, or its shots before it."""
    if prompt == "boxed":
        return f"{problem}\n{BOXED_INSTRUCTION}"
    demos = FEWSHOT_SEPARATOR.join(f"Question: {q}\nAnswer: {a}" for q, a in examples)
    return f"{demos}{FEWSHOT_SEPARATOR}Question: {problem}\nAnswer:"


def answer_text(output: str, prompt: str) -> str:
    """The model's answer to this question only: a few-shot answer ends where it starts the next question."""
    return output.split(FEWSHOT_STOP, 1)[0] if prompt == "fewshot" else output


def prompts(ctx: Context, cfg: MathConfig) -> Prompts:
    groups = {}
    for name in cfg.benchmarks:
        examples = shots(cfg, name) if cfg.prompt == "fewshot" else []
        groups[name] = [Prompt(f"{name}/{p.id}", instruction(p.problem, cfg.prompt, examples))
                        for p in load(cfg, name, ctx.limit(cfg.limit))]
    return Prompts(model=groups)


def run(ctx: Context, cfg: MathConfig) -> Result:
    benchmarks: dict[str, dict[str, Any]] = {}
    for name in cfg.benchmarks:
        problems, outputs = load(cfg, name, ctx.limit(cfg.limit)), ctx.outputs["math"][name]
        records = []
        for p, output in zip(problems, outputs, strict=True):
            scored = score(answer_text(output, cfg.prompt), p.answer)
            records.append({"id": p.id, "problem": p.problem, "gold": p.answer, "output": output,
                            "answer": scored.answer, "found_by": scored.how, "correct": scored.correct})
        write_jsonl(ctx.eval_dir / ITEMS_DIR / f"{name}.jsonl", records)
        correct = sum(r["correct"] for r in records)
        benchmarks[name] = {"accuracy": 100.0 * correct / len(records) if records else None, "n": len(records),
                            "correct": correct, "no_answer": sum(r["found_by"] == "none" for r in records),
                            "boxed": sum(r["found_by"] == "boxed" for r in records), "source": source(cfg, name)}
    scores = [b["accuracy"] for b in benchmarks.values() if b["accuracy"] is not None]
    average = sum(scores) / len(scores) if scores else None
    stats = ctx.generation_stats.get("model", {})
    budget = ctx.cfg.generation.max_new_tokens
    result = {"protocol": "Qwen2.5-Math evaluation toolkit", "prompt": cfg.prompt,
              "num_fewshot": cfg.num_fewshot if cfg.prompt == "fewshot" else 0, "template": stats.get("template"),
              "max_new_tokens": budget, "limit": ctx.limit(cfg.limit) or None, "benchmarks": benchmarks,
              "average": average, "outputs": f"eval/{ITEMS_DIR}/<benchmark>.jsonl"}
    notes = []
    if budget < MIN_TOOLKIT_TOKENS:
        notes.append(f"math: answers were cut at {budget} new tokens (the toolkit allows {MIN_TOOLKIT_TOKENS}): "
                     "solutions stopped early lose their final answer")
    if ctx.limit(cfg.limit):
        notes.append(f"math: first {ctx.limit(cfg.limit)} problems per benchmark: not comparable to full runs")
    metrics = {**{name: b["accuracy"] for name, b in benchmarks.items()}, "average": average}
    headline = {f"math_{name}": value for name, value in metrics.items() if value is not None}
    return Result(result=result, metrics=metrics, headline=headline, summary=_summary(cfg, benchmarks, average),
                  notes=notes)


def _summary(cfg: MathConfig, benchmarks: dict[str, dict[str, Any]], average: float | None) -> list[str]:
    prompt = "zero-shot \\boxed{} instruction" if cfg.prompt == "boxed" else f"{cfg.num_fewshot}-shot chain of thought"
    rows = [f"### Math (Qwen2.5-Math toolkit protocol, {prompt}, greedy)", "",
            "| benchmark | N | correct | accuracy (%) | boxed answers | no answer found |", "|---|---|---|---|---|---|"]
    for name, b in benchmarks.items():
        rows.append(f"| {BENCHMARKS[name].title} | {b['n']} | {b['correct']} | {_cell(b['accuracy'])} | {b['boxed']} "
                    f"| {b['no_answer']} |")
    rows.append(f"| average | | | {_cell(average)} | | |")
    return rows


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{BENCHMARKS[name].title} %" if name in BENCHMARKS else "math avg %": value
            for name, value in metrics.items()}


register(Suite("math", MathConfig, run, prompts=prompts, validate=validate, preflight=preflight, report=report,
               description="AIME24, AMC23, MATH-500, Minerva-Math, OlympiadBench: Qwen2.5-Math protocol, accuracy"))
