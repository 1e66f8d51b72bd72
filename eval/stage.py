"""The eval stage: run the configured suites on a trained model; writes eval/*.json into the stage folder."""

from __future__ import annotations

import gc
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eval import alpaca_eval, pairwise
from eval.config import EvalConfig
from eval.generation import Prompt, generate, load_trained
from eval.judge import SMALL_JUDGE_NOTE, AnnotationCache, Judge, JudgeRequest, judge_all, make_judge
from eval.pairwise import PROMPT_FIELDS, Tally, TestPrompt
from superfilter.artifacts import write_json_atomic
from superfilter.data import resolve_path
from superfilter.errors import DataError
from superfilter.runtime import RuntimeConfig, resolve_device
from superfilter.tracking import StageRun

log = logging.getLogger(__name__)


def eval_stage(
    model_dir: Path, reference_dir: Path | None, cfg: EvalConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    started = time.perf_counter()
    cfg.validate()
    device = str(resolve_device(runtime.device))
    out_dir = Path(out_dir)
    # Generations and annotations outlive any one stage folder: <artifact_root>/cache unless told otherwise.
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else out_dir.parent.parent / "cache"
    run = _Run(Path(model_dir), Path(reference_dir) if reference_dir else None, cfg, device, out_dir, cache_root)
    metrics: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        clock = time.perf_counter()
        result = step()
        timings[name] = round(time.perf_counter() - clock, 1)
        return result

    if "pairwise" in cfg.suites or "alpaca_eval" in cfg.suites:
        timed("generation", run.generate_all)
    # Each model is loaded for one phase at a time, so memory holds one of them.
    for suite in ("open_llm", "pairwise", "alpaca_eval"):
        if suite in cfg.suites:
            metrics[suite] = timed(suite, getattr(run, suite))
    if run.judge_summaries:
        write_json_atomic(out_dir / "judge" / "summary.json", run.judge_summaries)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["seconds_by_phase"] = timings
    write_json_atomic(out_dir / "eval" / "generation.json", run.generation_stats)
    table = summary_markdown(run, metrics)
    (out_dir / "eval" / "summary.md").write_text(table)
    log.info("evaluation summary:\n%s", table)
    _mirror(tracker, run, metrics)
    return metrics


def model_label(model_dir: Path) -> str:
    """'<filter> <ratio>' from the train stage's upstream select stage; the folder name when that is unknown."""
    try:
        train_config = json.loads((model_dir / "config.json").read_text())
        select_dir = Path(train_config["upstream"]["select"]["path"])
        params = json.loads((select_dir / "config.json").read_text())["params"]
        return f"{params['filter']['name']} {100 * float(params['ratio']):g}%"
    except (OSError, KeyError, TypeError, ValueError):
        return model_dir.name


class _Run:
    """State shared by the suites of one evaluation: prompts, answers, the judge and what each produced."""

    def __init__(self, model_dir: Path, reference_dir: Path | None, cfg: EvalConfig, device: str, out_dir: Path,
                 cache_root: Path) -> None:
        self.model_dir, self.reference_dir, self.cfg, self.device = model_dir, reference_dir, cfg, device
        self.out_dir, self.cache_root = out_dir, cache_root
        self.model_name = model_label(model_dir)
        self.reference_name = model_label(reference_dir) if reference_dir else "none"
        self.test_sets: dict[str, list[TestPrompt]] = {}
        self.alpaca_reference: list[dict[str, str]] = []
        self.outputs: dict[str, list[str]] = {}  # "<suite>/<set>" → answers in prompt order
        self.reference_outputs: dict[str, list[str]] = {}
        self.generation_stats: dict[str, Any] = {}
        self.judge_summaries: dict[str, Any] = {}
        self.tallies: list[Tally] = []
        self._judge: Judge | None = None
        self.notes: list[str] = []

    # -- generation ---------------------------------------------------------------------------------------------

    def generate_all(self) -> None:
        """One generation pass per model over every prompt the suites need, so each model loads once."""
        if "pairwise" in self.cfg.suites:
            data_dir = resolve_path(self.cfg.pairwise.data_dir)
            limit = self.cfg.suite_limit(self.cfg.pairwise.limit)
            self.test_sets = {name: pairwise.load_test_set(name, data_dir, limit) for name in self.cfg.pairwise.sets}
        if "alpaca_eval" in self.cfg.suites:
            self.alpaca_reference = alpaca_eval.load_reference(
                self._alpaca_reference_path(), self.cfg.suite_limit(self.cfg.alpaca_eval.limit))
        groups = {f"pairwise/{n}": [Prompt(p.id, p.instruction, p.input) for p in ps]
                  for n, ps in self.test_sets.items()}
        if self.alpaca_reference:
            groups["alpaca_eval"] = [Prompt(str(i), r["instruction"]) for i, r in enumerate(self.alpaca_reference)]
        self.outputs = self._generate(self.model_dir, groups, "model")
        if self.test_sets and self.reference_dir is not None:
            pairwise_groups = {k: v for k, v in groups.items() if k.startswith("pairwise/")}
            self.reference_outputs = self._generate(self.reference_dir, pairwise_groups, "reference")

    def _generate(self, model_dir: Path, groups: dict[str, list[Prompt]], role: str) -> dict[str, list[str]]:
        prompts = [p for ps in groups.values() for p in ps]
        answers, stats = generate(model_dir, prompts, self.cfg.generation, self.cache_root, self.device,
                                  self.cfg.batch_size, self.cfg.template)
        self.generation_stats[role] = {"model_dir": str(model_dir), **stats}
        out, start = {}, 0
        for name, ps in groups.items():
            out[name], start = answers[start : start + len(ps)], start + len(ps)
        return out

    def _alpaca_reference_path(self) -> Path:
        version = self.cfg.alpaca_eval.version
        path = resolve_path(self.cfg.alpaca_eval.reference_path or
                            f"data/alpaca_eval/{alpaca_eval.reference_file(version)}")
        if not path.is_file():
            raise DataError(f"{path}: no AlpacaEval {version} reference outputs; only v1's ship in data/alpaca_eval, "
                            "set eval.alpaca_eval.reference_path=<model_outputs.json of the reference>")
        return path

    # -- judging ------------------------------------------------------------------------------------------------

    @property
    def judge(self) -> Judge:
        if self._judge is None:
            self._judge = make_judge(self.cfg.judge, self.device, self.cfg.judge_concurrency,
                                     self.cfg.judge_backoff_s)
        return self._judge

    def _judge_all(self, suite: str, requests: list[JudgeRequest]):
        caches = [AnnotationCache(self.out_dir / "judge" / "annotations.jsonl"),
                  AnnotationCache(self.cache_root / "judge" / "annotations.jsonl")]
        annotations, summary = judge_all(self.judge, requests, caches)
        self.judge_summaries[suite] = summary
        return annotations

    def judge_note(self) -> str:
        if self.cfg.judge.backend == "hf":
            return f"hf judge {self.cfg.judge.model.name}: {SMALL_JUDGE_NOTE}"
        if self.cfg.judge.backend == "openai":
            return f"openai judge {self.cfg.judge.api_model} at {self.cfg.judge.base_url}"
        return f"{self.cfg.judge.backend} judge"

    # -- suites -------------------------------------------------------------------------------------------------

    def pairwise(self) -> dict[str, Any]:
        if self.reference_dir is None:
            result = {"skipped": "eval.reference=none (or the model is its own reference): no pairwise partner"}
            write_json_atomic(self.out_dir / "eval" / "pairwise.json", result)
            self.notes.append("pairwise skipped: no reference model")
            return result
        margin = self.cfg.judge.tie_margin
        tallies: list[Tally] = []
        for name, prompts in self.test_sets.items():
            ours, theirs = self.outputs[f"pairwise/{name}"], self.reference_outputs[f"pairwise/{name}"]
            triples = list(zip(prompts, ours, theirs, strict=True))
            # Every prompt twice: the model's answer shown first, then the reference's [paper §4].
            requests = [JudgeRequest("scores", p.question, a, b, "model_first") for p, a, b in triples]
            requests += [JudgeRequest("scores", p.question, b, a, "reference_first") for p, a, b in triples]
            judged = self._judge_all(f"pairwise/{name}", requests)
            forward, reverse = judged[: len(prompts)], judged[len(prompts) :]
            reviews = [(p.id, f.raw if f.ok else None, r.raw if r.ok else None)
                       for p, f, r in zip(prompts, forward, reverse, strict=True)]
            tallies.append(pairwise.tally_reviews(name, reviews, margin))
            self._write_review_log(name, prompts, ours, theirs, forward, reverse)
        self.tallies = tallies
        total = pairwise.pooled(tallies)
        chart = pairwise.plot_wtl(tallies, self.out_dir / "eval" / "pairwise_wtl.png", self.model_name,
                                  self.reference_name)
        result = {
            "model": self.model_name, "reference": self.reference_name, "judge": self.judge_note(),
            "tie_margin": margin, "limit_per_set": self.cfg.suite_limit(self.cfg.pairwise.limit) or None,
            "sets": {t.name: t.to_dict() for t in tallies}, "overall": total.to_dict(), "chart": chart.name,
            "rule": "both answer orders; win = win both or win one and tie the other, lose likewise, else tie; "
                    "winning score = (W - L) / N + 1; prompts with an unparseable review are left out of N",
        }
        write_json_atomic(self.out_dir / "eval" / "pairwise.json", result)
        if total.unparseable:
            self.notes.append(f"pairwise: {total.unparseable} prompt(s) with an unparseable review, not counted")
        return {"winning_score": total.winning_score, "win": total.win, "tie": total.tie, "lose": total.lose,
                "n": total.n, "unparseable": total.unparseable,
                "sets": {t.name: t.winning_score for t in tallies}}

    def _write_review_log(self, name: str, prompts, ours, theirs, forward, reverse) -> None:
        """judge/<set>_wrap_reviews.json in the authors' format, so `python -m eval.pairwise` recomputes W/T/L."""
        data = [{"id": p.id, PROMPT_FIELDS[name]: p.question, "Answer1": a, "Answer2": b,
                 "review": f.raw, "scores": str(f.scores or [-1, -1]),
                 "review_reverse": r.raw, "scores_reverse": str(r.scores or [-1, -1])}
                for p, a, b, f, r in zip(prompts, ours, theirs, forward, reverse, strict=True)]
        meta = {"dataset_name": name, "tie_margin": self.cfg.judge.tie_margin, "judge": self.judge_note(),
                "Answer1": self.model_name, "Answer2": self.reference_name}
        write_json_atomic(self.out_dir / "judge" / f"{name}_wrap_reviews.json", {"Meta_Info": meta, "data": data})

    def alpaca_eval(self) -> dict[str, Any]:
        version = self.cfg.alpaca_eval.version
        reference, outputs = self.alpaca_reference, self.outputs["alpaca_eval"]
        judged = self._judge_all("alpaca_eval", alpaca_eval.judge_requests(reference, outputs))
        rate = alpaca_eval.win_rate(reference, judged)
        folder = self.out_dir / "eval" / "alpaca_eval"
        write_json_atomic(folder / "model_outputs.json",
                          alpaca_eval.model_outputs(reference, outputs, self.model_name))
        write_json_atomic(folder / "annotations.json", alpaca_eval.annotations(
            reference, outputs, judged, self.model_name, self.judge_note()))
        info = alpaca_eval.VERSIONS[version]
        result = {
            "version": version, "protocol": alpaca_eval.PINNED, "reference": info["reference"],
            "headline": info["headline"], "official_annotator": info["official_annotator"],
            "judge": self.judge_note(), "limit": self.cfg.suite_limit(self.cfg.alpaca_eval.limit) or None,
            "avg_length": sum(len(o) for o in outputs) / len(outputs) if outputs else math.nan, **rate,
            "length_controlled_win_rate": None,
        }
        write_json_atomic(self.out_dir / "eval" / "alpaca_eval.json", result)
        if rate["unparseable"]:
            self.notes.append(f"alpaca_eval: {rate['unparseable']} unreadable verdict(s), not counted")
        return {k: result[k] for k in ("win_rate", "standard_error", "n", "unparseable")}

    def open_llm(self) -> dict[str, Any]:
        from eval.open_llm import run_open_llm

        model, tokenizer = load_trained(self.model_dir, self.device)
        try:
            result = run_open_llm(model, tokenizer, self.cfg.open_llm, resolve_path(self.cfg.open_llm.data_dir),
                                  self.cfg.suite_limit(self.cfg.open_llm.limit), self.device,
                                  self.cfg.lm_eval_batch_size, self.out_dir / "eval")
        finally:
            del model
            gc.collect()
        write_json_atomic(self.out_dir / "eval" / "open_llm.json", result)
        return {"average": result["average"], "source": result["source"], "limit": result["limit"],
                **{name: b["value"] for name, b in result["benchmarks"].items()}}


# -- reporting --------------------------------------------------------------------------------------------------


def summary_markdown(run: _Run, metrics: dict[str, Any]) -> str:
    """The run's evaluation table (eval/summary.md), also printed at the end of the stage."""
    lines = [f"## Evaluation of {run.model_name}", "", f"model: `{run.model_dir}`"]
    if run.tallies:
        lines += ["", f"### Pairwise vs {run.reference_name} (both orders; winning score = (W - L) / N + 1)",
                  f"judge: {run.judge_note()}", "", pairwise.format_table([*run.tallies, pairwise.pooled(run.tallies)])]
    if "alpaca_eval" in metrics:
        a = json.loads((run.out_dir / "eval" / "alpaca_eval.json").read_text())
        lines += ["", f"### AlpacaEval {a['version']}: {a['headline']}",
                  f"protocol of {a['protocol']}; judge: {a['judge']}", "",
                  "| win rate (%) | standard error | N | unreadable | avg length (chars) |", "|---|---|---|---|---|",
                  f"| {a['win_rate']:.2f} | {a['standard_error']:.2f} | {a['n']} | {a['unparseable']} "
                  f"| {a['avg_length']:.0f} |"]
    if "open_llm" in metrics:
        o = json.loads((run.out_dir / "eval" / "open_llm.json").read_text())
        names = ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"]
        cells = [f"{100 * o['benchmarks'][n]['value']:.2f}" if n in o["benchmarks"] else "–" for n in names]
        lines += ["", f"### Open LLM (leaderboard v1 settings; lm-eval {o['lm_eval_version']}, {o['source']} tasks"
                      f"{', limit ' + str(o['limit']) if o['limit'] else ''})", "",
                  "| ARC-C (25-shot acc_norm) | HellaSwag (10-shot acc_norm) | MMLU (5-shot acc) "
                  "| TruthfulQA (0-shot mc2) | average |", "|---|---|---|---|---|",
                  f"| {' | '.join(cells)} | {100 * o['average']:.2f} |"]
        lines += [f"- {n}" for n in o["notes"]]
    if run.notes:
        lines += ["", *[f"- {n}" for n in run.notes]]
    lines += ["", f"evaluation time: {metrics['seconds']:.0f} s", ""]
    return "\n".join(lines)


def _mirror(tracker: StageRun, run: _Run, metrics: dict[str, Any]) -> None:
    """Results are on disk first; the tracker gets the headline numbers, the W/T/L table and the chart."""
    headline = {}
    if "winning_score" in metrics.get("pairwise", {}):
        headline["pairwise_winning_score"] = metrics["pairwise"]["winning_score"]
    if "alpaca_eval" in metrics:
        headline["alpaca_eval_win_rate"] = metrics["alpaca_eval"]["win_rate"]
    if "open_llm" in metrics:
        headline["open_llm_average"] = metrics["open_llm"]["average"]
    tracker.log(headline)
    if run.tallies:
        rows = [[t.name, t.win, t.tie, t.lose, t.unparseable, t.winning_score]
                for t in [*run.tallies, pairwise.pooled(run.tallies)]]
        tracker.table("pairwise", ["set", "win", "tie", "lose", "unparseable", "winning_score"], rows)
    chart = run.out_dir / "eval" / "pairwise_wtl.png"
    if chart.exists():
        tracker.image("pairwise_wtl", chart)
