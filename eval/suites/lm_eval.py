"""Suite `lm_eval`: any lm-evaluation-harness task or group by name, several entries, each with its own settings."""

from __future__ import annotations

import difflib
import gc
import importlib.util
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from eval import harness
from eval.cache import JsonlCache
from eval.generation import load_tokenizer, load_trained, model_key, training_template
from eval.harness import HUB_TASKS, LOCAL_TASKS, is_code_task, known_tasks
from eval.lm_eval_items import entry_key, higher_is_better, item_scores
from eval.open_llm_tasks import BENCHMARKS, write_local_tasks
from eval.registry import Context, Result, Suite, register
from superfilter.artifacts import write_jsonl
from superfilter.contracts import ADAPTER_DIR, MODEL_INFO_FILE
from superfilter.data import resolve_path
from superfilter.errors import ConfigError, DataError, check_limit, one_of
from superfilter.models import ModelConfig, load_model
from superfilter.stats import PAIRED, compare

log = logging.getLogger(__name__)

SOURCES = ("auto", "hub", "local")
WEIGHTS = ("merged", "adapter")
# The Open LLM suite's local tasks (eval/open_llm_tasks.py renders them) and the Hub tasks they stand in for.
OPEN_LLM_LOCAL = {"arc_challenge": "arc_challenge_local", "hellaswag": "hellaswag_local", "mmlu": "mmlu_local",
                  "truthfulqa_mc2": "truthfulqa_mc2_local"}


@dataclass
class LmEvalTask:
    task: str = ""  # an lm-eval task, group or tag name (gsm8k, mmlu, leaderboard_ifeval ...) or a local task
    num_fewshot: int | None = None  # None = the task's own default
    limit: int = 0  # first N documents (per subtask of a group); 0 = eval.lm_eval.limit, then eval.limit
    batch_size: int = 0  # 0 = eval.lm_eval_batch_size
    # Render prompts in the format the model was trained in: its training template (alpaca, vicuna_v1.1; recorded by
    # the train stage, or eval.template), or the tokenizer's chat template for models trained with template=chat.
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = False  # with a chat template: few-shot examples as separate turns
    gen_kwargs: dict[str, Any] = field(default_factory=dict)  # merged into the task's generation_kwargs
    metric: str = ""  # the headline "<metric>,<filter>" (e.g. exact_match,strict-match); empty = the first reported


@dataclass
class LmEvalConfig:
    tasks: list[LmEvalTask] = field(default_factory=list)
    source: str = "auto"  # auto: Hub tasks when the Hub answers, else their local copies | hub | local
    data_dir: str = "data/eval"  # local copies in the releases' layout: gsm8k/, math500/, humaneval/, mmlu/ ...
    limit: int = 0  # default per entry; 0 = eval.limit
    allow_code_execution: bool = False  # humaneval/mbpp and their plus variants run model-written code
    weights: str = "merged"  # merged (model/) | adapter (the strong model's base + the LoRA adapter in adapter/)
    share_prefix: bool = True  # multiple-choice contexts run once (identical scores, several times faster)
    # With a partner model (eval.reference): run every entry on it too and compare per document (superfilter.stats).
    paired: bool = False


ITEMS_DIR = "lm_eval"  # eval/lm_eval/<entry>.jsonl: the headline metric per document, per model


def local_tasks() -> dict[str, str]:
    """Every local task name → the Hub task it stands in for ('' when none)."""
    found = {name: (t.stands_for[0] if t.stands_for else "") for name, t in LOCAL_TASKS.items()}
    found.update({local: hub for hub, local in OPEN_LLM_LOCAL.items()})
    return found


def is_local(name: str) -> bool:
    return name in local_tasks() or name.startswith("mmlu_local_")


def twin(name: str) -> str:
    """The local copy of a Hub task, or ''."""
    return next((local for local, hub in local_tasks().items() if hub == name), "")


def validate(cfg: LmEvalConfig, eval_cfg: Any) -> None:
    one_of("eval.lm_eval.source", [cfg.source], SOURCES)
    one_of("eval.lm_eval.weights", [cfg.weights], WEIGHTS)
    check_limit("eval.lm_eval.limit", cfg.limit)
    if not cfg.tasks:
        raise ConfigError("eval.lm_eval.tasks is empty: list entries such as [{task: gsm8k, num_fewshot: 8}]")
    for i, entry in enumerate(cfg.tasks):
        where = f"eval.lm_eval.tasks[{i}]"
        if not entry.task:
            raise ConfigError(f"{where}.task is empty: name an lm-eval task or group (e.g. gsm8k)")
        check_limit(f"{where}.limit", entry.limit)
        if entry.num_fewshot is not None and entry.num_fewshot < 0:
            raise ConfigError(f"{where}.num_fewshot must be >= 0 or null (the task's default)")
        if entry.batch_size < 0:
            raise ConfigError(f"{where}.batch_size must be >= 0 (0 = eval.lm_eval_batch_size)")
        if entry.fewshot_as_multiturn and not entry.apply_chat_template:
            raise ConfigError(f"{where}.fewshot_as_multiturn=true needs {where}.apply_chat_template=true")
        if entry.task == "math500_verify_local" and importlib.util.find_spec("math_verify") is None:
            raise ConfigError(f"{where}.task=math500_verify_local needs math-verify: pip install 'superfilter[math]'")
        if is_code_task(entry.task) and not cfg.allow_code_execution:
            raise ConfigError(f"{where}.task={entry.task} executes model-written code; allow it with "
                              "eval.lm_eval.allow_code_execution=true")


def plan(cfg: LmEvalConfig, hub: bool | None = None) -> list[tuple[LmEvalTask, str, str]]:
    """(entry, task to run, 'hub' | 'local') per entry; fails in one line when an entry cannot run here."""
    needs_hub = [e.task for e in cfg.tasks if not is_local(e.task)]
    if needs_hub and cfg.source != "local" and hub is None:
        hub = harness.hub_reachable()
    if needs_hub and cfg.source == "hub" and not hub:
        raise ConfigError(f"eval.lm_eval.source=hub but the Hub is unreachable (tasks {', '.join(needs_hub)}); "
                          "set eval.lm_eval.source=auto to run their local copies where they exist")
    use_hub = cfg.source == "hub" or (cfg.source == "auto" and bool(hub))
    planned = []
    for i, entry in enumerate(cfg.tasks):
        if is_local(entry.task):
            planned.append((entry, entry.task, "local"))
        elif use_hub:
            planned.append((entry, entry.task, "hub"))
        elif twin(entry.task):
            planned.append((entry, twin(entry.task), "local"))
        else:
            why = "eval.lm_eval.source=local" if cfg.source == "local" else "the Hub is unreachable"
            raise ConfigError(f"eval.lm_eval.tasks[{i}].task={entry.task}: {why} and it has no local copy; "
                              f"use a local task ({', '.join(sorted(local_tasks()))}) or run where the Hub answers")
    return planned


def preflight(cfg: LmEvalConfig, eval_cfg: Any) -> None:
    """Task names lm-eval does not know (with the closest it does), Hub-only tasks offline, missing local files."""
    unknown_ok = {e.task for e in cfg.tasks if is_local(e.task) or e.task in HUB_TASKS}
    others = [e.task for e in cfg.tasks if e.task not in unknown_ok]
    if others:
        known = known_tasks()
        for i, entry in enumerate(cfg.tasks):
            if entry.task in others and entry.task not in known:
                close = difflib.get_close_matches(entry.task, known, n=5, cutoff=0.6)
                raise ConfigError(f"eval.lm_eval.tasks[{i}].task={entry.task}: lm-eval "
                                  f"has no such task or group; closest: {', '.join(close) or 'none'}")
    data_dir = resolve_path(cfg.data_dir)
    for i, (_, task, source) in enumerate(plan(cfg)):
        if source == "local" and task in LOCAL_TASKS and LOCAL_TASKS[task].missing(data_dir):
            missing = ", ".join(map(str, LOCAL_TASKS[task].missing(data_dir)))
            raise DataError(f"eval.lm_eval.tasks[{i}] runs {task} over {missing}, which is missing; "
                            "set eval.lm_eval.data_dir to a folder holding it")


def load(ctx: Context, cfg: LmEvalConfig, model_dir: Path) -> tuple[Any, Any]:
    """A trained model in memory: merged weights, or the base model plus the saved LoRA adapter."""
    if cfg.weights == "merged":
        return load_trained(model_dir, ctx.device)

    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from peft import PeftModel


    adapter = model_dir / ADAPTER_DIR
    info = adapter / MODEL_INFO_FILE
    if not info.is_file():
        raise DataError(f"{model_dir}: eval.lm_eval.weights=adapter needs a LoRA train stage folder "
                        f"({ADAPTER_DIR}/{MODEL_INFO_FILE}); use weights=merged")
    base, _ = load_model(ModelConfig(**json.loads(info.read_text())["base_model_spec"]), ctx.device)
    return PeftModel.from_pretrained(base, str(adapter)), load_tokenizer(model_dir)


def render(planned: list[tuple[LmEvalTask, str, str]], cfg: LmEvalConfig, folder: Path) -> None:
    """The local tasks' YAMLs and data in the artifact (paths relative to the folder, so it can be rerun)."""
    ours = sorted({task for _, task, source in planned if source == "hub" and task in harness.HUB_TASKS})
    if ours:
        harness.render_hub_tasks(ours, folder)
    local = {task for _, task, source in planned if source == "local"}
    if not local:
        return
    data_dir = resolve_path(cfg.data_dir)
    harness.render_local_tasks(sorted(local & set(harness.LOCAL_TASKS)), data_dir, folder)
    by_local = {b.local_task: name for name, b in BENCHMARKS.items()}
    open_llm = sorted({by_local["mmlu_local"] if t.startswith("mmlu_local") else by_local[t]
                       for t in local if t.startswith("mmlu_local") or t in by_local})
    if open_llm:
        _, skipped = write_local_tasks(data_dir, open_llm, [], folder)
        if skipped:
            raise DataError(f"eval.lm_eval: local tasks without data in {data_dir}: {skipped}")


def headline(ran: str, entry: LmEvalTask, result: dict[str, Any]) -> dict[str, Any]:
    """The entry's headline number under lm-eval's own metric name, with its standard error and N."""
    row = result["results"].get(ran) or (result.get("groups") or {}).get(ran)
    if row is None:  # a tag: lm-eval reports its tasks one by one
        return {"metric": None, "value": None, "stderr": None, "n": _n(ran, result)}
    metrics = [k for k in row if "," in k and "_stderr," not in k]
    key = entry.metric or (metrics[0] if metrics else "")
    if key not in row:
        raise DataError(f"lm-eval task {ran}: no metric {key!r}; it reported {metrics}")
    metric, _, filter_name = key.partition(",")
    stderr = row.get(f"{metric}_stderr,{filter_name}")
    return {"metric": key, "value": _number(row[key]), "stderr": _number(stderr), "n": _n(ran, result)}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _n(ran: str, result: dict[str, Any]) -> int:
    samples = result.get("n-samples") or {}
    if ran in samples:
        return int(samples[ran]["effective"])
    return sum(int(s["effective"]) for s in samples.values())


def run_entries(ctx: Context, cfg: LmEvalConfig, model: Any, tokenizer: Any,
                planned: list[tuple[LmEvalTask, str, str]]) -> list[dict[str, Any]]:
    """The planned entries through lm-eval's `simple_evaluate` on the in-memory model, each with its headline
    metric per document under "items"; the tasks (rendered by run) are read from the artifact."""
    # deferred: lm-eval takes seconds to import; loaded only when a benchmark runs
    from lm_eval.tasks import TaskManager


    folder = ctx.eval_dir / harness.TASKS_FOLDER
    render(planned, cfg, folder)
    chat = any(e.apply_chat_template for e in cfg.tasks)
    template = training_template(ctx.model_dir, ctx.cfg.template) if chat else "chat"
    managers: dict[str, Any] = {}
    lms: dict[int, Any] = {}
    entries = []
    for entry, ran, source in planned:
        if source not in managers:
            # Hub tasks: lm-eval's own, plus ours rendered into the folder (fiqa_sa).
            managers[source] = TaskManager(include_path=str(folder) if folder.is_dir() else None,
                                           include_defaults=source == "hub")
        batch_size = entry.batch_size or ctx.cfg.lm_eval_batch_size
        if batch_size not in lms:
            lms[batch_size] = harness.make_lm(model, tokenizer, ctx.device, batch_size, cfg.share_prefix, template)
        limit = entry.limit or ctx.limit(cfg.limit)
        log.info("lm-eval %s (%s%s)", ran, source, f", limit {limit}" if limit else "")
        result = harness.evaluate(lms[batch_size], [ran], managers[source], entry.num_fewshot, limit,
                                  entry.apply_chat_template, entry.fewshot_as_multiturn, entry.gen_kwargs,
                                  cfg.allow_code_execution, log_samples=True)
        # The settings this run used, written into the rendered YAML: the lm_eval CLI reruns it as it ran here.
        rerun = harness.pin_task(folder, ran, dict(entry.gen_kwargs), lms[batch_size].max_gen_toks, entry.num_fewshot)
        top = headline(ran, entry, result)
        entries.append({
            "task": entry.task, "ran": ran, "rerun_task": rerun, "source": source, "limit": limit or None,
            "batch_size": batch_size,
            "num_fewshot": entry.num_fewshot, "n_shot": result.get("n-shot"),
            "apply_chat_template": entry.apply_chat_template, "fewshot_as_multiturn": entry.fewshot_as_multiturn,
            "prompt_format": template if entry.apply_chat_template else "plain",
            "gen_kwargs": dict(entry.gen_kwargs), "headline": top,
            **{k.replace("-", "_"): result.get(k) for k in ("results", "groups", "n-samples", "versions",
                                                            "higher_is_better")},
            "items": item_scores(result, top["metric"] or ""),
        })
    return entries


def evaluated(ctx: Context, cfg: LmEvalConfig, model_dir: Path, planned: list[tuple[LmEvalTask, str, str]]
              ) -> list[dict[str, Any]]:
    """Every planned entry's result on one trained model. Results are cached per model
    (<cache>/lm_eval/<model key>.jsonl), so a model compared with two partners runs each entry once, and the model
    loads only when an entry is missing."""
    model_id = model_key(model_dir)
    cache = JsonlCache(ctx.cache_root / ITEMS_DIR / f"{model_id.replace(':', '-')[:40]}.jsonl")
    keys = [entry_key(model_id, {"entry": asdict(entry), "ran": ran, "source": source,
                                 "limit": entry.limit or ctx.limit(cfg.limit), "weights": cfg.weights,
                                 "share_prefix": cfg.share_prefix, "allow_code_execution": cfg.allow_code_execution,
                                 "batch_size": entry.batch_size or ctx.cfg.lm_eval_batch_size,
                                 "lm_eval": harness.version()})
            for entry, ran, source in planned]
    todo = [i for i, key in enumerate(keys) if key not in cache]
    if todo:
        model, tokenizer = load(ctx, cfg, model_dir)
        try:
            entries = run_entries(ctx, cfg, model, tokenizer, [planned[i] for i in todo])
        finally:
            del model
            gc.collect()
        cache.put_many([{**e, "key": keys[i]} for i, e in zip(todo, entries, strict=True)])
    return [{k: v for k, v in cache.get(key).items() if k != "key"} for key in keys]


def paired_entries(ctx: Context, labels: list[str], ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
                   ) -> list[dict[str, Any]]:
    """Per entry with per-document scores: ours vs the partner's on the documents both have."""
    comparisons = []
    for label, mine, other in zip(labels, ours, theirs, strict=True):
        metric = mine["headline"]["metric"]
        if mine["items"] and other["items"]:
            comparisons.append(compare(mine["items"], other["items"], f"{label} {metric}",
                                       higher_is_better(mine, metric), partner=ctx.reference_name).to_dict())
    return comparisons


def run(ctx: Context, cfg: LmEvalConfig) -> Result:
    planned = plan(cfg)
    render(planned, cfg, ctx.eval_dir / harness.TASKS_FOLDER)  # kept with the results, cached or not
    entries = evaluated(ctx, cfg, ctx.model_dir, planned)
    labels = entry_labels([e["task"] for e in entries])
    partner = (evaluated(ctx, cfg, ctx.reference_dir, planned) if cfg.paired and ctx.reference_dir is not None
               else [])
    for suffix, results in (("", entries), (".reference", partner)):
        for label, e in zip(labels, results, strict=False):  # the partner's list is empty when unpaired
            write_jsonl(ctx.eval_dir / ITEMS_DIR / f"{label}{suffix}.jsonl",
                        [{"id": i, "value": v} for i, v in e["items"].items()])
    comparisons = paired_entries(ctx, labels, entries, partner) if partner else []
    entries = [{k: v for k, v in e.items() if k != "items"} for e in entries]
    local = (ctx.eval_dir / harness.TASKS_FOLDER).is_dir()
    result = {
        "lm_eval_version": harness.version(), "device": ctx.device, "weights": cfg.weights,
        "allow_code_execution": cfg.allow_code_execution, "tasks": entries,
        "tasks_folder": f"eval/{harness.TASKS_FOLDER}" if local else None,
    }
    rows = ["| task | ran | source | shots | N | metric | value | stderr |", "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        h = e["headline"]
        shots = e["num_fewshot"] if e["num_fewshot"] is not None else "default"
        rows.append(f"| {e['task']} | {e['ran']} | {e['source']} | {shots} | {h['n']} | {h['metric'] or '–'} "
                    f"| {_cell(h['value'])} | {_cell(h['stderr'])} |")
    limited = sorted({e["limit"] for e in entries if e["limit"]})
    notes = [f"lm_eval: limit {', '.join(map(str, limited))} documents per task: not comparable to full runs"] \
        if limited else []
    summary = [f"### lm-eval tasks (lm-eval {result['lm_eval_version']}, {ctx.device}, {cfg.weights} weights)", "",
               *rows]
    metrics: dict[str, Any] = {label: e["headline"] for label, e in zip(labels, entries, strict=True)}
    if comparisons:
        metrics[PAIRED] = comparisons
    return Result(result=result, metrics=metrics,
                  headline={f"lm_eval/{label}/{e['headline']['metric']}": e["headline"]["value"]
                            for label, e in zip(labels, entries, strict=True) if e["headline"]["value"] is not None},
                  summary=summary, notes=notes)


def entry_labels(tasks: list[str]) -> list[str]:
    """The task name, or `<task>#<entry index>` when several entries run the same task (e.g. two shot counts)."""
    return [t if tasks.count(t) == 1 else f"{t}#{i}" for i, t in enumerate(tasks)]


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"{task} {h.get('metric')}": h.get("value") for task, h in metrics.items() if isinstance(h, dict)}


register(Suite("lm_eval", LmEvalConfig, run, validate=validate, preflight=preflight, report=report,
               description="any lm-evaluation-harness task or group by name, with per-entry settings"))
