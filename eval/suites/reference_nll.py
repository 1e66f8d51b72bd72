"""Suite `reference_nll`: mean per-token NLL of reference answers under the model, in its training template.

No generation and no judge: each reference answer is scored with the same tokenisation and labels as training
(superfilter.tokenized.encode), per item, so two models are compared by paired differences with a bootstrap interval
(superfilter.stats). It measures how likely the model finds a fixed answer, not how good its own answers are.
Per-item values are cached per model (<cache>/reference_nll/<model key>.jsonl), so a model compared with two
partners is scored once.

    python -m eval.commands.reference_nll <stage A>/eval/reference_nll/<set>.jsonl <stage B>/.../<set>.jsonl
prints the paired comparison of two evaluations' per-item files.
"""

from __future__ import annotations

import gc
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.cache import JsonlCache
from eval.generation import load_trained, model_key, training_template
from eval.registry import Context, Result, Suite, register
from superfilter.artifacts import canonical_json, write_json_atomic, write_jsonl
from superfilter.data import Example, iter_raw_records, resolve_path
from superfilter.errors import ConfigError, DataError, check_limit
from superfilter.scoring.engine import batch_nll, make_engine
from superfilter.scoring.plans import Pass
from superfilter.stats import PAIRED, compare
from superfilter.tokenized import IGNORE, encode

ITEMS_DIR = "reference_nll"  # eval/reference_nll/<set>.jsonl: one line per item, per model
CACHE_VERSION = 1  # bump when item_nll changes what it computes: cached values then stop matching
UNIT = "nats/token"


@dataclass
class ReferenceNllConfig:
    # Instruction/answer files: a JSON list or JSON lines of {instruction, [input], output} (alpaca_eval's
    # model_outputs.json, Alpaca), or Arena-Hard answer lines ({messages: [user, assistant]}).
    paths: list[str] = field(default_factory=lambda: ["data/alpaca_eval/text_davinci_003_model_outputs.json"])
    limit: int = 0  # first N items per file; 0 = eval.limit
    # By set name (the file name up to its first dot): records skipped at the start of a file, e.g.
    # {alpaca_5000: 600} scores Alpaca answers after the 600 records data=alpaca_600 trains on; and a set's own
    # limit, in place of `limit`.
    offsets: dict[str, int] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    max_tokens: int = 1024  # prompt + answer; longer items keep their first max_tokens tokens (counted)
    batch_size: int = 1  # items per forward pass


def validate(cfg: ReferenceNllConfig, eval_cfg: Any) -> None:
    check_limit("eval.reference_nll.limit", cfg.limit)
    if not cfg.paths:
        raise ConfigError("eval.reference_nll.paths is empty: name at least one instruction/answer file")
    if cfg.max_tokens < 2 or cfg.batch_size < 1:
        raise ConfigError("eval.reference_nll.max_tokens must be >= 2 and eval.reference_nll.batch_size >= 1")
    names = [set_name(path) for path in cfg.paths]
    if len(set(names)) < len(names):  # per-item files and result rows are keyed by that name
        raise ConfigError(f"eval.reference_nll.paths: two files share a set name ({names}); rename one")
    if PAIRED in names:  # the metrics' key for the paired comparisons
        raise ConfigError(f"eval.reference_nll.paths: a file may not be named {PAIRED}.*; rename it")
    for key, values in (("offsets", cfg.offsets), ("limits", cfg.limits)):
        for name, value in values.items():
            if name not in names:
                raise ConfigError(f"eval.reference_nll.{key}.{name}: no file in eval.reference_nll.paths has that "
                                  f"set name (set names: {names})")
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"eval.reference_nll.{key}.{name} must be an integer >= 0, got {value!r}")


def preflight(cfg: ReferenceNllConfig, eval_cfg: Any) -> None:
    for path in cfg.paths:
        offset = cfg.offsets.get(set_name(path), 0)
        if not load_items(path, 1, offset):
            raise DataError(f"eval.reference_nll.offsets.{set_name(path)}={offset}: {path} has no record after it")


def set_name(path: str) -> str:
    return Path(path).name.split(".")[0]


def load_items(path: str, limit: int = 0, offset: int = 0) -> list[dict[str, str]]:
    """[{id, instruction, input, output}] of `limit` records from record `offset` on (0 = to the end); fails naming
    the file and record. An id is the record's own, else its position in the file."""
    file = resolve_path(path)
    if not file.is_file():
        raise DataError(f"eval.reference_nll.paths: {file} does not exist")
    records = [r for _, r in iter_raw_records(file)]
    items = []
    for i, r in enumerate(records[offset : offset + limit if limit else None], start=offset):
        if isinstance(r, dict) and isinstance(r.get("messages"), list) and len(r["messages"]) >= 2:
            user, answer = r["messages"][-2].get("content"), r["messages"][-1].get("content")
            answer = answer.get("answer") if isinstance(answer, dict) else answer
            r = {"instruction": user, "output": answer, "id": r.get("uid", i)}
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise DataError(f"{file}: record {i} needs string fields 'instruction' and 'output' (or Arena-Hard "
                            "'messages')")
        items.append({"id": str(r.get("id", i)), "instruction": r["instruction"], "input": str(r.get("input") or ""),
                      "output": r["output"]})
    return items


def item_nll(model: Any, tokenizer: Any, items: Sequence[dict[str, str]], template: str, max_tokens: int,
             batch_size: int) -> list[dict[str, Any]]:
    """Per item: summed and mean NLL (nats) of the answer tokens given the prompt, token count, truncation.

    The answer is the end of the rendered text, so the scoring engine's passes fit: the model runs to its hidden
    states and only the positions that predict answer tokens go through the LM head, a bounded chunk at a time
    (Gemma's is 262k wide: full log-probabilities of a 384-token item are 400 MB).
    """

    engine = make_engine(model, tokenizer)
    passes = []
    for item in items:
        enc = encode(Example.create(item["instruction"], item["input"], item["output"]), template, tokenizer)
        labels = enc.labels[:max_tokens]
        # Position p - 1 predicts token p; position 0 has no prediction and is never scored.
        scored = [p for p in range(1, len(labels)) if labels[p] != IGNORE]
        if scored and scored != list(range(scored[0], len(labels))):
            raise ValueError(f"item {item['id']}: the answer is not the end of the rendered text")
        passes.append((Pass(enc.input_ids[:max_tokens], scored[0] if scored else len(labels)),
                       enc.n_tokens > max_tokens))
    sums = [0.0] * len(items)
    order = sorted((i for i, (p, _) in enumerate(passes) if p.n_targets), key=lambda i: len(passes[i][0].ids))
    for start in range(0, len(order), batch_size):  # similar lengths share a batch
        batch = order[start : start + batch_size]
        for i, total in zip(batch, batch_nll(engine, [passes[i][0] for i in batch]), strict=True):
            sums[i] = float(total)
    return [{"id": item["id"], "n_tokens": p.n_targets, "nll_sum": total,
             "nll_mean": total / p.n_targets if p.n_targets else math.nan, "truncated": truncated}
            for item, (p, truncated), total in zip(items, passes, sums, strict=True)]


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    mean = sum(finite) / n if n else math.nan
    se = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1) / n) if n > 1 else math.nan
    return mean, se


def paired(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]], name: str = "",
           partner: str = "") -> dict[str, Any]:
    """Per-item (ours − theirs) mean NLL on the items both have: Δ, its bootstrap interval, the verdict (lower is
    better) and the share of items where ours is lower (superfilter.stats.Comparison, as a dict)."""
    measure = f"reference NLL {name} ({UNIT})" if name else f"reference NLL ({UNIT})"
    return compare({r["id"]: r["nll_mean"] for r in ours}, {r["id"]: r["nll_mean"] for r in theirs}, measure,
                   higher_is_better=False, partner=partner).to_dict()


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    mean, se = mean_and_se([r["nll_mean"] for r in rows])
    tokens = sum(r["n_tokens"] for r in rows)
    scored = sum(r["n_tokens"] > 0 for r in rows)
    # An item whose prompt alone fills max_tokens has no answer token left: counted, never scored.
    return {"n": scored, "n_prompt_too_long": len(rows) - scored, "nll_mean": mean, "standard_error": se,
            "token_weighted_nll": sum(r["nll_sum"] for r in rows) / tokens if tokens else math.nan,
            "n_truncated": sum(r["truncated"] for r in rows), "n_tokens": tokens}


def item_key(model: str, template: str, max_tokens: int, item: dict[str, str]) -> str:
    payload = {"version": CACHE_VERSION, "model": model, "template": template, "max_tokens": max_tokens,
               "instruction": item["instruction"], "input": item["input"], "output": item["output"]}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _score(ctx: Context, model_dir: Path, sets: dict[str, list[dict[str, str]]], cfg: ReferenceNllConfig
           ) -> dict[str, list[dict[str, Any]]]:
    """Per-item rows of every set; items already in the model's cache are not scored again (nor the model loaded)."""
    template = training_template(model_dir, ctx.cfg.template)
    model_id = model_key(model_dir)
    cache = JsonlCache(ctx.cache_root / ITEMS_DIR / f"{model_id.replace(':', '-')[:40]}.jsonl")
    keys = {name: [item_key(model_id, template, cfg.max_tokens, item) for item in items]
            for name, items in sets.items()}
    todo = [(name, i) for name, ks in keys.items() for i, k in enumerate(ks) if k not in cache]
    if todo:
        model, tokenizer = load_trained(model_dir, ctx.device)
        try:
            rows = item_nll(model, tokenizer, [sets[name][i] for name, i in todo], template, cfg.max_tokens,
                            cfg.batch_size)
        finally:
            del model
            gc.collect()
        cache.put_many([{**{k: v for k, v in row.items() if k != "id"}, "key": keys[name][i]}
                        for (name, i), row in zip(todo, rows, strict=True)])
    return {name: [{"id": item["id"], **_cached(cache, key)} for item, key in zip(items, keys[name], strict=True)]
            for name, items in sets.items()}


def _cached(cache: JsonlCache, key: str) -> dict[str, Any]:
    return {k: v for k, v in cache.get(key).items() if k != "key"}


def run(ctx: Context, cfg: ReferenceNllConfig) -> Result:
    sets = {set_name(p): load_items(p, ctx.limit(cfg.limits.get(set_name(p), cfg.limit)),
                                    cfg.offsets.get(set_name(p), 0)) for p in cfg.paths}
    ours = _score(ctx, ctx.model_dir, sets, cfg)
    theirs = _score(ctx, ctx.reference_dir, sets, cfg) if ctx.reference_dir is not None else {}
    folder = ctx.eval_dir / ITEMS_DIR
    result: dict[str, Any] = {"model": ctx.model_name, "reference": ctx.reference_name, "max_tokens": cfg.max_tokens,
                              "unit": "nats per answer token", "sets": {}}
    lines = ["| set | N | mean NLL | ± SE | token-weighted | truncated | vs partner: Δ [95% CI] | lower on | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    comparisons = []
    for name in sets:
        write_jsonl(folder / f"{name}.jsonl", ours[name])
        entry = {"path": cfg.paths[list(sets).index(name)], "offset": cfg.offsets.get(name, 0),
                 "model": _summarise(ours[name]), "items": f"eval/{ITEMS_DIR}/{name}.jsonl"}
        if name in theirs:
            write_jsonl(folder / f"{name}.reference.jsonl", theirs[name])
            entry["partner"] = _summarise(theirs[name])
            entry["paired"] = paired(ours[name], theirs[name], name, ctx.reference_name)
            comparisons.append(entry["paired"])
        result["sets"][name] = entry
        m, p = entry["model"], entry.get("paired")
        versus = f"{_cell(p['delta'])} [{_cell(p['lo'])}, {_cell(p['hi'])}]" if p else "–"
        lower = f"{100 * p['share_better']:.0f}%" if p and p["n"] else "–"
        lines.append(f"| {name} | {m['n']} | {m['nll_mean']:.4f} | {m['standard_error']:.4f} "
                     f"| {m['token_weighted_nll']:.4f} | {m['n_truncated']} | {versus} | {lower} "
                     f"| {p['verdict'] if p else '–'} |")
    write_json_atomic(folder / "summary.json", result)
    metrics: dict[str, Any] = {name: {k: e["model"][k] for k in ("nll_mean", "standard_error", "n")}
                               for name, e in result["sets"].items()}
    if comparisons:
        metrics[PAIRED] = comparisons
    summary = [f"### Reference-answer NLL (nats per answer token, lower = the model finds the answers likelier; "
               f"partner {ctx.reference_name})", "", *lines]
    notes = ["reference_nll measures how likely the model finds fixed reference answers, not the quality of its "
             "own answers; it favours models trained on answers like the references (long, GPT-4 style)"]
    return Result(result=result, metrics=metrics,
                  headline={f"reference_nll/{n}": m["nll_mean"] for n, m in metrics.items() if n != PAIRED},
                  summary=summary, notes=notes)


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def report(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"ref NLL {name}": m.get("nll_mean") for name, m in metrics.items()
            if isinstance(m, dict) and name != PAIRED}


register(Suite("reference_nll", ReferenceNllConfig, run, validate=validate, preflight=preflight, report=report,
               needs_reference=True,  # the paired comparison with the partner, when eval.reference names one
               description="mean per-token NLL of reference answers in the training template, per item"))
