"""Filter instruction data without Hydra: `score`, `select` and `filter` on the pipeline's stages and cache."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from superfilter import stages
from superfilter.artifacts import Artifact
from superfilter.contracts import DEFAULT_MODEL, SCORE_COLUMNS, SCORES_FILE, SUBSET_FILE, TURN_COLUMNS
from superfilter.data import DataConfig, Example, check_encodable, iter_raw_records, parse_record
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig, cache_dir, load_tokenizer, model_from_name
from superfilter.presets import filter_preset
from superfilter.runtime import RuntimeConfig
from superfilter.scoring import ScoreConfig
from superfilter.selection import SELECTORS, SelectConfig, candidate_table, make_embed, output_scores, token_counts
from superfilter.selection import select as run_selector
from superfilter.settings import FilterRunConfig, ModelsConfig, check_seed, check_types, type_problem
from superfilter.tracking import TrackingConfig

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "SUPERFILTER_ARTIFACTS"
SCORE_OPTIONS = tuple(f.name for f in fields(ScoreConfig))
RUNTIME_OPTIONS = tuple(f.name for f in fields(RuntimeConfig))
SELECT_OPTIONS = tuple(f.name for f in fields(SelectConfig) if f.name not in ("name", "scorer"))
ADDED_COLUMNS = tuple(c for c in (*SCORE_COLUMNS, *TURN_COLUMNS) if c != "id")  # what score() adds to each record
COMMON_OPTIONS = ("fields", "format", "artifact_root")


@dataclass
class Records:
    """The caller's data as raw records, and what is needed to hand back the same type."""

    rows: list[dict[str, Any]]
    kind: str  # path | list | dataset | dataframe
    original: Any = None  # the Dataset or DataFrame passed in
    path: Path | None = None
    where: list[str] | None = None  # per record, how an error message names it (file:line)

    def label(self, i: int) -> str:
        return self.where[i] if self.where else f"{self.kind}[{i}]"


# Input and output: a path, a list of dicts, a datasets.Dataset or a pandas DataFrame.


def read_records(data: Any) -> Records:
    if isinstance(data, (str, os.PathLike)):
        if not os.fspath(data):
            raise DataError("data is an empty path; give a JSON, JSONL or Parquet file")
        path = Path(data).expanduser()
        numbered = list(iter_raw_records(path))
        return Records([r for _, r in numbered], "path", path=path.resolve(),
                       where=[f"{path}:{line}" for line, _ in numbered])
    if _is_dataset(data):
        return check_writable(Records(_present(data.to_list()), "dataset", original=data))
    if isinstance(data, pd.DataFrame):
        return check_writable(Records(_present(data.astype(object).where(data.notna(), None).to_dict("records")),
                                      "dataframe", original=data))
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        return check_writable(Records(list(data), "list"))
    raise DataError(f"data must be a path (JSON/JSONL/Parquet), a list of dicts, a datasets.Dataset or a pandas "
                    f"DataFrame, got {type(data).__name__}")


def check_writable(records: Records) -> Records:
    """In-memory records are written to JSONL for the prepare stage: one that cannot be fails here, by position,
    as a file holding it would fail to read."""
    for i, row in enumerate(records.rows):
        try:
            json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
        except UnicodeEncodeError:
            check_encodable(row, records.label(i))
            raise
        except RecursionError:
            raise DataError(f"{records.label(i)}: nested too deeply to write as JSON") from None
        except (TypeError, ValueError) as e:  # a circular reference, a key that is not a string
            raise DataError(f"{records.label(i)}: cannot be written as JSON ({e})") from None
    return records


def check_no_score_columns(records: Records) -> None:
    """score() adds ADDED_COLUMNS to every record: one that already has such a column would lose it silently."""
    taken = set(ADDED_COLUMNS)
    if records.kind in ("dataset", "dataframe"):
        names = records.original.column_names if records.kind == "dataset" else records.original.columns
        clash, where = sorted(taken.intersection(map(str, names))), records.kind
    else:
        clash, where = [], ""
        for i, row in enumerate(records.rows):
            if isinstance(row, Mapping) and (clash := sorted(taken.intersection(row))):
                where = records.label(i)
                break
    if clash:
        raise DataError(f"{where}: the records already have {', '.join(clash)}, which scoring adds; rename or drop "
                        f"{'those columns' if len(clash) > 1 else 'that column'} first (to rescore a scored file, "
                        "drop its score columns)")


def _present(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A table gives every row every column: a null there means the record has no such field (a `messages` record
    # in a table that also holds `conversations` ones).
    return [{k: v for k, v in row.items() if v is not None} for row in rows]


def _is_dataset(data: Any) -> bool:
    # Only a caller who already imported `datasets` can pass a Dataset: no import (and its start-up cost) otherwise.
    datasets = sys.modules.get("datasets")
    return datasets is not None and isinstance(data, datasets.Dataset)


def parse_examples(records: Records, fmt: str, field_map: Mapping[str, str]) -> list[Example]:
    """Every record as an Example: a malformed one fails here, named by its position, before any model loads."""
    if not records.rows:
        raise DataError("no records" if records.path is None else f"{records.path}: no records")
    DataConfig(path="-", format=fmt, fields=dict(field_map)).validate()
    return [parse_record(row, fmt, field_map, records.label(i)) for i, row in enumerate(records.rows)]


def with_columns(records: Records, positions: Sequence[int], table: pd.DataFrame | None,
                 ids: Sequence[str]) -> Any:
    """records[positions] (all of them or a selection, in that order) with table's columns for their ids added."""
    values = (table.set_index("id").loc[list(ids)].reset_index(drop=True) if table is not None
              else pd.DataFrame(index=range(len(ids))))
    if records.kind == "dataset":
        # deferred: datasets is already loaded, the caller passed a Dataset
        from datasets import Value

        everything = list(positions) == list(range(len(records.rows)))
        dataset = records.original if everything else records.original.select(list(positions))
        dataset = dataset.remove_columns([c for c in values.columns if c in dataset.column_names])
        for column in values.columns:
            # A string column even when nothing was skipped (all null), never a column of type null.
            feature = Value("string") if column == "skip_reason" else None
            dataset = dataset.add_column(column, values[column].tolist(), feature=feature)
        return dataset
    if records.kind == "dataframe":
        frame = records.original.iloc[list(positions)].copy()
        for column in values.columns:
            frame[column] = values[column].to_numpy()
        return frame
    return [{**records.rows[p], **scores} for p, scores in zip(positions, values.to_dict("records"), strict=True)]


# Options: the score stage's, the runtime's and the selector's, checked by name.


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """root, else $SUPERFILTER_ARTIFACTS, else <user cache>/superfilter/artifacts.

    The user cache, not ./artifacts, so that calls from any folder share one cache and no folder appears in the
    caller's working directory; point it at a pipeline's artifact_root to share its prepare/score folders."""
    if root:
        return Path(root).expanduser()
    if env := os.environ.get(ARTIFACTS_ENV):
        return Path(env).expanduser()
    return cache_dir() / "artifacts"


def split_options(call: str, options: Mapping[str, Any], groups: Mapping[str, Sequence[str]],
                  explicit: Sequence[str]) -> dict[str, dict[str, Any]]:
    valid = sorted({*explicit, *(name for names in groups.values() for name in names)})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{call}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                          f"valid options: {', '.join(valid)}")
    return {group: {k: v for k, v in options.items() if k in names} for group, names in groups.items()}


def resolve_model(model: str | os.PathLike | ModelConfig) -> ModelConfig:
    """A conf/model name (smollm2_135m, gpt2, tiny, ...), a local folder, a Hub id, or a ModelConfig."""
    return model if isinstance(model, ModelConfig) else model_from_name(str(model))


def filter_config(method: str, options: Mapping[str, Any], model: ModelConfig | None) -> SelectConfig:
    """The selector's settings as conf/filter/<method>.yaml gives them (what `filter=<method>` runs), then options."""
    if method not in SELECTORS:
        raise ConfigError(f"method must be one of {', '.join(sorted(SELECTORS))}, got {method!r}")
    values = filter_preset(method) or {"name": method}
    if isinstance(values.get("embed_model"), str):  # ${model.weak} in the filter files: the scoring model
        values["embed_model"] = model
    values.update(options)
    if values.get("embed_model") is not None:
        values["embed_model"] = resolve_model(values["embed_model"])
    cfg = SelectConfig(**values)
    check_types(cfg, "filter.")
    cfg.validate()
    return cfg


def make_config(model: ModelConfig, data: DataConfig, score: ScoreConfig, runtime: RuntimeConfig, root: Path,
                select: SelectConfig | None = None, ratio: float = 0.1, seed: int = 42) -> FilterRunConfig:
    """The pipeline's config for these stages; the one model is both weak and strong (self_ifd scores with it)."""
    config = FilterRunConfig(data=data, model=ModelsConfig(weak=model, strong=model), score=score,
                    filter=select or SelectConfig(), runtime=runtime, tracking=TrackingConfig(mode="disabled"),
                    ratio=ratio, seed=seed, artifact_root=str(root), name="api")
    config.validate()
    if runtime.num_threads:  # as `python run.py runtime.num_threads=N` does
        # deferred: torch/transformers take seconds to import; loaded only when a model is
        import torch

        torch.set_num_threads(runtime.num_threads)
    return config


def data_config(field_map: Mapping[str, str] | None, fmt: str) -> DataConfig:
    """The source's schema; its path is set once the records have a file (prepare_records)."""
    data = DataConfig(name="api", path="-", format=fmt,
                      fields=dict(field_map) if isinstance(field_map, Mapping) else field_map or {})
    check_types(data)
    data.validate()
    return data


# The stages, shared with `python run.py`: same keys, same folders, same resume.


def prepare_records(config: FilterRunConfig, records: Records) -> Artifact:
    """The pipeline's prepare stage on the caller's file, or on a JSONL copy of in-memory records.

    The prepare key is the file's content hash, not its name, so the copy's name does not matter and the same
    records passed twice hit the cache."""
    if records.path is not None:
        return stages.prepare(replace(config, data=replace(config.data, path=str(records.path))))
    root = Path(config.artifact_root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=root, prefix=".records-", suffix=".jsonl",
                                     delete=False) as f:
        for row in records.rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    try:
        return stages.prepare(replace(config, data=replace(config.data, path=f.name)), label=records.kind)
    finally:
        os.unlink(f.name)


def score_artifacts(config: FilterRunConfig, records: Records) -> tuple[Artifact, Artifact]:
    """(prepare, score) artifacts of the records: built once, resumed after an interruption, then cache hits."""
    examples = prepare_records(config, records)
    return examples, stages.score(config, examples, config.model.weak)


# The public calls.


def score(data: Any, model: str | os.PathLike | ModelConfig = DEFAULT_MODEL, *,
          fields: Mapping[str, str] | None = None, format: str = "auto",
          artifact_root: str | os.PathLike | None = None, **options: Any) -> Any:
    """`data` with the score columns added to every record (n_prompt_tokens, n_response_tokens, loss_direct,
    loss_conditioned, ppl_direct, ppl_conditioned, ifd, skip_reason): the columns of the pipeline's subset.jsonl,
    NaN for a skipped record's values and skip_reason None for a scored one.

    data: a path (JSON/JSONL/Parquet; a list of dicts comes back), a list of dicts, a datasets.Dataset or a pandas
    DataFrame (the same type comes back). model: a conf/model name, a local folder or a Hub id. fields: our name →
    your column, e.g. {"instruction": "question", "output": "answer"}; ShareGPT/`messages` records need none.
    options: the score stage's (prompt, ifd_form, turns, boundary, max_length, max_skip_fraction, batch_tokens,
    shard_size) and the runtime's (device, num_processes, num_threads)."""
    parts = split_options("score", options, {"score": SCORE_OPTIONS, "runtime": RUNTIME_OPTIONS},
                          ("model", *COMMON_OPTIONS))
    config = make_config(resolve_model(model), data_config(fields, format), ScoreConfig(**parts["score"]),
                         RuntimeConfig(**parts["runtime"]), resolve_root(artifact_root))
    records = read_records(data)
    check_no_score_columns(records)
    examples = parse_examples(records, config.data.format, config.data.fields)
    _, scores = score_artifacts(config, records)
    table = output_scores(pd.read_parquet(scores.path / SCORES_FILE))
    return with_columns(records, range(len(records.rows)), table, [ex.id for ex in examples])


def select(scored: Any, ratio: float = 0.1, method: str = "superfilter", *, seed: int = 42,
           fields: Mapping[str, str] | None = None, format: str = "auto", device: str = "auto",
           model: str | os.PathLike | ModelConfig = DEFAULT_MODEL, **options: Any) -> Any:
    """The records `method` keeps at `ratio`, best first, as the same type as `scored` (the output of score();
    random, length and full need no scores). Exact duplicates count once. options: the selector's
    (threshold, keep_equal, budget_of, count, base, budget_tokens, budget_tokens_of, pool_ratio, embedder,
    embed_model, ...), with the defaults of conf/filter/<method>.yaml. model: whose tokenizer counts budget_tokens
    (filter() counts with its scoring model; here only the tokenizer loads)."""
    parts = split_options("select", options, {"select": SELECT_OPTIONS},
                          ("ratio", "method", "seed", "fields", "format", "device", "model"))
    for name, value, type_name in (("ratio", ratio, "float"), ("seed", seed, "int"), ("method", method, "str"),
                                   ("device", device, "str")):
        if (problem := type_problem(value, type_name)) is not None:
            raise ConfigError(f"{name} must be {problem}, got {value!r}")
    check_seed(seed)
    RuntimeConfig(device=device).validate()
    cfg = filter_config(method, parts["select"], model=None)
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"ratio must be in (0, 1], got {ratio}")
    records = read_records(scored)
    examples = parse_examples(records, format, data_config(fields, format).fields)
    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        first.setdefault(ex.id, i)
    unique = [examples[i] for i in first.values()]
    table_scores = scores_from_records(records, first)
    if SELECTORS[method].needs_scores and table_scores is None:
        raise ConfigError(f"method={method} ranks by IFD: pass the output of superfilter.score(...) "
                          "(records with an 'ifd' field)")
    table = candidate_table(unique, table_scores)
    embed = (make_embed({ex.id: ex for ex in unique}, cfg, RuntimeConfig(device=device))
             if SELECTORS[method].needs_embeddings else None)
    tokens = (token_counts(unique, load_tokenizer(resolve_model(model)), cfg.budget_tokens_of) if cfg.budget_tokens
              else None)
    choice = run_selector(table, cfg, ratio, seed, embed, tokens)
    return with_columns(records, [first[i] for i in choice.ids], None, choice.ids)


def filter(data: Any, ratio: float = 0.1, method: str = "superfilter",
           model: str | os.PathLike | ModelConfig = DEFAULT_MODEL, *, seed: int = 42,
           fields: Mapping[str, str] | None = None, format: str = "auto",
           artifact_root: str | os.PathLike | None = None, **options: Any) -> Any:
    """select(score(data, model), ratio, method) through the pipeline's cached score and select stages: the records
    kept, best first, with their score columns. options: those of score() and select() (budget_tokens counts
    tokens of `model`'s tokenizer)."""
    parts = split_options("filter", options,
                          {"score": SCORE_OPTIONS, "runtime": RUNTIME_OPTIONS, "select": SELECT_OPTIONS},
                          ("ratio", "method", "model", "seed", *COMMON_OPTIONS))
    model_cfg = resolve_model(model)
    config = make_config(model_cfg, data_config(fields, format), ScoreConfig(**parts["score"]),
                         RuntimeConfig(**parts["runtime"]), resolve_root(artifact_root),
                         filter_config(method, parts["select"], model_cfg), ratio, seed)
    records = read_records(data)
    check_no_score_columns(records)
    examples = parse_examples(records, config.data.format, config.data.fields)
    prepared = prepare_records(config, records)
    scores = stages.scores_for_selection(config, prepared)
    subset = stages.select(config, prepared, scores)
    with open(subset.path / SUBSET_FILE, encoding="utf-8") as f:
        chosen = [json.loads(line)["id"] for line in f if line.strip()]
    first: dict[str, int] = {}
    for i, ex in enumerate(examples):
        first.setdefault(ex.id, i)
    table = output_scores(pd.read_parquet(scores.path / SCORES_FILE)) if scores is not None else None
    return with_columns(records, [first[i] for i in chosen], table, chosen)


def scores_from_records(records: Records, first: Mapping[str, int]) -> pd.DataFrame | None:
    """The score table of the unique records, from the columns score() added; None when there are none."""
    rows = [records.rows[i] for i in first.values()]
    if not any("ifd" in row for row in rows):
        return None
    table = pd.DataFrame({"id": list(first)})
    for column in ADDED_COLUMNS:
        values = [row.get(column) for row in rows]
        if column == "skip_reason":
            table[column] = ["" if v is None else str(v) for v in values]
        elif any(v is not None for v in values):
            table[column] = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype(np.float64)
    return table
