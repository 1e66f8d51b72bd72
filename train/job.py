"""The training job every rank reads (train_config.json), and its inputs checked: subset, template, encoding."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from superfilter.data import Example
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tokenized import Encoded
from train.collate import EncodeReport
from train.config import TrainConfig

log = logging.getLogger(__name__)

JOB_FILE = "train_config.json"  # the exact, resolved training job; every rank reads it


@dataclass
class TrainJob:
    """Everything a rank needs, written to the stage folder before training starts."""

    subset_path: str
    model: ModelConfig
    train: TrainConfig
    seed: int
    runtime: RuntimeConfig

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainJob:
        return cls(d["subset_path"], ModelConfig(**d["model"]), TrainConfig.from_dict(d["train"]), d["seed"],
                   RuntimeConfig(**d["runtime"]))


def read_subset(path: Path) -> list[Example]:
    """The selected records (score columns are ignored); a bad line fails naming file and line."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                examples.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{path}:{lineno}: not a subset record ({type(e).__name__}: {e})") from e
    if not examples:
        raise DataError(f"{path}: the subset is empty, nothing to train on (check the filter and ratio)")
    return examples


def check_template(model: ModelConfig, cfg: TrainConfig) -> None:
    if cfg.template == "chat" and not model.chat_template:
        raise ConfigError(f"train.template=chat but model {model.name} sets chat_template=false; "
                          "use train.template=alpaca or vicuna_v1.1")


def check_encoded(encoded: list[Encoded], enc: EncodeReport, tokenizer: Any, subset: Path, template: str) -> None:
    dropped = enc.n_records - enc.n_kept
    if dropped:
        log.warning("train: %d of %d records skipped (%d longer than max_length with truncation=drop, %d with no "
                    "response token within max_length, %d empty outputs, %d multi-turn under template=alpaca); "
                    "%d kept but truncated", dropped, enc.n_records, enc.n_dropped_too_long,
                    enc.n_dropped_prompt_too_long, enc.n_dropped_empty_output, enc.n_dropped_multi_turn,
                    enc.n_truncated)
    if not encoded:
        if enc.n_dropped_multi_turn:
            raise DataError(f"{subset}: {enc.n_dropped_multi_turn} of {enc.n_records} records are multi-turn and "
                            f"template={template} has no multi-turn form; use train.template=vicuna_v1.1 or chat")
        raise DataError(f"{subset}: none of the {enc.n_records} records has a response token within "
                        f"train.max_length (longest record: {enc.max_tokens_seen} tokens); raise train.max_length")
    if not any(e.labels[-1] == tokenizer.eos_token_id for e in encoded):
        log.warning("train: no reply ends in the tokenizer's EOS token; the model will not learn to stop")
