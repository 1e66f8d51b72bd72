"""W&B runs as users find them: names, groups, tags, configs, lineage artifacts and tables, read from the offline
run files (wandb's Python API cannot read them without a server, so the test parses the record log itself)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from superfilter import stages
from superfilter.data import DataConfig
from superfilter.selection import SelectConfig
from superfilter.settings import FilterRunConfig
from superfilter.tracking import (
    Reference,
    RunSpec,
    TrackingConfig,
    log_report_table,
    offline_run,
    run_records,
    stage_run,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
def offline_runs(root: Path) -> list[dict[str, Any]]:
    """Per offline run: name, group, job type, tags, config, artifacts used and logged, logged keys."""
    runs = []
    for path in sorted(root.rglob("offline-run-*/run-*.wandb")):
        run = finished_run(path)
        assert "name" in run, f"{path}: no run record among {kinds(path)}"
        runs.append(run)
    return runs


def kinds(path: Path) -> list[str]:
    return [r.WhichOneof("record_type") for r in run_records(path)]


def finished_run(path: Path, wait_s: float = 60.0) -> dict[str, Any]:
    """The run once its exit record is on disk: wandb's service may still be writing the file when run.finish()
    returns (seen on a busy machine)."""
    deadline = time.monotonic() + wait_s
    while True:
        run = offline_run(path)
        if run["exited"] or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def logged_keys(run: dict[str, Any]) -> set[str]:
    """The logged media and scalars by name: a table's history items are nested under its key."""
    return {"/".join(k.split("/")[:2]) for k in run["history"]}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # conftest disables wandb for every other test


def tiny_config(root: Path, **changes: Any) -> FilterRunConfig:
    cfg = FilterRunConfig(data=DataConfig(name="tiny", path=str(PROJECT_ROOT / "data" / "tiny.jsonl")),
                          filter=SelectConfig(name="random", scorer="none"), tracking=TrackingConfig(mode="offline"),
                          artifact_root=str(root), name="smoke", ratio=0.25)
    return replace(cfg, **changes)


def test_labels_and_tags_say_what_a_stage_folder_is_of(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.model.weak.name, cfg.model.strong.name = "smollm2_135m", "gemma3_270m"
    assert stages.selection_label(cfg) == "random 25%"
    assert stages.stage_label(cfg, "train") == "random 25% · gemma3_270m"
    assert stages.stage_label(cfg, "select") == "random 25% · tiny"
    assert stages.stage_label(cfg, "score") == "tiny · smollm2_135m"
    assert stages.selection_label(replace(cfg, filter=SelectConfig(name="full", scorer="none"))) == "full 100%"
    assert stages.selection_label(replace(cfg, filter=SelectConfig(name="random", scorer="none", count=7))) == \
        "random 7 records"
    assert stages.run_tags(cfg, "prepare") == ("data:tiny",)
    assert stages.run_tags(cfg, "train") == ("data:tiny", "weak:smollm2_135m", "strong:gemma3_270m",
                                             "filter:random", "ratio:0.25")
    tokens = replace(cfg, filter=SelectConfig(name="random", scorer="none", budget_tokens=9053))
    assert stages.stage_label(tokens, "train") == "random 9,053 tokens · gemma3_270m"  # the equal-token partner
    assert stages.run_tags(tokens, "train")[-1] == "tokens:9053"


@pytest.mark.slow
def test_stage_runs_are_named_grouped_and_linked(tmp_path, offline):
    cfg = tiny_config(tmp_path / "artifacts")
    examples = stages.prepare(cfg)
    subset = stages.select(cfg, examples, None)
    other = stages.select(replace(cfg, ratio=0.5), examples, None)
    runs = {r["name"]: r for r in offline_runs(tmp_path / "artifacts" / "wandb")}
    assert set(runs) == {"prepare · tiny", "select · random 25% · tiny", "select · random 50% · tiny"}
    assert {r["group"] for r in runs.values()} == {"smoke"}
    assert [r["job_type"] for r in runs.values()] == ["prepare", "select", "select"]
    select = runs["select · random 25% · tiny"]
    assert select["tags"] == ["data:tiny", "weak:tiny", "strong:tiny", "filter:random", "ratio:0.25"]
    assert select["config"]["stage_key"] == subset.key
    assert select["config"]["upstream"] == {"prepare": examples.key}
    assert select["config"]["selection"] == "random 25%"
    assert select["config"] != runs["select · random 50% · tiny"]["config"]
    prepare_artifact = f"prepare-{examples.key[:12]}"
    assert [a["name"] for a in runs["prepare · tiny"]["logged"]] == [prepare_artifact]
    assert [(a["name"], a["type"]) for a in select["used"]] == [(prepare_artifact, "prepare")]
    assert [(a["name"], a["type"]) for a in select["logged"]] == [(f"select-{subset.key[:12]}", "select")]
    assert any(ref.startswith(subset.path.resolve().as_uri()) for ref in select["logged"][0]["refs"])
    assert "select/top_bottom" in logged_keys(select)
    assert other.key != subset.key

    stages.select(cfg, examples, None)  # a cache hit opens no run
    assert len(offline_runs(tmp_path / "artifacts" / "wandb")) == 3


@pytest.mark.slow
def test_images_tables_and_the_report_table(tmp_path, offline):
    root = tmp_path / "artifacts"
    folder = root / "score" / "abc"
    folder.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "ifd_hist.png")
    spec = RunSpec("score", "tiny · tiny", "smoke", ("data:tiny",), {"stage_key": "abc"})
    with stage_run(TrackingConfig(), spec, root) as run:
        run.image("ifd_hist", folder / "ifd_hist.png")
        run.table("samples", ["prompt", "answer", "verdict"], [["Say hi", "hi", "win"]])
        run.output(Reference("score", "abc" * 10, folder))
    log_report_table(TrackingConfig(), ["filter", "ratio", "win rate"], [["superfilter", 0.1, 55.0]],
                     group="smoke", root=root)
    runs = {r["job_type"]: r for r in offline_runs(root / "wandb")}
    assert {"score/ifd_hist", "score/samples"} <= logged_keys(runs["score"])
    assert runs["report"]["name"] == "report · smoke" and runs["report"]["group"] == "smoke"
    assert "report/report" in logged_keys(runs["report"])


@pytest.mark.slow
def test_a_sweep_is_one_group(tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "run.py"), "-m", "ratio=0.1,0.2", "experiment=smoke",
                           "filter=random", "stages=[select]", f"artifact_root={tmp_path / 'artifacts'}",
                           "tracking.mode=offline", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]
    runs = offline_runs(tmp_path / "artifacts" / "wandb")
    assert sorted(r["name"] for r in runs) == ["prepare · tiny", "select · random 10% · tiny",
                                               "select · random 20% · tiny"]
    assert {r["group"] for r in runs} == {f"smoke · {sweep}"}


def test_disabled_tracking_writes_nothing(tmp_path):
    cfg = tiny_config(tmp_path, tracking=TrackingConfig(mode="disabled"))
    stages.select(cfg, stages.prepare(cfg), None)
    assert not (tmp_path / "wandb").exists()
