"""The whole pipeline: the data stages, training and evaluation, and `run(cfg)` that chains the ones asked for."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.registry import get as get_suite
from eval.stage import check as check_eval
from eval.stage import eval_stage
from superfilter.artifacts import Artifact, planning
from superfilter.config import Config
from superfilter.contracts import SUBSET_FILE
from superfilter.planning import check as check_plan
from superfilter.runtime import resolve_device
from superfilter.selection import SelectConfig
from superfilter.stages import key_params, model_params, prepare, run_stage, score, scores_for_selection, select
from train.config import resolve_mixed_precision
from train.stage import check as check_train
from train.stage import train_stage

log = logging.getLogger(__name__)


def train_params(cfg: Config) -> dict[str, Any]:
    train = key_params(cfg.train)
    train["mixed_precision"] = resolve_mixed_precision(cfg.train.mixed_precision, resolve_device(cfg.runtime.device))
    return {"model": model_params(cfg.model.strong, cfg.runtime), "train": train, "seed": cfg.seed}


def train(cfg: Config, subset: Artifact) -> Artifact:
    params = train_params(cfg)

    def build(out_dir: Path, run) -> dict[str, Any]:
        return train_stage(subset.path / SUBSET_FILE, cfg.model.strong, cfg.train, cfg.seed, cfg.runtime,
                           out_dir, run)

    return run_stage(cfg, "train", params, [subset], build)


def evaluate(cfg: Config, trained: Artifact, reference: Artifact | None) -> Artifact:
    params = {"eval": key_params(cfg.eval, drop=cfg.eval.unselected_sections())}
    upstream = [trained] + ([replace(reference, stage="reference")] if reference is not None else [])

    def build(out_dir: Path, run) -> dict[str, Any]:
        return eval_stage(trained.path, reference.path if reference else None, cfg.eval, cfg.runtime,
                          out_dir, run)

    return run_stage(cfg, "eval", params, upstream, build)


def trained_model(cfg: Config, examples: Artifact) -> Artifact:
    return train(cfg, select(cfg, examples, scores_for_selection(cfg, examples)))


def needs_partner(cfg: Config) -> bool:
    """Whether eval trains the partner model: a selected suite compares with it, and it is not this run's own."""
    if cfg.eval.reference in ("none", cfg.filter.name):
        return False
    if any(get_suite(name).needs_reference for name in cfg.eval.suites):
        return True
    log.info("eval.reference=%s: no partner is trained, none of eval.suites %s compares with one",
             cfg.eval.reference, list(cfg.eval.suites))
    return False


def run(cfg: Config) -> dict[str, Any]:
    """Run every stage listed in cfg.stages, building (or reusing) whatever each one reads."""
    check_plan(cfg, run)  # what cannot fit its hardware stops here, with the fix (superfilter/planning.py)
    done: dict[str, Artifact] = {}
    if "eval" in cfg.stages and not planning():  # plan=true reports this check's failure instead of stopping
        check_eval(cfg.eval)  # unknown tasks, missing files, Hub-only tasks offline: fail before any model loads
    if set(cfg.stages) & {"train", "eval"} and not planning():
        check_train(cfg.train, cfg.runtime)  # a world that cannot train this config: fail before scoring
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
