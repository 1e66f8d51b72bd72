"""Per-document scores from lm-eval's logged samples, so that two models' evaluations pair item by item."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from superfilter.artifacts import canonical_json

CACHE_VERSION = 1  # bump when what an entry's cached result holds changes


def item_scores(result: dict[str, Any], metric_key: str) -> dict[str, float]:
    """'<task>/<doc_id>' → the document's value of the headline metric '<metric>,<filter>', over every task the
    entry ran (a group's subtasks included). Documents whose value is not a number (corpus-level metrics such as
    BLEU keep tuples per document) are left out; no metric (a tag) gives nothing."""
    if not metric_key:
        return {}
    metric, _, filter_name = metric_key.partition(",")
    scores: dict[str, float] = {}
    for task, samples in (result.get("samples") or {}).items():
        for sample in samples:
            value = sample.get(metric)
            if sample.get("filter") != filter_name or isinstance(value, str) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                scores[f"{task}/{sample['doc_id']}"] = float(value)
    return scores


def higher_is_better(entry: dict[str, Any], metric_key: str) -> bool:
    """lm-eval's direction for the metric (per task in result["higher_is_better"]); True when it does not say."""
    metric = metric_key.partition(",")[0]
    directions = [d[metric] for d in (entry.get("higher_is_better") or {}).values()
                  if isinstance(d, dict) and isinstance(d.get(metric), bool)]
    return directions[0] if directions else True


def entry_key(model: str, settings: dict[str, Any]) -> str:
    """The cache key of one entry's result on one model: the model's artifact key and everything the entry ran with."""
    payload = {"version": CACHE_VERSION, "model": model, **settings}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
