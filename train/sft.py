"""The train stage: finetune the strong model on subset.jsonl; writes model/ (safetensors) into the stage folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train.config import TrainConfig


def train_stage(
    subset_path: Path, model: ModelConfig, cfg: TrainConfig, seed: int, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    raise NotImplementedError
