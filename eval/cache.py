"""Append-only JSON-lines stores keyed by content hash: results survive a crash and are shared across runs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from filelock import FileLock

from superfilter.errors import DataError

log = logging.getLogger(__name__)


class JsonlCache:
    """{key: record} backed by one .jsonl file; every put is appended and fsynced under a file lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        lines = self.path.read_text().split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                if number >= len(lines) - 1:  # the last line, cut short by a crash mid-write: recompute it
                    log.warning("%s: ignoring the unfinished last line %d", self.path, number)
                    continue
                raise DataError(f"{self.path}: line {number} is not a cache record with a 'key': {e}") from e

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def put(self, record: dict[str, Any]) -> None:
        self.put_many([record])

    def put_many(self, records: list[dict[str, Any]]) -> None:
        new = [r for r in records if r["key"] not in self.records]
        if not new:
            return
        for r in new:
            self.records[r["key"]] = r
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"), open(self.path, "a") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
