"""The rank launcher shared by training and scoring: the command per device, the config lookup, a failing rank."""

import os
from pathlib import Path

import pytest

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import ConfigError
from superfilter.launch import LaunchError, accelerate_config_file, launch_ranks, rank_command, rank_env


def test_torchrun_without_an_accelerate_config_and_accelerate_launch_with_one():
    torchrun = rank_command("train.rank", ["--job", "j.json"], 2)
    assert torchrun[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                            "-m", "train.rank", "--job", "j.json"]
    config = accelerate_config_file("ddp", "train.accelerate_config")
    accelerate = rank_command("train.rank", ["--job", "j.json"], 2, config)
    assert accelerate[1:3] == ["-m", "accelerate.commands.launch"]
    assert accelerate[accelerate.index("--config_file") + 1] == str(config)
    assert accelerate[-4:] == ["-m", "train.rank", "--job", "j.json"]


def test_unknown_accelerate_config_names_the_setting():
    with pytest.raises(ConfigError, match=r"train.accelerate_config='nope': no such file; use one of \[.*'ddp'"):
        accelerate_config_file("nope", "train.accelerate_config")


def test_ranks_import_the_project_from_any_folder(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "elsewhere")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = rank_env(3)
    assert env["PYTHONPATH"] == os.pathsep.join([str(PROJECT_ROOT), "elsewhere"]) and env["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in rank_env(None)  # GPU training ranks: accelerate's own default


def test_a_failing_rank_names_its_exit_code(tmp_path: Path):
    (tmp_path / "fails.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(LaunchError, match=r"test ranks exited with code \d+; a rerun resumes"):
        launch_ranks("fails", [], 1, "test ranks", threads=1, hint="a rerun resumes", cwd=tmp_path)
