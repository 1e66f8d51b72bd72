"""The only importer of wandb: one run per executed stage, offline by default, a no-op when disabled."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superfilter.errors import ConfigError

log = logging.getLogger(__name__)
MODES = ("offline", "online", "disabled")
MAX_TAG_CHARS = 64  # W&B refuses longer tags
MAX_GROUP_CHARS = 128  # and longer groups
NAME_SEPARATOR = " · "


@dataclass
class TrackingConfig:
    mode: str = "offline"  # offline (no account, no network) | online | disabled
    project: str = "superfilter"
    entity: str = ""
    dir: str = ""  # where wandb writes; empty = <artifact_root>/wandb
    group: str = ""  # the W&B group of every run; empty = the experiment's `name` (a Hydra sweep: its folder)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"tracking.mode must be one of {MODES}, got {self.mode!r}")


@dataclass(frozen=True)
class Reference:
    """A stage folder as a W&B reference artifact: named <stage>-<key[:12]> like the folder, typed by its stage."""

    stage: str
    key: str
    path: Path

    @property
    def name(self) -> str:
        return f"{self.stage}-{self.key[:12]}"


@dataclass(frozen=True)
class RunSpec:
    """What makes one stage's run findable: `<stage> · <label>`, its group, tags, config and upstream folders."""

    stage: str
    label: str
    group: str
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    inputs: tuple[Reference, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.stage}{NAME_SEPARATOR}{self.label}" if self.label else self.stage


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

    def output(self, reference: Reference) -> None:
        """The stage's finished folder as this run's output artifact: the lineage graph's next node."""
        if self._run is not None:
            self._run.log_artifact(reference_artifact(reference))


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


def tag(name: str, value: Any) -> str:
    return f"{name}:{value}"[:MAX_TAG_CHARS]


def wandb_env(directory: Path) -> dict[str, str]:
    """Every place wandb would otherwise write under the home directory, pointed into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    return {name: str(directory) for name in
            ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR")}


def tracking_off(cfg: TrackingConfig) -> bool:
    return cfg.mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled"


def reference_artifact(reference: Reference) -> Any:
    """A reference to the local folder, not a copy: checksum=False names each file by its path, and the folder's
    name is its content key, so the same folder is the same artifact version in every run that names it."""
    # deferred: wandb loads only when tracking is on
    import wandb

    artifact = wandb.Artifact(reference.name, type=reference.stage,
                              metadata={"key": reference.key, "path": str(reference.path)})
    artifact.add_reference(Path(reference.path).resolve().as_uri(), checksum=False)
    return artifact


def declare_input(run: Any, reference: Reference) -> None:
    if not Path(reference.path).is_dir():
        log.warning("tracking: upstream %s is not at %s; not linked", reference.name, reference.path)
        return
    artifact = reference_artifact(reference)
    if run.settings.mode in ("offline", "dryrun"):
        # use_artifact refuses to run offline; this is what it does online for an artifact not yet logged (log it,
        # marked as used by this run), recorded in the run file so that `wandb sync` links the lineage.
        run._log_artifact(artifact, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def _init(cfg: TrackingConfig, root: Path, group: str, **kwargs: Any) -> Any:
    # deferred: wandb loads only when tracking is on
    import wandb

    directory = Path(cfg.dir) if cfg.dir else Path(root) / "wandb"
    os.environ.update(wandb_env(directory))
    # dir= as well: wandb reads WANDB_DIR once per process, and a second run elsewhere (the API, tests) must not
    # land in the first one's folder.
    return wandb.init(project=cfg.project, entity=cfg.entity or None, mode=cfg.mode, reinit="create_new",
                      group=group[:MAX_GROUP_CHARS], dir=str(directory),
                      settings=wandb.Settings(silent=True, console="off"), **kwargs)


@contextlib.contextmanager
def stage_run(cfg: TrackingConfig, spec: RunSpec, root: Path) -> Iterator[StageRun]:
    """One W&B run for one executed stage: named `<stage> · <label>`, job_type = stage, its upstream folders
    declared as inputs. The caller logs the finished folder with StageRun.output; a failed stage's run ends
    with exit code 1."""
    if tracking_off(cfg):
        yield StageRun(None, spec.stage)
        return
    run = _init(cfg, root, spec.group, job_type=spec.stage, name=spec.name, tags=list(spec.tags),
                config=spec.config)
    exit_code = 1
    try:
        for reference in spec.inputs:
            declare_input(run, reference)
        yield StageRun(run, spec.stage)
        exit_code = 0
    finally:
        run.finish(exit_code=exit_code)


def log_report_table(cfg: TrackingConfig, columns: list[str], rows: list[list[Any]], *, group: str, root: Path,
                     name: str = "report") -> None:
    """A sweep's report as one W&B table, in its own run (job_type=report) in the sweep's group. The run id is
    derived from project and group, so logging the report again updates that run instead of adding another."""
    if tracking_off(cfg):
        return
    # deferred: wandb loads only when tracking is on
    import wandb

    run_id = "report-" + hashlib.sha256(f"{cfg.project}\0{group}".encode()).hexdigest()[:16]
    run = _init(cfg, root, group, job_type="report", name=f"report{NAME_SEPARATOR}{group}", id=run_id,
                resume="allow")
    try:
        run.log({f"report/{name}": wandb.Table(columns=list(columns), data=[list(r) for r in rows])})
    finally:
        run.finish()


# Reading offline runs back.

OFFLINE_BLOCK = 32768  # an offline run file is a LevelDB-style log: 32 KiB blocks of checksummed chunks
FULL, FIRST, LAST = 1, 2, 4


def run_records(path: Path) -> list[Any]:
    """Every protobuf record of an offline run file (run-<id>.wandb): wandb's Python API reads none without a
    server, so the record log is parsed here (tests, experiments/read_outputs/check.py)."""
    # deferred: wandb loads only to read its files
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _, _ = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    records, chunks, pos = [], b"", 7
    while pos + 7 <= len(data):
        left = OFFLINE_BLOCK - pos % OFFLINE_BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding to the block's end
            pos += left
            continue
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunks = payload if kind in (FULL, FIRST) else chunks + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def offline_run(path: Path) -> dict[str, Any]:
    """Name, group, job type, tags, config, artifacts used and logged, logged keys and whether it exited."""
    run: dict[str, Any] = {"used": [], "logged": [], "history": set(), "config": {}, "exited": False}
    for record in run_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, group=record.run.run_group, job_type=record.run.job_type,
                       tags=list(record.run.tags))
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "artifact" and record.artifact.type not in ("run_table", "wandb-history"):
            entry = {"name": record.artifact.name, "type": record.artifact.type,
                     "refs": [e.ref for e in record.artifact.manifest.contents]}
            run["used" if record.artifact.use_after_commit else "logged"].append(entry)
        elif kind == "history":
            run["history"].update("/".join(i.nested_key) or i.key for i in record.history.item)
        elif kind == "exit":
            run["exited"] = True
    return run
