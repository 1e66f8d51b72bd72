"""IFD scoring: per-example PPL(y), PPL(y|x) and IFD with a weak model → scores.parquet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun


@dataclass
class ScoreConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_tokens",)

    prompt: str = "none"  # none (Superfiltering) | alpaca (Cherry) | chat (tokenizer's chat template)
    ifd_form: str = "ppl_ratio"  # ppl_ratio (Superfiltering) | loss_ratio (Cherry)
    turns: str = "last"  # last | each (multi-turn records)
    boundary: str = "reference"  # reference (re-tokenise the prefix, as the authors) | exact
    max_length: int = 1024
    max_skip_fraction: float = 0.5
    batch_tokens: int = 8192


def score_stage(
    examples_path: Path, model: ModelConfig, cfg: ScoreConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Write out_dir/scores.parquet (+ plots) for the records in examples_path; return metrics."""
    raise NotImplementedError
