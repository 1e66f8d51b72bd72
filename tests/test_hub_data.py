"""Hub datasets as `datasets` users expect: configuration, data files, streaming, and a prepare key pinned to the
commit read. A local folder laid out like a Hub dataset repository stands in for the Hub; no network."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import datasets
import pytest

from superfilter import data, stages
from superfilter.contracts import EXAMPLES_FILE, STAGE_CONFIG_FILE
from superfilter.data import DataConfig, loaded_commit, resolve_revision
from superfilter.errors import ConfigError, DataError
from superfilter.selection import SelectConfig
from superfilter.settings import FilterRunConfig
from superfilter.stages import key_params
from superfilter.tracking import TrackingConfig

CARD = """---
configs:
- config_name: main
  default: true
  data_files:
  - split: train
    path: main/train.jsonl
- config_name: other
  data_files:
  - split: train
    path: other/train.jsonl
---
A dataset repository in miniature.
"""


def records(prefix: str, n: int) -> list[dict[str, str]]:
    return [{"instruction": f"{prefix} question {i}", "input": "", "output": f"{prefix} answer {i}"} for i in range(n)]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    folder = tmp_path / "owner_dataset"
    for config, rows in (("main", records("main", 6)), ("other", records("other", 3))):
        (folder / config).mkdir(parents=True)
        (folder / config / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "README.md").write_text(CARD)
    return folder


def run_config(root: Path, source: DataConfig) -> FilterRunConfig:
    return FilterRunConfig(data=source, filter=SelectConfig(name="random", scorer="none"), artifact_root=str(root),
                           tracking=TrackingConfig(mode="disabled"))


def prepared(root: Path, source: DataConfig) -> tuple[list[dict], dict, dict]:
    artifact = stages.prepare(run_config(root, source))
    rows = [json.loads(line) for line in (artifact.path / EXAMPLES_FILE).read_text().splitlines()]
    return rows, json.loads((artifact.path / STAGE_CONFIG_FILE).read_text()), artifact.metrics


def test_config_data_files_and_streaming_read_what_datasets_reads(repo, tmp_path):
    main, config, metrics = prepared(tmp_path / "a", DataConfig(name="repo", hub_id=str(repo), config="main"))
    assert [r["output"] for r in main] == [f"main answer {i}" for i in range(6)]
    assert config["params"]["revision"] == metrics["revision"] and metrics["revision"].startswith("sha256:")
    other, _, _ = prepared(tmp_path / "a", DataConfig(name="repo", hub_id=str(repo), config="other"))
    assert [r["output"] for r in other] == [f"other answer {i}" for i in range(3)]
    files, _, _ = prepared(tmp_path / "a", DataConfig(name="repo", hub_id=str(repo), data_files=["other/*.jsonl"]))
    assert files == other
    streamed, streamed_config, _ = prepared(tmp_path / "b", DataConfig(name="repo", hub_id=str(repo), config="main",
                                                                       streaming=True, limit=4))
    assert streamed == main[:4]
    assert "streaming" not in streamed_config["params"]  # how the records are read, never which


def test_a_changed_dataset_is_a_new_artifact(repo, tmp_path):
    source = DataConfig(name="repo", hub_id=str(repo), config="main")
    first = stages.prepare(run_config(tmp_path, source))
    assert stages.prepare(run_config(tmp_path, source)).cached
    with open(repo / "main" / "train.jsonl", "a") as f:
        f.write(json.dumps(records("late", 1)[0]) + "\n")
    second = stages.prepare(run_config(tmp_path, source))
    assert not second.cached and second.key != first.key and second.metrics["n_records"] == 7


def test_a_hub_dataset_is_read_at_the_commit_in_its_key(repo, tmp_path, monkeypatch):
    commits = iter(["a" * 40, "a" * 40, "b" * 40])
    asked: list[str | None] = []
    real_load = datasets.load_dataset

    def load_from_repo(path, name=None, **kwargs):
        assert path == "owner/dataset"
        asked.append(kwargs.pop("revision"))
        return real_load(str(repo), name, **kwargs)

    monkeypatch.setattr(data, "hub_offline", lambda: False)
    monkeypatch.setattr(data, "hub_commit", lambda repo_id, revision: next(commits))
    monkeypatch.setattr(datasets, "load_dataset", load_from_repo)
    source = DataConfig(name="hub", hub_id="owner/dataset", config="main")
    rows, config, metrics = prepared(tmp_path, source)
    assert len(rows) == 6 and asked == ["a" * 40]
    assert config["params"]["revision"] == metrics["revision"] == "a" * 40
    assert stages.prepare(run_config(tmp_path, source)).cached  # the same commit: nothing is read again
    moved = stages.prepare(run_config(tmp_path, source))  # the branch moved on: a new artifact
    assert not moved.cached and json.loads((moved.path / STAGE_CONFIG_FILE).read_text())["params"]["revision"] == \
        "b" * 40 and asked == ["a" * 40, "b" * 40]
    pinned = replace(source, revision="c" * 40)
    assert resolve_revision(pinned) == "c" * 40  # a full commit hash is taken as it is, asked of no one


def test_offline_a_cached_dataset_says_which_commit_it_read(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    source = DataConfig(name="hub", hub_id="Owner/MyData")
    with pytest.raises(DataError, match="no cached copy"):
        resolve_revision(source)
    (tmp_path / "cache" / "Owner___my_data" / "default" / "0.0.0" / ("d" * 40)).mkdir(parents=True)
    with caplog.at_level(logging.INFO, logger="superfilter.data"):
        assert resolve_revision(source) == "d" * 40
    assert "offline, reading the cached copy at commit " + "d" * 40 in caplog.text


def test_the_commit_read_is_checked_against_the_key():
    cached = type("Cached", (), {"cache_files": [{"filename": f"/c/o___n/default/0.0.0/{'e' * 40}/n-train.arrow"}]})
    assert loaded_commit(cached()) == "e" * 40
    assert loaded_commit(type("Streamed", (), {})()) is None


def test_local_files_keep_their_keys_and_refuse_streaming():
    local = DataConfig(name="t", path="data/tiny.jsonl")
    assert set(key_params(local, drop=("name", "path"))) == {"hub_id", "hub_split", "format", "fields", "limit"}
    assert resolve_revision(local) == ""
    with pytest.raises(ConfigError, match="data.streaming"):
        replace(local, streaming=True).validate()
