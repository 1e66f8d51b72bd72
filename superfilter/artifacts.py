"""Content-addressed stage folders: key = hash of what a stage reads; atomic completion; a file lock."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from filelock import FileLock

from superfilter.contracts import STAGE_CONFIG_FILE, STAGE_METRICS_FILE, SUCCESS_MARKER
from superfilter.errors import ConfigError
from superfilter.runs import read_object

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path
    cached: bool
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class PlannedStage:
    """A stage as plan_only() saw it: its folder (built or not), the config parts its key hashes, upstream keys."""

    artifact: Artifact
    params: dict[str, Any]
    upstream: tuple[str, ...]


_PLANNED: ContextVar[list[PlannedStage] | None] = ContextVar("planned_stages", default=None)


@contextmanager
def plan_only() -> Iterator[list[PlannedStage]]:
    """Inside, run_stage builds nothing: it returns each stage's folder (cached or not) and records it in the list
    yielded, so the pipeline's own code says which stages a run would build or reuse (`plan=true`)."""
    planned: list[PlannedStage] = []
    token = _PLANNED.set(planned)
    try:
        yield planned
    finally:
        _PLANNED.reset(token)


def planning() -> bool:
    return _PLANNED.get() is not None


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stage_key(stage: str, version: int, params: dict[str, Any], upstream: Sequence[Artifact] = ()) -> str:
    """sha256 of (stage, version, the config parts the stage reads, upstream keys)."""
    payload = {"stage": stage, "version": version, "params": params, "upstream": [a.key for a in upstream]}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def stage_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / key[:12]


def check_root(root: Path, subject: str = "") -> None:
    """A folder that cannot be created or written fails now, naming the culprit, not as an OS error mid-run.
    subject: how the message names the setting (default `artifact_root=<root>`)."""
    subject = subject or f"artifact_root={root}"
    probe = root
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{subject}: {probe} {'is a file, not' if probe.is_file() else 'is not'} a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{subject}: {probe} is not writable")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON so a reader sees either the old file or the whole new one, never half."""

    def write(f: TextIO) -> None:
        json.dump(obj, f, indent=2, sort_keys=True, default=str, allow_nan=True)
        f.write("\n")

    _write_atomic(path, write)


def write_jsonl(path: Path, records: Iterable[dict[str, Any]], allow_nan: bool = True) -> Path:
    """One JSON object per line, written like write_json_atomic: a reader sees the old file or the whole new one."""
    _write_atomic(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False, allow_nan=allow_nan) + "\n"
                                               for r in records))
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write text like write_json_atomic: a reader sees the old file or the whole new one."""
    _write_atomic(path, lambda f: f.write(text))


def _write_atomic(path: Path, write: Callable[[TextIO], None]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        write(f)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write with any library (pyarrow, pandas, ...); on success it is synced and
    renamed onto `path`, on failure removed: a reader sees the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def load_artifact(root: Path, stage: str, key: str) -> Artifact | None:
    path = stage_dir(root, stage, key)
    if not (path / SUCCESS_MARKER).exists():
        return None
    metrics_file = path / STAGE_METRICS_FILE
    metrics = read_object(metrics_file) if metrics_file.exists() else {}
    return Artifact(stage, key, path, cached=True, metrics=metrics)


def run_stage(
    root: Path,
    stage: str,
    version: int,
    params: dict[str, Any],
    upstream: Sequence[Artifact],
    build: Callable[[Path], dict[str, Any]],
) -> Artifact:
    """Return the stage's artifact, building it only if no completed folder with the same key exists.

    Build happens in `<dir>.partial/`, which survives a crash so the stage can resume inside it;
    config.json, metrics.json, then `_SUCCESS` are written before the folder is renamed into place.
    Check → lock → check again, so parallel sweep jobs wait for one build instead of repeating it.
    """
    key = stage_key(stage, version, params, upstream)
    final = stage_dir(root, stage, key)
    if (planned := _PLANNED.get()) is not None:
        artifact = load_artifact(root, stage, key) or Artifact(stage, key, final, cached=False)
        planned.append(PlannedStage(artifact, params, tuple(a.key for a in upstream)))
        return artifact
    if (found := load_artifact(root, stage, key)) is not None:
        log.info("%s: cache hit %s", stage, final)
        return found
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (found := load_artifact(root, stage, key)) is not None:
            log.info("%s: built by another job meanwhile, %s", stage, final)
            return found
        if final.exists():  # a folder without _SUCCESS cannot be trusted
            shutil.rmtree(final)
        partial = Path(str(final) + PARTIAL_SUFFIX)
        if partial.exists():
            log.info("%s: resuming in %s", stage, partial)
        partial.mkdir(exist_ok=True)
        write_json_atomic(
            partial / STAGE_CONFIG_FILE,
            {"stage": stage, "version": version, "key": key, "params": params,
             "upstream": {a.stage: {"key": a.key, "path": str(a.path)} for a in upstream}},
        )
        metrics = build(partial)
        write_json_atomic(partial / STAGE_METRICS_FILE, metrics)
        (partial / SUCCESS_MARKER).touch()
        os.replace(partial, final)
    log.info("%s: built %s", stage, final)
    return Artifact(stage, key, final, cached=False, metrics=metrics)
