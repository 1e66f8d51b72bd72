"""AlpacaEval: win rate of a model's outputs against a reference model's on the 805 instructions."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.judge import Annotation, JudgeRequest
from superfilter.errors import DataError

# The release whose protocol this follows: one annotation per instruction, the two outputs shown in a random
# order fixed per instruction, preference in [1, 2] (2 = the evaluated model), win rate = mean(preference − 1).
PINNED = "alpaca_eval==0.6.6"
VERSIONS: dict[str, dict[str, str]] = {
    "v1": {"reference": "text_davinci_003", "official_annotator": "alpaca_eval_gpt4",
           "headline": "win rate vs text-davinci-003 (AlpacaEval 1, the paper's)"},
    "v2": {"reference": "gpt4_1106_preview", "official_annotator": "weighted_alpaca_eval_gpt4_turbo",
           "headline": "raw win rate vs GPT-4 Turbo (AlpacaEval 2; its length-controlled rate is not computed here)"},
}


def reference_file(version: str) -> str:
    return f"{VERSIONS[version]['reference']}_model_outputs.json"


def load_reference(path: Path, limit: int = 0) -> list[dict[str, str]]:
    """The reference's model_outputs.json (instruction, output, dataset, generator), first `limit` records."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read AlpacaEval reference outputs: {e}") from e
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a JSON list of {{instruction, output, ...}} records")
    out = []
    for i, r in enumerate(records[: limit or None]):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not isinstance(r.get("output"), str):
            raise DataError(f"{path}: record {i} needs string fields 'instruction' and 'output'")
        out.append({"instruction": r["instruction"], "output": r["output"], "dataset": str(r.get("dataset", "")),
                    "generator": str(r.get("generator", ""))})
    return out


def model_first(instruction: str) -> bool:
    """Whether the model's output is shown first: a fixed pseudo-random order per instruction, which cancels the
    judge's position bias on average [alpaca_eval's is_randomize_output_order]."""
    return hashlib.sha256(instruction.encode()).digest()[0] % 2 == 1


def judge_requests(reference: Sequence[dict[str, str]], outputs: Sequence[str]) -> list[JudgeRequest]:
    requests = []
    for ref, output in zip(reference, outputs, strict=True):
        first, second = (output, ref["output"]) if model_first(ref["instruction"]) else (ref["output"], output)
        requests.append(JudgeRequest("preference", ref["instruction"], first, second))
    return requests


def model_outputs(reference: Sequence[dict[str, str]], outputs: Sequence[str], generator: str) -> list[dict[str, str]]:
    """Records in alpaca_eval's model_outputs.json format, for its official CLI."""
    return [{"dataset": r["dataset"], "instruction": r["instruction"], "output": o, "generator": generator}
            for r, o in zip(reference, outputs, strict=True)]


def annotations(reference: Sequence[dict[str, str]], outputs: Sequence[str], judged: Sequence[Annotation],
                generator: str, annotator: str) -> list[dict[str, Any]]:
    """Per-instruction records in alpaca_eval's annotations format (output_1 = reference, output_2 = model)."""
    records = []
    for ref, output, a in zip(reference, outputs, judged, strict=True):
        p_model = _p_model(ref["instruction"], a)
        records.append({
            "instruction": ref["instruction"], "output_1": ref["output"], "generator_1": ref["generator"],
            "output_2": output, "generator_2": generator, "annotator": annotator,
            "preference": None if p_model is None else 1.0 + p_model, "raw_completion": a.raw,
            "error": a.error or None,
        })
    return records


def _p_model(instruction: str, annotation: Annotation) -> float | None:
    if not annotation.ok or annotation.p_second is None:
        return None
    return 1.0 - annotation.p_second if model_first(instruction) else annotation.p_second


def win_rate(reference: Sequence[dict[str, str]], judged: Sequence[Annotation]) -> dict[str, Any]:
    """Win rate (%) and its standard error; unreadable verdicts are counted and left out, not scored 50%."""
    p = [x for r, a in zip(reference, judged, strict=True) if (x := _p_model(r["instruction"], a)) is not None]
    n = len(p)
    mean = sum(p) / n if n else math.nan
    sem = math.sqrt(sum((x - mean) ** 2 for x in p) / (n - 1) / n) if n > 1 else math.nan
    return {"win_rate": 100 * mean, "standard_error": 100 * sem, "n": n,
            "n_wins": sum(x > 0.5 for x in p), "n_draws": sum(x == 0.5 for x in p),
            "unparseable": len(judged) - n}
