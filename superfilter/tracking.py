"""The only importer of wandb: one run per executed stage, offline by default, a no-op when disabled."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from superfilter.errors import ConfigError

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")


@dataclass
class TrackingConfig:
    mode: str = "offline"  # offline (no account, no network) | online | disabled
    project: str = "superfilter"
    entity: str = ""
    dir: str = ""  # where wandb writes; empty = <artifact_root>/wandb

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"tracking.mode must be one of {MODES}, got {self.mode!r}")


class StageRun:
    """Mirror of one stage's results; every method is a no-op when tracking is disabled."""

    def __init__(self, run: Any, stage: str) -> None:
        self._run = run
        self.stage = stage

    @property
    def enabled(self) -> bool:
        return self._run is not None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._run is not None:
            self._run.log({f"{self.stage}/{k}": v for k, v in metrics.items()}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self._run is not None:
            for k, v in _flatten(metrics).items():
                self._run.summary[f"{self.stage}/{k}"] = v

    def image(self, name: str, path: Path) -> None:
        if self._run is not None:
            # deferred: wandb loads only when tracking is on
            import wandb

            self._run.log({f"{self.stage}/{name}": wandb.Image(str(path))})

    def table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self._run is not None:
            # deferred: wandb loads only when tracking is on
            import wandb

            self._run.log({f"{self.stage}/{name}": wandb.Table(columns=columns, data=rows)})


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def wandb_env(directory: Path) -> dict[str, str]:
    """Every place wandb would otherwise write under the home directory, pointed into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return {name: str(directory) for name in
            ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")}


@contextlib.contextmanager
def stage_run(
    cfg: TrackingConfig, stage: str, config: dict[str, Any], group: str, root: Path, name: str = ""
) -> Iterator[StageRun]:
    if cfg.mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        yield StageRun(None, stage)
        return
    # deferred: wandb loads only when tracking is on
    import wandb

    os.environ.update(wandb_env(Path(cfg.dir) if cfg.dir else Path(root) / "wandb"))
    run = wandb.init(
        project=cfg.project, entity=cfg.entity or None, mode=cfg.mode, group=group, job_type=stage,
        name=name or None, config=config, reinit="create_new",
        settings=wandb.Settings(silent=True, console="off"),
    )
    try:
        yield StageRun(run, stage)
    finally:
        run.finish()
