"""The conf/ presets shipped inside the package: where they are, each group's options, a model's or selector's file."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import UserError

CONFIG_NAME = "config"
MODEL_GROUP = "model"  # conf/model/<name>.yaml: one file per model, selectable in either role
MODEL_ROLES = ("weak", "strong")
PACKAGED_CONF = Path(__file__).resolve().parent / "conf"  # where the wheel puts the top-level conf/
CHECKOUT_CONF = PROJECT_ROOT / "conf"


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
def hydra_conf(store: Callable[[ConfigStore], None] = register_model_roles) -> Iterator[GlobalHydra]:
    """Hydra initialised on the shipped conf/, with `store` registering the schemas it needs."""
    # The library also runs inside `python run.py`, where Hydra is already initialised: set that aside meanwhile.
    store(ConfigStore.instance())
    outer = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            yield GlobalHydra.instance()
    finally:
        GlobalHydra.instance().hydra = outer


@functools.cache
def options(group: str) -> tuple[str, ...]:
    """The option names of a config group (`filter`, `model/weak`, ...), as `python run.py --help` lists them."""
    with hydra_conf() as hydra:
        return tuple(sorted(hydra.config_loader().get_group_options(group)))


def _group_file(group: str, option: str) -> dict[str, Any]:
    node = OmegaConf.load(conf_dir() / group / f"{option}.yaml")
    return OmegaConf.to_container(node, resolve=False)  # type: ignore[return-value]


def model_preset(name: str) -> dict[str, Any] | None:
    """The fields of conf/model/<name>.yaml (what `model/weak=<name>` sets), or None when there is no such name."""
    if name not in options(f"{MODEL_GROUP}/{MODEL_ROLES[0]}"):
        return None
    return _group_file(MODEL_GROUP, name)


def filter_preset(method: str) -> dict[str, Any] | None:
    """The selector's settings as conf/filter/<method>.yaml gives them (`${model.weak}` left unresolved), or None
    when conf/filter has no such preset."""
    return _group_file("filter", method) if method in options("filter") else None
