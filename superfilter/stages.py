"""The data stages as plain functions over artifacts: prepare, score and select, each a cached folder."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from superfilter import artifacts
from superfilter.artifacts import Artifact, planning
from superfilter.contracts import EXAMPLES_FILE, SCORES_FILE
from superfilter.data import (
    LoadReport,
    check_source_file,
    file_digest,
    iter_examples,
    resolve_path,
    resolve_revision,
    write_examples,
)
from superfilter.errors import DataError
from superfilter.models import ModelConfig
from superfilter.runtime import (
    RuntimeConfig,
    choose_dtype,
    peak_rss_mb,
    release_memory,
    reset_peak_rss,
    resolve_device,
)
from superfilter.scoring import score_stage
from superfilter.selection import select_stage, tokenizer_params
from superfilter.settings import FilterRunConfig, as_dict
from superfilter.tracking import NAME_SEPARATOR, Reference, RunSpec, StageRun, stage_run, tag

log = logging.getLogger(__name__)

# Bump a stage's version when its code changes what it computes: old artifacts then stop matching.
VERSIONS = {"prepare": 1, "score": 1, "select": 2, "train": 2, "eval": 1}

Build = Callable[[Path, StageRun], dict[str, Any]]


def key_params(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    """The config fields that decide a stage's result, at every nesting level: each dataclass's RUNTIME_FIELDS
    (labels, speed and bookkeeping settings) and the fields its `unused_fields()` names are left out."""
    if is_dataclass(obj):
        unused = obj.unused_fields() if hasattr(obj, "unused_fields") else ()
        skip = {*getattr(type(obj), "RUNTIME_FIELDS", ()), *unused, *drop}
        return {f.name: key_params(getattr(obj, f.name)) for f in fields(obj) if f.name not in skip}
    if isinstance(obj, Mapping):
        return {str(k): key_params(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [key_params(v) for v in obj]
    return obj


def model_params(model: ModelConfig, runtime: RuntimeConfig) -> dict[str, Any]:
    params = key_params(model)
    # The dtype that will run, not "auto": bf16 and fp32 results differ, and a store shared by machines with
    # and without bf16 units must not hand one's results to the other.
    params["dtype"] = choose_dtype(model.dtype, resolve_device(runtime.device)).name
    return params


def score_params(cfg: FilterRunConfig, model: ModelConfig) -> dict[str, Any]:
    return {"model": model_params(model, cfg.runtime), "score": key_params(cfg.score)}


def select_params(cfg: FilterRunConfig) -> dict[str, Any]:
    # `full` takes everything whatever the ratio: one key, so a sweep trains the 100% model once.
    ratio = 1.0 if cfg.filter.name == "full" else cfg.ratio
    params = {"filter": key_params(cfg.filter), "ratio": ratio, "seed": cfg.seed}
    if cfg.filter.allow_empty:  # its own folder: a run that does not allow an empty subset never reuses one
        params["allow_empty"] = True
    if cfg.filter.budget_tokens:  # the strong model's tokenizer counts the budget
        params["tokenizer"] = tokenizer_params(cfg.model.strong)
        if cfg.filter.name == "superfilter_d":
            # Before 2026-12-07 facility location left the pool in IFD order when it ranked all of it: such a
            # subset was superfilter's, and must not be reused (the selector's only key change, not a version bump
            # that would re-select and retrain every other subset).
            params["ranking"] = "greedy"
    return params


def selection_label(cfg: FilterRunConfig) -> str:
    """How runs, tables and plots name a selection: `superfilter 10%`, `random 1000 records`, `random 9,053 tokens`,
    `full 100%` (the token budget as runs.subset_label reads it back from a folder)."""
    if cfg.filter.budget_tokens:
        return f"{cfg.filter.name} {cfg.filter.budget_tokens:,} tokens"
    if cfg.filter.count and cfg.filter.name != "full":
        return f"{cfg.filter.name} {cfg.filter.count} records"
    share = f"{cfg.filter.name} {100 * select_params(cfg)['ratio']:g}%"
    return f"{share} of {cfg.filter.base}" if cfg.filter.base and cfg.filter.name != "full" else share


SELECTION_STAGES = ("select", "train", "eval")  # the stages whose folder belongs to one selection


def stage_label(cfg: FilterRunConfig, stage: str) -> str:
    """The second half of a stage's W&B run name, `<stage> · <label>`: what this stage's folder is of."""
    if stage == "prepare":
        return cfg.data.name
    if stage == "score":
        return f"{cfg.data.name}{NAME_SEPARATOR}{cfg.model.weak.name}"
    if stage == "select":
        return f"{selection_label(cfg)}{NAME_SEPARATOR}{cfg.data.name}"
    return f"{selection_label(cfg)}{NAME_SEPARATOR}{cfg.model.strong.name}"


def run_tags(cfg: FilterRunConfig, stage: str) -> tuple[str, ...]:
    """data always; a selection's stages also the weak and strong model, filter and ratio (prepare and score
    folders are shared by every selection of a sweep, so they carry none of it)."""
    if stage not in SELECTION_STAGES:
        return (tag("data", cfg.data.name),)
    return (tag("data", cfg.data.name), tag("weak", cfg.model.weak.name), tag("strong", cfg.model.strong.name),
            tag("filter", cfg.filter.name), tag("tokens", str(cfg.filter.budget_tokens)) if cfg.filter.budget_tokens
            else tag("ratio", f"{select_params(cfg)['ratio']:g}"))


def run_spec(cfg: FilterRunConfig, stage: str, key: str, params: dict[str, Any], upstream: list[Artifact],
             label: str) -> RunSpec:
    """The W&B run of one stage: its key and its upstream folders' keys in the config, so that two runs of one
    stage differ where their inputs do, and the upstream folders as input artifacts (the lineage graph)."""
    inputs = tuple(Reference(a.path.parent.name, a.key, a.path) for a in upstream)
    config = {**params, "stage_key": key, "experiment": cfg.name, "upstream": {a.stage: a.key for a in upstream}}
    if stage in SELECTION_STAGES:
        config["selection"] = selection_label(cfg)
    return RunSpec(stage, label, cfg.tracking.group or cfg.name, run_tags(cfg, stage), config, inputs)


def run_stage(cfg: FilterRunConfig, name: str, params: dict[str, Any], upstream: list[Artifact], build: Build,
              label: str = "") -> Artifact:
    """The stage's artifact, built (and tracked as one W&B run) only when no finished folder has its key.
    label: the run name's second half; empty = stage_label(cfg, name)."""
    root = Path(cfg.artifact_root)
    key = artifacts.stage_key(name, VERSIONS[name], params, upstream)
    spec = run_spec(cfg, name, key, params, upstream, label or stage_label(cfg, name))
    runs: list[StageRun] = []
    with contextlib.ExitStack() as tracked:  # the run stays open until the folder has its final name

        def tracked_build(out_dir: Path) -> dict[str, Any]:
            release_memory()  # what earlier stages freed; their models are gone, the allocator still holds the pages
            measured = reset_peak_rss()
            started = time.perf_counter()
            run = tracked.enter_context(stage_run(cfg.tracking, spec, root))
            runs.append(run)
            metrics = build(out_dir, run)
            # This process only: torchrun workers (num_processes > 1) are not counted.
            metrics["stage_wall_s"] = round(time.perf_counter() - started, 1)
            metrics["stage_peak_rss_mb"] = round(peak_rss_mb(), 1) if measured else None
            log.info("%s: %.0f s, peak RSS %s MB", name, metrics["stage_wall_s"], metrics["stage_peak_rss_mb"])
            run.summary(metrics)
            return metrics

        artifact = artifacts.run_stage(root, name, VERSIONS[name], params, upstream, tracked_build)
        for run in runs:
            run.output(Reference(name, key, artifact.path))
    return artifact


def prepare(cfg: FilterRunConfig, label: str | None = None) -> Artifact:
    """label: how messages name the records when data.path is a copy of in-memory records (load_examples).

    A Hub source is pinned first: the commit it is read at is part of the key (and so of config.json), so a
    dataset changed on the Hub is a new artifact, never a silent cache hit on the old records."""
    params = key_params(cfg.data, drop=("name", "path"))
    if cfg.data.path:  # content, not location, decides the key: a moved file stays a cache hit
        path = resolve_path(cfg.data.path)
        check_source_file(path)  # before hashing it: a named pipe would block the read forever
        params["file_sha256"] = file_digest(path)
    try:
        revision = resolve_revision(cfg.data)
    except DataError as e:
        if not planning():
            raise
        # A plan made offline still lists every stage; the real run stops here with this error.
        log.warning("plan: %s", e)
        revision = "unresolved: the Hub is unreachable"
    if revision:
        params["revision"] = revision

    def build(out_dir: Path, run) -> dict[str, Any]:
        report = LoadReport()
        # Written as read: a streamed Hub dataset never has to fit in memory.
        write_examples(iter_examples(cfg.data, report, label, revision), out_dir / EXAMPLES_FILE)
        return {"data": cfg.data.name, **({"revision": revision} if revision else {}), **as_dict(report)}

    return run_stage(cfg, "prepare", params, [], build)


def score(cfg: FilterRunConfig, examples: Artifact, model: ModelConfig) -> Artifact:
    params = score_params(cfg, model)

    def build(out_dir: Path, run) -> dict[str, Any]:
        return score_stage(examples.path / EXAMPLES_FILE, model, cfg.score, cfg.runtime, out_dir, run)

    return run_stage(cfg, "score", params, [examples], build, f"{cfg.data.name}{NAME_SEPARATOR}{model.name}")


def select(cfg: FilterRunConfig, examples: Artifact, scores: Artifact | None) -> Artifact:
    params = select_params(cfg)
    upstream = [examples] + ([scores] if scores is not None else [])

    def build(out_dir: Path, run) -> dict[str, Any]:
        scores_path = scores.path / SCORES_FILE if scores is not None else None
        return select_stage(examples.path / EXAMPLES_FILE, scores_path, cfg.filter, cfg.ratio, cfg.seed,
                            cfg.runtime, out_dir, run, tokenizer_model=cfg.model.strong)

    return run_stage(cfg, "select", params, upstream, build)


def scores_for_selection(cfg: FilterRunConfig, examples: Artifact) -> Artifact | None:
    if cfg.filter.scorer == "none":
        return None
    model = cfg.model.strong if cfg.filter.scorer == "strong" else cfg.model.weak
    return score(cfg, examples, model)


