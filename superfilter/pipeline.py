"""The whole pipeline: the data stages, training and evaluation, and `run(cfg)` that chains the ones asked for."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from eval.registry import get as get_suite
from eval.stage import check as check_eval
from eval.stage import eval_stage, model_label
from superfilter.artifacts import Artifact, planning
from superfilter.config import Config
from superfilter.contracts import SUBSET_FILE
from superfilter.data import read_examples
from superfilter.models import load_tokenizer
from superfilter.planning import check as check_plan
from superfilter.runs import subset_label
from superfilter.runtime import resolve_device
from superfilter.selection import SelectConfig, token_counts
from superfilter.stages import (
    key_params,
    model_params,
    prepare,
    run_stage,
    score,
    scores_for_selection,
    select,
    selection_label,
)
from superfilter.stats import PAIRED, verdict_lines
from superfilter.tracking import NAME_SEPARATOR
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

    partner = subset_label(reference.path) if reference is not None else None  # None while a plan builds nothing
    label = f"{selection_label(cfg)} vs {partner}{NAME_SEPARATOR}{cfg.model.strong.name}" if partner else ""
    return run_stage(cfg, "eval", params, upstream, build, label)


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


def partner_config(cfg: Config, budget_tokens: int = 0) -> Config:
    """The partner's run: eval.reference as the selector with this run's budget (records, or tokens when given or
    when this run's own budget is in tokens). Defaults for everything else, so the partner shares its key with
    `filter=<name>` runs."""
    tokens = budget_tokens or cfg.filter.budget_tokens
    partner_filter = SelectConfig(name=cfg.eval.reference, scorer="none", count=0 if tokens else cfg.filter.count,
                                  base=0 if tokens else cfg.filter.base, budget_tokens=tokens,
                                  budget_tokens_of=cfg.filter.budget_tokens_of)
    partner = replace(cfg, filter=partner_filter)
    return replace(partner, ratio=1.0) if cfg.eval.reference == "full" else partner


def judge_free(suites: list[str]) -> list[str]:
    """The suites that compare models without generated answers or a judge (reference NLL, lm-eval)."""
    return [name for name in suites if get_suite(name).prompts is None]


def needs_token_partner(cfg: Config) -> bool:
    """eval.equal_tokens: a second partner at this run's token count, unless the first one already is (a token
    budget run) or no suite could compare with it."""
    if not (cfg.eval.equal_tokens and needs_partner(cfg)) or cfg.filter.budget_tokens:
        return False
    if judge_free(cfg.eval.suites):
        return True
    log.info("eval.equal_tokens: no partner at equal tokens is trained, none of eval.suites %s needs no judge",
             list(cfg.eval.suites))
    return False


def subset_tokens(cfg: Config, subset: Artifact) -> int:
    """Tokens of the subset's responses (filter.budget_tokens_of) in the strong model's tokenizer."""
    examples = read_examples(subset.path / SUBSET_FILE)
    return sum(token_counts(examples, load_tokenizer(cfg.model.strong), cfg.filter.budget_tokens_of).values())


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
        # Every model is trained before any evaluation: a train stage started after lm-eval and the judge were
        # imported peaks that much higher (the process keeps what they leave resident).
        reference = None
        if needs_partner(cfg):
            done["train_reference"] = reference = trained_model(partner_config(cfg), examples)
        if needs_token_partner(cfg) and not (planning() and not (done["select"].path / SUBSET_FILE).is_file()):
            tokens = subset_tokens(cfg, done["select"])
            log.info("eval.equal_tokens: %s at %d %s tokens of %s", cfg.eval.reference, tokens,
                     cfg.filter.budget_tokens_of, cfg.model.strong.name)
            done["train_ref_tokens"] = trained_model(partner_config(cfg, tokens), examples)
        done["eval"] = evaluate(cfg, done["train"], reference)
        if "train_ref_tokens" in done:
            # The model's own per-item results come from the eval caches: only the partner is scored.
            judge_free_eval = replace(cfg.eval, suites=judge_free(cfg.eval.suites))
            done["eval_tokens"] = evaluate(replace(cfg, eval=judge_free_eval), done["train"],
                                           done["train_ref_tokens"])
    # A plan builds nothing, so the equal-token partner (its budget is the subset's token count) and the verdict
    # appear once the subset exists.
    return summarize(done, [] if planning() else verdict(cfg, done))


def verdict(cfg: Config, done: dict[str, Artifact]) -> list[str]:
    """The run's answer: every judge-free paired comparison of the evaluations, one line each, led by
    '<model> vs <partner> (equal records | equal tokens)'."""
    if "train" not in done:
        return []
    model = model_label(done["train"].path)
    same = "equal tokens" if cfg.filter.budget_tokens else "equal records"
    lines = []
    for stage in ("eval", "eval_tokens"):
        if stage not in done:
            continue
        budget = same if stage == "eval" else "equal tokens"
        metrics = done[stage].metrics
        for suite in judge_free([s for s in cfg.eval.suites if isinstance(metrics.get(s), dict)]):
            for c in metrics[suite].get(PAIRED, []):
                lines += verdict_lines([c], f"{model} vs {c['partner']} ({budget})")
    if not lines:
        return []
    return ["## Verdict (judge-free measures; mean per-item difference, 95% bootstrap CI over items)", "", *lines]


def summarize(done: dict[str, Artifact], verdict_block: list[str] | None = None) -> dict[str, Any]:
    return {
        "stages": {
            name: {"path": str(a.path), "key": a.key, "cache_hit": a.cached, "metrics": a.metrics}
            for name, a in done.items()
        },
        "verdict": verdict_block or [],
    }
