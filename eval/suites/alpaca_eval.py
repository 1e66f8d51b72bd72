"""Suite `alpaca_eval`: judged win rate against a reference model's outputs on AlpacaEval's 805 instructions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.generation import Prompt
from eval.metrics import alpaca_eval
from eval.registry import Context, Prompts, Result, Suite, Table, register
from superfilter.artifacts import write_json_atomic
from superfilter.data import resolve_path
from superfilter.errors import DataError, check_limit, one_of
from superfilter.stats import PAIRED, compare_differences

ALPACA_EVAL_VERSIONS = ("v1", "v2")


@dataclass
class AlpacaEvalConfig:
    version: str = "v1"  # v1: reference text_davinci_003 (the paper) | v2: reference gpt4_1106_preview
    reference_path: str = ""  # a model_outputs.json of the reference; empty = data/alpaca_eval/<reference>.json
    limit: int = 0  # first N of the 805 instructions; 0 = eval.limit
    # v2's length-controlled rate needs alpaca_eval's df_gamed.csv: from the Hub when reachable, else this local copy.
    df_gamed_path: str = ""


def validate(cfg: AlpacaEvalConfig, eval_cfg: Any) -> None:
    one_of("eval.alpaca_eval.version", [cfg.version], ALPACA_EVAL_VERSIONS)
    check_limit("eval.alpaca_eval.limit", cfg.limit)


def reference_path(cfg: AlpacaEvalConfig) -> Path:
    path = resolve_path(cfg.reference_path or f"data/alpaca_eval/{alpaca_eval.reference_file(cfg.version)}")
    if not path.is_file():
        raise DataError(f"{path}: no AlpacaEval {cfg.version} reference outputs; "
                        "set eval.alpaca_eval.reference_path=<model_outputs.json of the reference>")
    return path


def preflight(cfg: AlpacaEvalConfig, eval_cfg: Any) -> None:
    reference_path(cfg)


def _reference(ctx: Context, cfg: AlpacaEvalConfig) -> list[dict[str, str]]:
    return alpaca_eval.load_reference(reference_path(cfg), ctx.limit(cfg.limit))


def prompts(ctx: Context, cfg: AlpacaEvalConfig) -> Prompts:
    return Prompts(model={"instructions": [Prompt(str(i), r["instruction"])
                                           for i, r in enumerate(_reference(ctx, cfg))]})


def run(ctx: Context, cfg: AlpacaEvalConfig) -> Result:
    reference, outputs = _reference(ctx, cfg), ctx.outputs["alpaca_eval"]["instructions"]
    judged = ctx.judge_all("alpaca_eval", alpaca_eval.judge_requests(reference, outputs, cfg.version))
    unparseable = sum(not a.ok for a in judged)
    folder = ctx.eval_dir / "alpaca_eval"
    records = alpaca_eval.annotations(reference, outputs, judged, ctx.model_name, ctx.judge_note())
    write_json_atomic(folder / "model_outputs.json", alpaca_eval.model_outputs(reference, outputs, ctx.model_name))
    write_json_atomic(folder / "annotations.json", records)
    info = alpaca_eval.VERSIONS[cfg.version]
    df_gamed = str(resolve_path(cfg.df_gamed_path)) if cfg.df_gamed_path else None
    # The length-controlled GLM is fit against AlpacaEval 2's baseline (gpt4_1106_preview) only.
    rate = alpaca_eval.summarize(records, df_gamed, length_controlled=cfg.version == "v2")
    result = {
        "version": cfg.version, "protocol": alpaca_eval.PINNED, "reference": info["reference"],
        "headline": info["headline"], "official_annotator": info["official_annotator"],
        "judge": ctx.judge_note(), "limit": ctx.limit(cfg.limit) or None, **rate,
        "n": rate["n_total"], "unparseable": unparseable,
    }
    lc = rate["length_controlled_winrate"]
    notes = [f"alpaca_eval: {unparseable} unreadable verdict(s), not counted"] if unparseable else []
    if cfg.version == "v2" and lc is None:
        notes.append(f"alpaca_eval: length-controlled win rate {rate['length_controlled_unavailable']}")
    summary = [f"### AlpacaEval {cfg.version}: {info['headline']}",
               f"protocol of {alpaca_eval.PINNED}; judge: {ctx.judge_note()}", "",
               "| win rate (%) | standard error | LC win rate (%) | N | draws | unreadable | avg length (chars) |",
               "|---|---|---|---|---|---|---|",
               f"| {rate['win_rate']:.2f} | {rate['standard_error']:.2f} | {'–' if lc is None else f'{lc:.2f}'} "
               f"| {rate['n_total']} | {rate['n_draws']} | {unparseable} | {rate['avg_length']} |"]
    metrics = {k: result[k] for k in ("win_rate", "standard_error", "length_controlled_winrate", "n", "unparseable")}
    metrics[PAIRED] = [item_preferences(records, cfg.version, info["reference"])]
    headline = {"alpaca_eval_win_rate": rate["win_rate"]}
    if lc is not None:
        headline["alpaca_eval_lc_win_rate"] = lc
    samples = [[r["instruction"], r["output_2"], r["output_1"], r["preference"], preference_verdict(r["preference"])]
               for r in records]
    columns = ["instruction", "answer", "reference answer", "preference", "verdict"]
    return Result(result=result, metrics=metrics, headline=headline, summary=summary, notes=notes,
                  tables=[Table("alpaca_eval_samples", columns, samples)])


def preference_verdict(preference: float | None) -> str:
    """alpaca_eval's preference in [1, 2] (2 = the model's answer) in words, for the tracker's samples table."""
    if preference is None:
        return "unreadable"
    return "model" if preference > 1.5 else "reference" if preference < 1.5 else "tie"


def item_preferences(records: list[dict[str, Any]], version: str, reference: str) -> dict[str, Any]:
    """The model vs the AlpacaEval reference outputs, per instruction: preference in [1, 2] (0 = a draw) → 2p − 3,
    i.e. +1 win, 0 draw, −1 loss (v2's soft preferences in between); the mean is 2 × win rate − 1."""
    differences = {}
    for i, r in enumerate(records):
        p = r["preference"]
        if p is not None and math.isfinite(float(p)):
            differences[str(i)] = 0.0 if p == 0 else 2.0 * float(p) - 3.0
    return compare_differences(differences, f"AlpacaEval {version} preference, win +1 / draw 0 / loss −1",
                               higher_is_better=True, partner=reference).to_dict()


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    lc = metrics.get("length_controlled_winrate")
    return {"AlpacaEval win %": metrics.get("win_rate"), **({"AlpacaEval LC %": lc} if lc is not None else {})}


register(Suite("alpaca_eval", AlpacaEvalConfig, run, prompts=prompts, validate=validate, preflight=preflight,
               report=report, description="judged win rate vs a reference model's outputs on 805 instructions"))
