"""The whole pipeline through run.py: smoke run, rerun from cache, a ratio sweep that scores once."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_py(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def summaries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("run_summary.json"))]


@pytest.mark.slow
def test_smoke_runs_every_stage_then_reruns_from_cache(tmp_path):
    common = ["experiment=smoke", f"artifact_root={tmp_path / 'artifacts'}", "tracking.mode=disabled"]
    first = run_py(*common, f"hydra.run.dir={tmp_path / 'run1'}")
    assert first.returncode == 0, first.stderr[-3000:]
    (summary,) = summaries(tmp_path / "run1")
    stages = summary["stages"]
    assert {"prepare", "score", "select", "train", "eval"} <= set(stages)
    assert not any(s["cache_hit"] for s in stages.values())
    for name, artifact in (("score", "scores.parquet"), ("select", "subset.jsonl"), ("train", "model")):
        assert (Path(stages[name]["path"]) / artifact).exists()

    second = run_py(*common, f"hydra.run.dir={tmp_path / 'run2'}")
    assert second.returncode == 0, second.stderr[-3000:]
    (again,) = summaries(tmp_path / "run2")
    assert all(s["cache_hit"] for s in again["stages"].values())
    assert {k: v["path"] for k, v in again["stages"].items()} == {k: v["path"] for k, v in stages.items()}


@pytest.mark.slow
def test_ratio_sweep_scores_once(tmp_path):
    result = run_py("-m", "ratio=0.05,0.1", "experiment=smoke", "stages=[score,select]",
                    f"artifact_root={tmp_path / 'artifacts'}", "tracking.mode=disabled",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [json.loads((tmp_path / "sweep" / str(i) / "run_summary.json").read_text()) for i in (0, 1)]
    assert [j["stages"]["score"]["cache_hit"] for j in jobs] == [False, True]
    assert jobs[0]["stages"]["score"]["path"] == jobs[1]["stages"]["score"]["path"]
    assert jobs[0]["stages"]["select"]["path"] != jobs[1]["stages"]["select"]["path"]
    sizes = [j["stages"]["select"]["metrics"]["count"] for j in jobs]
    assert sizes[0] < sizes[1]


@pytest.mark.slow
def test_config_errors_are_one_line(tmp_path):
    result = run_py("ratio=2", f"artifact_root={tmp_path}", "tracking.mode=disabled",
                    f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "ratio must be in (0, 1]" in result.stderr and "Traceback" not in result.stderr
