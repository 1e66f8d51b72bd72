"""Readers for what runs leave on disk: a stage folder (config.json, metrics.json, _SUCCESS) and a Hydra output
folder's run_summary.json, typed; a missing or malformed file fails naming the file and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superfilter.contracts import RUN_SUMMARY_FILE, STAGE_CONFIG_FILE, STAGE_METRICS_FILE, SUCCESS_MARKER
from superfilter.errors import DataError

_MISSING = object()


@dataclass(frozen=True)
class Upstream:
    """A stage folder another one read, as the reader's config.json records it."""

    key: str
    path: Path  # as written: relative paths are relative to where the run started


@dataclass(frozen=True)
class StageFolder:
    """One stage folder as `artifacts.run_stage` leaves it."""

    path: Path
    stage: str
    key: str
    version: int | None  # None in folders made by hand (tests, tools), which record no code version
    params: dict[str, Any]  # the config parts the key was computed from
    upstream: dict[str, Upstream]  # by stage name; the partner model's train stage is "reference"
    metrics: dict[str, Any]  # {} while the stage is unfinished
    complete: bool  # _SUCCESS is present


@dataclass(frozen=True)
class StageRecord:
    """One stage of a run as its run_summary.json lists it."""

    name: str  # the run's name for it: a stage name, or score_strong / train_reference for the second of a kind
    path: Path  # as written: relative paths are relative to where the run started
    key: str
    cache_hit: bool
    metrics: dict[str, Any]


@dataclass(frozen=True)
class RunSummary:
    """A Hydra output folder's run_summary.json: each stage the run used, and the run's command-line overrides."""

    file: Path
    stages: dict[str, StageRecord]
    overrides: list[str]
    wandb_group: str = ""  # where a report of these runs logs its table; empty in summaries written before it

    @property
    def folder(self) -> Path:
        return self.file.parent


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object; a missing file, bad JSON or another type fails naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], file: Path, prefix: str = "",
           default: Any = _MISSING) -> Any:
    """obj[name] checked against `kind`; missing → `default`, or an error naming file and field when there is none."""
    if name not in obj:
        if default is _MISSING:
            raise DataError(f"{file}: field {prefix}{name} is missing")
        return default
    value = obj[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{file}: field {prefix}{name} must be {expected}, got {type(value).__name__} {value!r}")
    return value


def read_stage(folder: Path) -> StageFolder:
    """The stage folder's config.json and, once written, its metrics.json (required when _SUCCESS is present)."""
    folder = Path(folder)
    config_file = folder / STAGE_CONFIG_FILE
    config = read_object(config_file)
    recorded = _field(config, "upstream", dict, config_file, default={})
    upstream = {}
    for name in recorded:
        entry = _field(recorded, name, dict, config_file, "upstream.")
        prefix = f"upstream.{name}."
        upstream[name] = Upstream(_field(entry, "key", str, config_file, prefix),
                                  Path(_field(entry, "path", str, config_file, prefix)))
    complete = (folder / SUCCESS_MARKER).exists()
    metrics_file = folder / STAGE_METRICS_FILE
    metrics = read_object(metrics_file) if complete or metrics_file.exists() else {}
    return StageFolder(
        path=folder, stage=_field(config, "stage", str, config_file), key=_field(config, "key", str, config_file),
        version=_field(config, "version", int, config_file, default=None),
        params=_field(config, "params", dict, config_file, default={}), upstream=upstream, metrics=metrics,
        complete=complete)


def subset_label(train_folder: Path) -> str | None:
    """'<filter> <ratio>%' (or '<filter> <N> tokens' for a token budget) of the subset a train stage folder was
    trained on; None when the folder is not a stage folder (no config.json) or its select stage is not recorded or no
    longer exists."""
    if not (Path(train_folder) / STAGE_CONFIG_FILE).is_file():
        return None
    select = read_stage(train_folder).upstream.get("select")
    if select is None or not (select.path / STAGE_CONFIG_FILE).is_file():
        return None
    selected = read_stage(select.path)
    where = selected.path / STAGE_CONFIG_FILE
    selector = _field(selected.params, "filter", dict, where, "params.")
    name = _field(selector, "name", str, where, "params.filter.")
    if selector.get("budget_tokens"):
        return f"{name} {int(selector['budget_tokens']):,} tokens"
    ratio = _field(selected.params, "ratio", (int, float), where, "params.")
    return f"{name} {100 * float(ratio):g}%"


def read_run_summary(path: Path) -> RunSummary:
    """A run_summary.json, given the file or the Hydra output folder holding it."""
    path = Path(path)
    file = path / RUN_SUMMARY_FILE if path.is_dir() else path
    summary = read_object(file)
    listed = _field(summary, "stages", dict, file)
    stages = {}
    for name in listed:
        entry = _field(listed, name, dict, file, "stages.")
        prefix = f"stages.{name}."
        stages[name] = StageRecord(
            name=name, path=Path(_field(entry, "path", str, file, prefix)), key=_field(entry, "key", str, file, prefix),
            cache_hit=_field(entry, "cache_hit", bool, file, prefix),
            metrics=_field(entry, "metrics", dict, file, prefix))
    # The Hydra glue adds the overrides; a summary written by pipeline.run's caller alone has none.
    overrides = _field(summary, "overrides", list, file, default=[])
    if not all(isinstance(o, str) for o in overrides):
        raise DataError(f"{file}: field overrides must be a list of strings, got {overrides!r}")
    wandb_group = _field(summary, "wandb_group", str, file, default="")
    return RunSummary(file=file, stages=stages, overrides=list(overrides), wandb_group=wandb_group)


def find_run_summaries(folder: Path) -> list[RunSummary]:
    """Every run_summary.json below `folder`: multirun jobs in launch order (numbered folders sort as numbers),
    other runs by path."""
    files = sorted(Path(folder).rglob(RUN_SUMMARY_FILE), key=_launch_order)
    return [read_run_summary(file) for file in files]


def _launch_order(file: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in file.parent.parts)
