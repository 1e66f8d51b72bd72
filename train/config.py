"""Schema of the train stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass
class TrainConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    name: str = "lora"
    method: str = "lora"  # lora | full
    template: str = "alpaca"  # alpaca | vicuna_v1.1 | chat
    lr: float = 2e-4
    epochs: float = 3.0
    batch_size: int = 8  # global batch
    micro_batch_size: int = 4
    max_length: int = 512
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
