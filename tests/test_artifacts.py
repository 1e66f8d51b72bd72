"""Content-addressed stage folders: keys, cache hits, crash safety, locking."""

import threading
from pathlib import Path

import pytest

from superfilter.artifacts import Artifact, run_stage, stage_dir, stage_key
from superfilter.contracts import SUCCESS_MARKER


def test_key_is_stable_and_order_free():
    a = stage_key("score", 1, {"x": 1, "y": {"b": 2, "a": 1}})
    b = stage_key("score", 1, {"y": {"a": 1, "b": 2}, "x": 1})
    assert a == b and len(a) == 64
    assert stage_key("score", 2, {"x": 1, "y": {"b": 2, "a": 1}}) != a
    assert stage_key("score", 1, {"x": 2, "y": {"b": 2, "a": 1}}) != a
    up = Artifact("prepare", "k" * 64, Path("."), cached=True)
    assert stage_key("score", 1, {"x": 1}, [up]) != stage_key("score", 1, {"x": 1})


def test_build_once_then_cache_hit(tmp_path):
    calls = []

    def build(out: Path) -> dict:
        calls.append(out)
        (out / "result.txt").write_text("hello")
        return {"n": 1}

    first = run_stage(tmp_path, "demo", 1, {"p": 1}, [], build)
    second = run_stage(tmp_path, "demo", 1, {"p": 1}, [], build)
    assert len(calls) == 1 and not first.cached and second.cached
    assert first.path == second.path == stage_dir(tmp_path, "demo", first.key)
    assert (first.path / SUCCESS_MARKER).exists() and (first.path / "result.txt").read_text() == "hello"
    assert second.metrics == {"n": 1}
    assert (first.path / "config.json").exists()


def test_crash_leaves_no_success_and_rerun_resumes_in_partial(tmp_path):
    def crashing(out: Path) -> dict:
        (out / "shard-0.done").write_text("kept")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "demo", 1, {"p": 1}, [], crashing)
    key = stage_key("demo", 1, {"p": 1})
    final = stage_dir(tmp_path, "demo", key)
    assert not final.exists()
    partial = Path(str(final) + ".partial")
    assert not (partial / SUCCESS_MARKER).exists()

    seen = []

    def resuming(out: Path) -> dict:
        seen.append((out / "shard-0.done").read_text())
        return {}

    art = run_stage(tmp_path, "demo", 1, {"p": 1}, [], resuming)
    assert seen == ["kept"] and (art.path / SUCCESS_MARKER).exists() and not partial.exists()


def test_parallel_jobs_build_once(tmp_path):
    calls = []
    gate = threading.Event()

    def slow(out: Path) -> dict:
        calls.append(1)
        gate.wait(2)
        return {}

    results = []
    threads = [threading.Thread(target=lambda: results.append(run_stage(tmp_path, "demo", 1, {}, [], slow)))
               for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 3
    assert sum(not r.cached for r in results) == 1
