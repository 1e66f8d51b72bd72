"""AlpacaEval: win rate of a model's outputs against a reference model's on the 805 instructions."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

from eval.judge import Annotation, JudgeRequest, alpaca_eval_2_preference
from superfilter.errors import DataError

# The release whose protocol this follows: one annotation per instruction, the two outputs shown in a random
# order fixed per instruction, preference in [1, 2] (2 = the evaluated model), win rate = mean(preference − 1).
PINNED = "alpaca_eval==0.6.6"
VERSIONS: dict[str, dict[str, str]] = {
    "v1": {"reference": "text_davinci_003", "official_annotator": "alpaca_eval_gpt4", "kind": "preference",
           "headline": "win rate vs text-davinci-003 (AlpacaEval 1, the paper's)"},
    "v2": {"reference": "gpt4_1106_preview", "official_annotator": "weighted_alpaca_eval_gpt4_turbo",
           "kind": "alpaca_eval_2",
           "headline": "win rate vs GPT-4 Turbo, raw and length-controlled (AlpacaEval 2)"},
}
DF_GAMED = "df_gamed.csv"  # alpaca_eval's length-controlled GLM data; only on its Hub dataset tatsu-lab/alpaca_eval
HUB_DATASET = "tatsu-lab/alpaca_eval"
ANNOTATION_FIELDS = ("instruction", "output_1", "output_2", "generator_1", "generator_2", "preference")


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
    """Whether the model's output is shown first: alpaca_eval's own fixed pseudo-random order per instruction
    (RandomSwitchTwoColumnsProcessor with the annotator's seed 0), which cancels the judge's position bias on average
    and reproduces its prompts exactly."""
    return random.Random("is_switched_outputs" + instruction + "0").choices([False, True], k=1)[0]


def judge_requests(reference: Sequence[dict[str, str]], outputs: Sequence[str], version: str = "v1"
                   ) -> list[JudgeRequest]:
    """One request per instruction: v1 with the project's a/b preference prompt, v2 with alpaca_eval's
    weighted_alpaca_eval_gpt4_turbo prompt (model identifiers m and M)."""
    kind = VERSIONS[version]["kind"]
    requests = []
    for ref, output in zip(reference, outputs, strict=True):
        first, second = (output, ref["output"]) if model_first(ref["instruction"]) else (ref["output"], output)
        requests.append(JudgeRequest(kind, ref["instruction"], first, second))
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


def head_to_head(preferences: Sequence[float | None]) -> dict[str, Any]:
    """alpaca_eval's AbsoluteScoringRule.describe_head2head: preferences in [1, 2] (2 = the model), 0 or 1.5 a draw,
    None/NaN left out; win rate = 100 * mean(preference - 1), standard error = 100 * its sem (ddof 1)."""
    values = [1.5 if p == 0 else float(p) for p in preferences if p is not None and not math.isnan(float(p))]
    n_draws = sum(v == 1.5 for v in values)
    x = [v - 1 for v in values if 1.0 <= v <= 2.0]
    n = len(x)
    mean = sum(x) / n if n else math.nan
    sem = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1) / n) if n > 1 else math.nan
    discrete = [1.0 if v > 0.5 else 0.0 if v < 0.5 else 0.5 for v in x]
    return {"win_rate": 100 * mean, "standard_error": 100 * sem, "n_wins": sum(v > 0.5 for v in x),
            "n_wins_base": sum(v < 0.5 for v in x), "n_draws": n_draws, "n_total": n,
            "discrete_win_rate": 100 * sum(discrete) / n if n else math.nan}


def load_annotations(path: Path) -> list[dict[str, Any]]:
    """An annotations.json of one generator against one baseline; fails naming the file, record and field."""
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON annotations file: {e}") from e
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: expected a non-empty JSON list of annotation records")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {i} is not an object")
        for name in ANNOTATION_FIELDS:
            if name not in r:
                raise DataError(f"{path}: record {i} lacks the field {name!r}")
        p = r["preference"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, int | float)):
            raise DataError(f"{path}: record {i}: field 'preference' must be a number in [1, 2] (0 = draw) or null, "
                            f"got {p!r}")
        for name in ("generator_1", "generator_2"):
            if r[name] != records[0][name]:
                raise DataError(f"{path}: record {i}: field {name!r} is {r[name]!r} but record 0 has "
                                f"{records[0][name]!r}: one generator and one baseline per annotations file")
    return records


def summarize(records: Sequence[dict[str, Any]], df_gamed_path: str | Path | None = None,
              length_controlled: bool = True) -> dict[str, Any]:
    """Raw metrics (alpaca_eval's get_winrate when installed), average length, and the length-controlled win rate
    through alpaca_eval's own GLM, or `length_controlled_unavailable` saying why it is not there."""
    preferences = [r["preference"] for r in records]
    try:
        get_winrate = _alpaca_eval_metrics().get_winrate
    except ImportError:
        raw, computed_by = head_to_head(preferences), "superfilter (alpaca_eval not installed)"
    else:
        raw = {k: _plain(v) for k, v in get_winrate([{"preference": p} for p in preferences]).items()}
        computed_by = f"alpaca_eval {_alpaca_eval_version()}"
    out: dict[str, Any] = {"generator": records[0]["generator_2"], "baseline": records[0]["generator_1"], **raw,
                           "avg_length": int(sum(len(str(r["output_2"])) for r in records) / len(records)),
                           "computed_by": computed_by}
    if length_controlled:
        out.update(length_controlled_rate(records, df_gamed_path))
    else:
        out.update(length_controlled_winrate=None, length_controlled_unavailable="not computed for this baseline")
    return out


def _alpaca_eval_metrics() -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # alpaca_eval 0.6.6 imports it
        # deferred: the optional alpaca_eval extra
        import alpaca_eval.metrics

    return alpaca_eval.metrics


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _alpaca_eval_version() -> str:
    return version("alpaca_eval")


def length_controlled_rate(records: Sequence[dict[str, Any]], df_gamed_path: str | Path | None = None
                           ) -> dict[str, Any]:
    """alpaca_eval's get_length_controlled_winrate (GLM length_controlled_v1). Its df_gamed.csv comes from the Hub
    when reachable, else from `df_gamed_path`; without either the rate is unavailable, with the reason."""
    try:
        glm_winrate = _alpaca_eval_metrics().glm_winrate
    except ImportError as e:
        reason = f"alpaca_eval is not installed (pip install 'superfilter[alpaca_eval]'): {e}"
        return {"length_controlled_winrate": None, "length_controlled_unavailable": reason}
    source, reasons = None, []
    try:
        source = _hub_df_gamed()
    except Exception as e:  # any Hub failure (offline, no network, auth, missing file) means: use the local copy
        reasons.append(f"not from the Hub ({type(e).__name__})")
    if source is None:
        if df_gamed_path and Path(df_gamed_path).is_file():
            source = str(df_gamed_path)
        else:
            reasons.append(f"no local copy (eval.alpaca_eval.df_gamed_path / --df-gamed: {df_gamed_path or 'unset'})")
            return {"length_controlled_winrate": None,
                    "length_controlled_unavailable": f"{DF_GAMED} unavailable: " + "; ".join(reasons)}
    with _df_gamed_from(glm_winrate, source), warnings.catch_warnings():
        # scikit-learn announces changes to LogisticRegressionCV's arguments; alpaca_eval 0.6.6 still passes them.
        warnings.simplefilter("ignore", FutureWarning)
        metrics = glm_winrate.get_length_controlled_winrate(list(records), save_weights_dir=None,
                                                             is_warn_extreme_changes=False)
    return {"length_controlled_winrate": _plain(metrics["length_controlled_winrate"]),
            "lc_standard_error": _plain(metrics["lc_standard_error"]), "df_gamed": source}


def _hub_df_gamed() -> str:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ConnectionError("HF_HUB_OFFLINE is set")
    # deferred: huggingface_hub loads only when the Hub is asked
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id=HUB_DATASET, filename=DF_GAMED, repo_type="dataset")


@contextlib.contextmanager
def _df_gamed_from(glm_winrate: Any, path: str) -> Iterator[None]:
    """alpaca_eval reads df_gamed.csv only through hf_hub_download: point that one call at the chosen file."""
    original = glm_winrate.hf_hub_download

    def download(**kwargs: Any) -> str:
        if kwargs.get("filename") != DF_GAMED:
            raise FileNotFoundError(f"alpaca_eval asked for {kwargs.get('filename')!r}; only {DF_GAMED} is provided")
        return path

    glm_winrate.hf_hub_download = download
    try:
        yield
    finally:
        glm_winrate.hf_hub_download = original


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| generator | baseline | win rate (%) | standard error | n | draws | avg length | LC win rate (%) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lc = r["length_controlled_winrate"]
        lc_cell = f"{lc:.2f}" if lc is not None else "unavailable"
        lines.append(f"| {r['generator']} | {r['baseline']} | {r['win_rate']:.2f} | {r['standard_error']:.2f} "
                     f"| {r['n_total']} | {r['n_draws']} | {r['avg_length']} | {lc_cell} |")
    return "\n".join(lines)


def check_against_leaderboard(records: Sequence[dict[str, Any]], published: dict[str, str]) -> dict[str, Any]:
    """One generator's annotations (alpaca_eval's own, with the judge's raw replies) against its leaderboard row:
    our win rate and standard error beside the published ones, and every preference re-derived from the judge's
    log-probabilities with our output-order rule and weighted reading (records without a reply are draws upstream)."""
    ours = head_to_head([r["preference"] for r in records])
    rederived = []
    for r in records:
        raw = r.get("raw_completion")
        if not isinstance(raw, dict):
            continue
        p_second = alpaca_eval_2_preference(raw.get("logprobs"))
        if p_second is None:
            rederived.append(math.inf)
            continue
        p_model = 1.0 - p_second if model_first(r["instruction"]) else p_second
        rederived.append(abs(1.0 + p_model - float(r["preference"])))
    return {"generator": records[0]["generator_2"], "win_rate": ours["win_rate"],
            "published_win_rate": float(published["win_rate"]),
            "win_rate_diff": abs(ours["win_rate"] - float(published["win_rate"])),
            "standard_error_diff": abs(ours["standard_error"] - float(published["standard_error"])),
            "n_total": ours["n_total"], "published_n_total": int(published["n_total"]),
            "preferences_rederived": len(rederived), "max_preference_diff": max(rederived, default=0.0)}
