"""The conf/ presets, shipped inside the package, composed through Hydra's compose API: configs, models, selectors."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from superfilter.errors import UserError

if TYPE_CHECKING:
    from superfilter.models import ModelConfig

CONFIG_NAME = "config"
MODEL_GROUP = "model"  # conf/model/<name>.yaml: one file per model, selectable in either role
MODEL_ROLES = ("weak", "strong")
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"  # where the wheel puts the top-level conf/
CHECKOUT_CONF = Path(__file__).resolve().parents[1] / "conf"


def conf_dir() -> Path:
    """The presets: superfilter/conf in an installed wheel, else the checkout's top-level conf/."""
    for candidate in (PACKAGED_CONF, CHECKOUT_CONF):
        if (candidate / f"{CONFIG_NAME}.yaml").is_file():
            return candidate
    raise UserError(f"no {CONFIG_NAME}.yaml in {PACKAGED_CONF} or {CHECKOUT_CONF}: the installation lacks its conf/ "
                    "presets; reinstall superfilter")


def register_model_roles(store: ConfigStore) -> None:
    """Offer every conf/model/<name>.yaml as `model/weak=<name>` and `model/strong=<name>` (one file per model)."""
    for spec in sorted((conf_dir() / MODEL_GROUP).glob("*.yaml")):
        node = OmegaConf.load(spec)
        for role in MODEL_ROLES:
            store.store(group=f"{MODEL_GROUP}/{role}", name=spec.stem, node=node, provider="superfilter")


@contextmanager
def _hydra() -> Iterator[GlobalHydra]:
    # The library also runs inside `python run.py`, where Hydra is already initialised: set that aside meanwhile.
    from superfilter.config import register_configs

    register_configs()
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            yield GlobalHydra.instance()
    finally:
        GlobalHydra.instance().hydra = outer


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """What `python run.py <overrides>` composes, from the shipped presets."""
    with _hydra():
        return compose(config_name=CONFIG_NAME, overrides=list(overrides))


@functools.cache
def options(group: str) -> tuple[str, ...]:
    """The option names of a config group (`filter`, `model/weak`, ...), as `python run.py --help` lists them."""
    with _hydra() as hydra:
        return tuple(sorted(hydra.config_loader().get_group_options(group)))


@functools.cache
def _composed_group(group: str, option: str) -> dict[str, Any]:
    node = OmegaConf.select(compose_config([f"{group}={option}"]), group.replace("/", "."))
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def model_preset(name: str) -> ModelConfig | None:
    """The ModelConfig `model/weak=<name>` gives, or None when conf/model has no such name."""
    from superfilter.models import ModelConfig

    if name not in options(f"{MODEL_GROUP}/{MODEL_ROLES[0]}"):
        return None
    return ModelConfig(**_composed_group(f"{MODEL_GROUP}/{MODEL_ROLES[0]}", name))


def filter_preset(method: str) -> dict[str, Any] | None:
    """The selector's settings as `filter=<method>` composes them (`${model.weak}` left unresolved), or None when
    conf/filter has no such preset."""
    return dict(_composed_group("filter", method)) if method in options("filter") else None
