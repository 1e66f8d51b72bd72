"""Resumable shard files: the examples file read on demand, the layout, atomic shard writes and their merge."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from superfilter.artifacts import atomic_path, read_json, write_json_atomic
from superfilter.data import Example, file_digest
from superfilter.errors import UserError
from superfilter.scoring.config import ScoreConfig
from superfilter.scoring.engine import Engine
from superfilter.scoring.tables import plan_shards, progress_bar, score_shards

SHARD_DIR = "shards"
LAYOUT_FILE = "layout.json"


class ExampleFile(Sequence[Example]):
    """The records of an examples.jsonl, read on demand by byte offset: memory holds offsets, not records."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        offsets, costs = [], []
        position = 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(position)
                    costs.append(len(line))
                position += len(line)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.costs = np.asarray(costs, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return Example.from_dict(json.loads(f.readline()))


def shard_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"{shard:05d}.parquet"


def marker_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"{shard:05d}.done"


def shard_done(shard_dir: Path, shard: int) -> bool:
    return marker_path(shard_dir, shard).exists() and shard_path(shard_dir, shard).exists()


def write_shard(shard_dir: Path, shard: int, table: pd.DataFrame, seconds: float) -> None:
    """Parquet first (temp name, fsync, rename), then the marker: a marker always means a complete file."""
    with atomic_path(shard_path(shard_dir, shard)) as tmp:
        table.to_parquet(tmp, index=False)
    write_json_atomic(marker_path(shard_dir, shard), {"records": len(table), "seconds": seconds})


def load_or_plan_layout(shard_dir: Path, examples: ExampleFile, shard_size: int) -> list[list[int]]:
    """The shard layout of this folder: planned once, then reused by every resumed run whatever its settings."""
    path = shard_dir / LAYOUT_FILE
    digest = file_digest(examples.path)
    if path.exists():
        layout = read_json(path)
        if layout["examples_sha256"] != digest or layout["n_records"] != len(examples):
            raise UserError(f"{shard_dir} holds shards of other data ({layout['n_records']} records); delete it")
        return layout["shards"]
    shards = plan_shards(examples.costs, shard_size)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"examples_sha256": digest, "n_records": len(examples), "shard_size": shard_size,
                             "shards": shards})
    return shards


def score_shards_to_dir(engine: Engine, examples: ExampleFile, layout: list[list[int]], todo: Sequence[int],
                        cfg: ScoreConfig, shard_dir: Path, progress: bool, position: int = 0) -> None:
    shards = [layout[s] for s in todo]
    work = float(sum(examples.costs[s].sum() for s in shards))
    started = time.perf_counter()

    def write(i: int, table) -> None:
        nonlocal started
        write_shard(shard_dir, todo[i], table, time.perf_counter() - started)
        started = time.perf_counter()

    with progress_bar(work, progress, position, n_records=sum(len(s) for s in shards)) as bar:
        score_shards(engine, examples, shards, examples.costs, cfg, bar, write)


def merge_shards(shard_dir: Path, layout: list[list[int]], n_records: int):
    """All shards as one Arrow table in input order; fails on any duplicate, missing or misplaced record.

    Arrow, not pandas: concatenation shares the shards' buffers, so the merge costs about one copy of the table.
    """
    # deferred: pyarrow loads only for Parquet files
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for shard, indices in enumerate(layout):
        table = pq.read_table(shard_path(shard_dir, shard))
        if not np.array_equal(table.column("_index").to_numpy(), indices):
            raise RuntimeError(f"{shard_path(shard_dir, shard)}: holds other records than the layout assigns it")
        tables.append(table)
    merged = pa.concat_tables(tables)
    index = merged.column("_index").to_numpy()
    counts = np.bincount(index, minlength=n_records)
    if len(counts) != n_records or (counts != 1).any():
        raise RuntimeError(f"{shard_dir}: shards do not cover each of the {n_records} records exactly once")
    return merged.take(np.argsort(index, kind="stable")).drop_columns(["_index"])


def write_parquet_atomic(table, path: Path) -> None:
    # deferred: pyarrow loads only for Parquet files
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
