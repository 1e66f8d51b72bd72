"""The typed configuration tree: every group's schema, registered with Hydra's ConfigStore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from eval.config import EvalConfig
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
    config: Config = OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg  # type: ignore[assignment]
    validate(config)
    return config


def validate(config: Config) -> None:
    unknown = [s for s in config.stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"stages: unknown {unknown}; choose a subset of {list(STAGES)}")
    if not 0.0 < config.ratio <= 1.0:
        raise ConfigError(f"ratio must be in (0, 1], got {config.ratio}")
    for checker in (config.data, config.score, config.filter, config.train, config.eval, config.tracking):
        check = getattr(checker, "validate", None)
        if check is not None:
            check()


def as_dict(obj: Any) -> dict[str, Any]:
    """A plain, JSON-able dict of a config dataclass (for artifact keys and saved configs)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]
