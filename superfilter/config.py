"""The pipeline's whole typed configuration tree (data stages, training, evaluation), registered with Hydra."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

from hydra import compose
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, OmegaConfBaseException

from eval.config import EvalConfig
from superfilter.errors import ConfigError
from superfilter.presets import CONFIG_NAME, hydra_conf, register_model_roles
from superfilter.settings import FilterRunConfig
from train.config import TrainConfig

STAGES = ("score", "select", "train", "eval")


@dataclass
class Config(FilterRunConfig):
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    plan: bool = False  # print the stages, models, memory and time this run needs, load nothing, and stop

    def validate(self) -> None:
        super().validate()
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ConfigError(f"stages: unknown {unknown}; choose a subset of {list(STAGES)}")
        self.train.validate()
        self.eval.validate()


def register_configs(store: ConfigStore | None = None) -> None:
    store = store or ConfigStore.instance()
    store.store(name="base_config", node=Config)
    register_model_roles(store)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """What `python run.py <overrides>` composes, from the shipped presets."""
    with hydra_conf(register_configs):
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


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
    config.validate()
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


