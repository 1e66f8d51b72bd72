"""The stages as plain functions over artifacts, and `run(cfg)` that chains the ones asked for."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from superfilter import artifacts
from superfilter.artifacts import Artifact
from superfilter.config import Config, as_dict
from superfilter.contracts import EXAMPLES_FILE, SCORES_FILE, SUBSET_FILE
from superfilter.data import check_source_file, file_digest, load_examples, resolve_path, write_examples
from superfilter.models import ModelConfig
from superfilter.runtime import (
    RuntimeConfig,
    choose_dtype,
    peak_rss_mb,
    release_memory,
    reset_peak_rss,
    resolve_device,
)
from superfilter.selection import SelectConfig
from superfilter.tracking import stage_run
from train.config import resolve_mixed_precision

log = logging.getLogger(__name__)

# Bump a stage's version when its code changes what it computes: old artifacts then stop matching.
VERSIONS = {"prepare": 1, "score": 1, "select": 1, "train": 2, "eval": 1}


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


def score_params(cfg: Config, model: ModelConfig) -> dict[str, Any]:
    return {"model": model_params(model, cfg.runtime), "score": key_params(cfg.score)}


def select_params(cfg: Config) -> dict[str, Any]:
    # `full` takes everything whatever the ratio: one key, so a sweep trains the 100% model once.
    ratio = 1.0 if cfg.filter.name == "full" else cfg.ratio
    params = {"filter": key_params(cfg.filter), "ratio": ratio, "seed": cfg.seed}
    if cfg.filter.allow_empty:  # its own folder: a run that does not allow an empty subset never reuses one
        params["allow_empty"] = True
    return params


def train_params(cfg: Config) -> dict[str, Any]:
    train = key_params(cfg.train)
    train["mixed_precision"] = resolve_mixed_precision(cfg.train.mixed_precision, resolve_device(cfg.runtime.device))
    return {"model": model_params(cfg.model.strong, cfg.runtime), "train": train, "seed": cfg.seed}


def _stage(cfg: Config, name: str, params: dict[str, Any], upstream: list[Artifact], build) -> Artifact:
    def tracked_build(out_dir: Path) -> dict[str, Any]:
        release_memory()  # what earlier stages freed; their models are gone, the allocator still holds the pages
        measured = reset_peak_rss()
        started = time.perf_counter()
        with stage_run(cfg.tracking, name, params, group=cfg.name, root=Path(cfg.artifact_root)) as run:
            metrics = build(out_dir, run)
            # This process only: torchrun workers (num_processes > 1) are not counted.
            metrics["stage_wall_s"] = round(time.perf_counter() - started, 1)
            metrics["stage_peak_rss_mb"] = round(peak_rss_mb(), 1) if measured else None
            log.info("%s: %.0f s, peak RSS %s MB", name, metrics["stage_wall_s"], metrics["stage_peak_rss_mb"])
            run.summary(metrics)
        return metrics

    return artifacts.run_stage(Path(cfg.artifact_root), name, VERSIONS[name], params, upstream, tracked_build)


def prepare(cfg: Config, label: str | None = None) -> Artifact:
    """label: how messages name the records when data.path is a copy of in-memory records (load_examples)."""
    params = key_params(cfg.data, drop=("name", "path"))
    if cfg.data.path:  # content, not location, decides the key: a moved file stays a cache hit
        path = resolve_path(cfg.data.path)
        check_source_file(path)  # before hashing it: a named pipe would block the read forever
        params["file_sha256"] = file_digest(path)

    def build(out_dir: Path, run) -> dict[str, Any]:
        examples, report = load_examples(cfg.data, label)
        write_examples(examples, out_dir / EXAMPLES_FILE)
        return {"data": cfg.data.name, **as_dict(report)}

    return _stage(cfg, "prepare", params, [], build)


def score(cfg: Config, examples: Artifact, model: ModelConfig) -> Artifact:
    from superfilter.scoring import score_stage

    params = score_params(cfg, model)

    def build(out_dir: Path, run) -> dict[str, Any]:
        return score_stage(examples.path / EXAMPLES_FILE, model, cfg.score, cfg.runtime, out_dir, run)

    return _stage(cfg, "score", params, [examples], build)


def select(cfg: Config, examples: Artifact, scores: Artifact | None) -> Artifact:
    from superfilter.selection import select_stage

    params = select_params(cfg)
    upstream = [examples] + ([scores] if scores is not None else [])

    def build(out_dir: Path, run) -> dict[str, Any]:
        scores_path = scores.path / SCORES_FILE if scores is not None else None
        return select_stage(examples.path / EXAMPLES_FILE, scores_path, cfg.filter, cfg.ratio, cfg.seed,
                            cfg.runtime, out_dir, run)

    return _stage(cfg, "select", params, upstream, build)


def train(cfg: Config, subset: Artifact) -> Artifact:
    from train.stage import train_stage

    params = train_params(cfg)

    def build(out_dir: Path, run) -> dict[str, Any]:
        return train_stage(subset.path / SUBSET_FILE, cfg.model.strong, cfg.train, cfg.seed, cfg.runtime,
                           out_dir, run)

    return _stage(cfg, "train", params, [subset], build)


def evaluate(cfg: Config, trained: Artifact, reference: Artifact | None) -> Artifact:
    from eval.stage import eval_stage

    params = {"eval": key_params(cfg.eval, drop=cfg.eval.unselected_sections())}
    upstream = [trained] + ([replace(reference, stage="reference")] if reference is not None else [])

    def build(out_dir: Path, run) -> dict[str, Any]:
        return eval_stage(trained.path, reference.path if reference else None, cfg.eval, cfg.runtime,
                          out_dir, run)

    return _stage(cfg, "eval", params, upstream, build)


def scores_for_selection(cfg: Config, examples: Artifact) -> Artifact | None:
    if cfg.filter.scorer == "none":
        return None
    model = cfg.model.strong if cfg.filter.scorer == "strong" else cfg.model.weak
    return score(cfg, examples, model)


def trained_model(cfg: Config, examples: Artifact) -> Artifact:
    return train(cfg, select(cfg, examples, scores_for_selection(cfg, examples)))


def needs_partner(cfg: Config) -> bool:
    """Whether eval trains the partner model: a selected suite compares with it, and it is not this run's own."""
    from eval import suites

    if cfg.eval.reference in ("none", cfg.filter.name):
        return False
    if any(suites.get(name).needs_reference for name in cfg.eval.suites):
        return True
    log.info("eval.reference=%s: no partner is trained, none of eval.suites %s compares with one",
             cfg.eval.reference, list(cfg.eval.suites))
    return False


def run(cfg: Config) -> dict[str, Any]:
    """Run every stage listed in cfg.stages, building (or reusing) whatever each one reads."""
    done: dict[str, Artifact] = {}
    if "eval" in cfg.stages:
        from eval.stage import check

        check(cfg.eval)  # unknown tasks, missing files, Hub-only tasks offline: fail before any model loads
    examples = done["prepare"] = prepare(cfg)
    wanted = set(cfg.stages)
    if "score" in wanted:
        done["score"] = score(cfg, examples, cfg.model.weak)
    if wanted & {"select", "train", "eval"}:
        scores = scores_for_selection(cfg, examples)
        if scores is not None:  # keep the first sighting: it says whether this run built the artifact
            done.setdefault("score" if cfg.filter.scorer == "weak" else "score_strong", scores)
        done["select"] = select(cfg, examples, scores)
    if wanted & {"train", "eval"}:
        done["train"] = train(cfg, done["select"])
    if "eval" in wanted:
        reference = None
        if needs_partner(cfg):
            # Defaults for everything but the budget, so the partner shares its key with `filter=<name>` runs.
            partner_filter = SelectConfig(name=cfg.eval.reference, scorer="none", count=cfg.filter.count,
                                          base=cfg.filter.base)
            partner = replace(cfg, filter=partner_filter)
            if cfg.eval.reference == "full":
                partner = replace(partner, ratio=1.0)
            done["train_reference"] = reference = trained_model(partner, examples)
        done["eval"] = evaluate(cfg, done["train"], reference)
    return summarize(done)


def summarize(done: dict[str, Artifact]) -> dict[str, Any]:
    return {
        "stages": {
            name: {"path": str(a.path), "key": a.key, "cache_hit": a.cached, "metrics": a.metrics}
            for name, a in done.items()
        }
    }
