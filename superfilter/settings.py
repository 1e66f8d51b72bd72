"""The data stages' typed configuration (prepare, score, select) and the checks every config tree shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from superfilter.artifacts import check_root
from superfilter.data import DataConfig
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.scoring import ScoreConfig
from superfilter.selection import SelectConfig
from superfilter.tracking import TrackingConfig


@dataclass
class ModelsConfig:
    weak: ModelConfig = field(default_factory=ModelConfig)
    strong: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class FilterRunConfig:
    """What prepare, score and select read; the pipeline's Config adds training and evaluation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelsConfig = field(default_factory=ModelsConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    filter: SelectConfig = field(default_factory=SelectConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ratio: float = 0.1
    seed: int = 42
    artifact_root: str = "artifacts"
    name: str = "default"  # the experiment's label: wandb group and report heading

    def validate(self) -> None:
        check_types(self)
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"ratio must be in (0, 1], got {self.ratio}")
        check_seed(self.seed)
        check_root(Path(self.artifact_root))
        for part in (self.data, self.score, self.filter, self.tracking, self.runtime):
            part.validate()


def type_problem(value: Any, type_name: str) -> str | None:
    """What a value of a declared field type should be, when it is not; None when it fits (or is not checked)."""
    if type_name == "bool":
        return None if isinstance(value, bool) else "true or false"
    if type_name == "int":
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if type_name == "float":
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if type_name == "str":
        return None if isinstance(value, str) else "a string"
    if type_name == "dict[str, str]":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        return None if ok else "a mapping of strings to strings"
    if type_name == "list[str]":
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        return None if ok else "a list of strings"
    return None


def check_types(obj: Any, prefix: str = "") -> None:
    """Every plain field of a config dataclass holds its declared type. Hydra checks this for run.py; the API and
    `--set` pass raw values, which would otherwise fail deep inside a stage."""
    for f in dataclasses.fields(obj):
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_types(value, f"{prefix}{f.name}.")
        elif (problem := type_problem(value, type_name)) is not None:
            raise ConfigError(f"{prefix}{f.name} must be {problem}, got {value!r}")


def check_seed(seed: int) -> None:
    if seed < 0:  # numpy's generators take no negative seed
        raise ConfigError(f"seed must be >= 0, got {seed}")


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (for artifact keys and saved configs). Not resolved: the
    dataclass holds final values, and a literal '${' in a path is text, not an interpolation."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=False)  # type: ignore[return-value]
