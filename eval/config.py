"""Schema of the eval stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class EvalConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ()

    name: str = "default"
    suites: list[str] = field(default_factory=lambda: ["pairwise", "open_llm"])
    limit: int = 0
    reference: str = "full"  # pairwise partner, same strong model trained on: full (100%, the paper) | random (same budget) | none
