"""Selectors (a registry): score table + examples + budget → the chosen subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun


@dataclass
class SelectConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    name: str = "superfilter"
    scorer: str = "weak"  # which model's scores the selector reads: weak | strong (self_ifd)
    threshold: float = 1.0
    count: int = 0  # exact budget; 0 = use the top-level ratio
    base: int = 0  # budget = int(base × ratio), e.g. 52002 to reproduce the authors' Alpaca sizes


def select_stage(
    examples_path: Path, scores_path: Path | None, cfg: SelectConfig, ratio: float, seed: int,
    runtime: RuntimeConfig, out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Write out_dir/subset.jsonl (records with their scores); return metrics."""
    raise NotImplementedError
