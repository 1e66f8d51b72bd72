"""The eval stage: run the configured suites on a trained model; writes eval/*.json into the stage folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.config import EvalConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun


def eval_stage(
    model_dir: Path, reference_dir: Path | None, cfg: EvalConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    raise NotImplementedError
