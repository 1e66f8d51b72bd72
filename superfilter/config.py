"""The typed configuration tree: every group's schema, registered with Hydra's ConfigStore."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from eval.config import EvalConfig
from superfilter.artifacts import check_root
from superfilter.data import DataConfig
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig
from superfilter.presets import register_model_roles
from superfilter.runtime import RuntimeConfig
from superfilter.scoring import ScoreConfig
from superfilter.selection import SelectConfig
from superfilter.tracking import TrackingConfig
from train.config import TrainConfig

STAGES = ("score", "select", "train", "eval")


@dataclass
class ModelsConfig:
    weak: ModelConfig = field(default_factory=ModelConfig)
    strong: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelsConfig = field(default_factory=ModelsConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    filter: SelectConfig = field(default_factory=SelectConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    ratio: float = 0.1
    seed: int = 42
    artifact_root: str = "artifacts"
    name: str = "default"  # the experiment's label: wandb group and report heading


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    register_model_roles(store)


def to_config(cfg: DictConfig | Config) -> Config:
    """Turn Hydra's composed DictConfig into the typed dataclass tree and check values across groups."""
    if isinstance(cfg, DictConfig):
        unknown = unknown_keys(cfg)
        if unknown:
            raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                              "(a '+key=value' override adds a key that nothing reads)")
        try:
            config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
        except OmegaConfBaseException as e:
            raise ConfigError(omegaconf_message(e)) from None
    else:
        config = cfg
    validate(config)
    return config


def unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of typed nodes that their dataclass does not declare: Hydra lets `+key=value` add them and
    OmegaConf.to_object drops them without a word."""
    schema = OmegaConf.get_type(node)
    declared = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    found: list[str] = []
    for key, value in node.items_ex(resolve=False):
        if declared is not None and key not in declared:
            found.append(f"{prefix}{key}")
        elif isinstance(value, DictConfig):
            found += unknown_keys(value, f"{prefix}{key}.")
    return found


def omegaconf_message(e: OmegaConfBaseException) -> str:
    key = getattr(e, "full_key", None)
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, InterpolationResolutionError):
        message += " (write a literal '${' as '\\${', e.g. data.path='my\\${x}.jsonl')"
    return f"{key}: {message}" if key else message


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


def validate(config: Config) -> None:
    check_types(config)
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; choose a subset of {list(STAGES)}")
    if not 0.0 < config.ratio <= 1.0:
        raise ConfigError(f"ratio must be in (0, 1], got {config.ratio}")
    check_seed(config.seed)
    check_root(Path(config.artifact_root))
    for checker in (config.data, config.score, config.filter, config.train, config.eval, config.tracking,
                    config.runtime):
        check = getattr(checker, "validate", None)
        if check is not None:
            check()


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (for artifact keys and saved configs). Not resolved: the
    dataclass holds final values, and a literal '${' in a path is text, not an interpolation."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=False)  # type: ignore[return-value]
