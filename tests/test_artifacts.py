"""Content-addressed stage folders: keys, cache hits, crash safety, locking; the typed readers of stage folders and
run summaries."""

import json
import threading
from pathlib import Path

import pytest

from superfilter.artifacts import Artifact, load_artifact, run_stage, stage_dir, stage_key, write_text_atomic
from superfilter.contracts import RUN_SUMMARY_FILE, STAGE_CONFIG_FILE, STAGE_METRICS_FILE, SUCCESS_MARKER
from superfilter.errors import DataError
from superfilter.pipeline import summarize
from superfilter.runs import Upstream, find_run_summaries, read_run_summary, read_stage, subset_label


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


def test_read_stage_reads_what_run_stage_writes(tmp_path):
    prepare = run_stage(tmp_path, "prepare", 1, {"data": "x"}, [], lambda out: {"n_records": 3})
    select = run_stage(tmp_path, "select", 2, {"filter": {"name": "superfilter"}, "ratio": 0.05}, [prepare],
                       lambda out: {"count": 1})
    folder = read_stage(select.path)
    assert (folder.stage, folder.key, folder.version, folder.complete) == ("select", select.key, 2, True)
    assert folder.params == {"filter": {"name": "superfilter"}, "ratio": 0.05} and folder.metrics == {"count": 1}
    assert folder.upstream == {"prepare": Upstream(prepare.key, prepare.path)}
    trained = run_stage(tmp_path, "train", 1, {}, [select], lambda out: {})
    assert subset_label(trained.path) == "superfilter 5%"
    assert subset_label(prepare.path) is None and subset_label(tmp_path) is None  # no select upstream, no config


def test_read_run_summary_reads_what_the_pipeline_writes(tmp_path):
    built = run_stage(tmp_path, "prepare", 1, {}, [], lambda out: {"n_records": 3})
    job = tmp_path / "multirun" / "10"
    job.mkdir(parents=True)
    (job / RUN_SUMMARY_FILE).write_text(json.dumps({**summarize({"prepare": built}), "overrides": ["ratio=0.1"]}))
    (tmp_path / "multirun" / "9").mkdir()
    (tmp_path / "multirun" / "9" / RUN_SUMMARY_FILE).write_text(json.dumps(summarize({})))
    summary = read_run_summary(job)
    assert summary.folder == job and summary.overrides == ["ratio=0.1"]
    record = summary.stages["prepare"]
    assert (record.path, record.key, record.cache_hit, record.metrics) == (built.path, built.key, False,
                                                                          {"n_records": 3})
    assert [s.folder.name for s in find_run_summaries(tmp_path / "multirun")] == ["9", "10"]  # launch order


@pytest.mark.parametrize(("text", "message"), [
    (None, "file not found"),
    ('{"stage": "train",\n "key": }', "line 2: not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"key": "k"}', "field stage is missing"),
    ('{"stage": "train", "key": 7}', "field key must be str, got int 7"),
    ('{"stage": "t", "key": "k", "upstream": {"select": {"key": "s"}}}', "field upstream.select.path is missing"),
])
def test_a_malformed_stage_config_fails_naming_file_and_field(tmp_path, text, message):
    if text is not None:
        (tmp_path / STAGE_CONFIG_FILE).write_text(text)
    with pytest.raises(DataError, match=message) as failure:
        read_stage(tmp_path)
    assert str(failure.value).startswith(str(tmp_path / STAGE_CONFIG_FILE))


def test_a_finished_stage_needs_its_metrics(tmp_path):
    (tmp_path / STAGE_CONFIG_FILE).write_text(json.dumps({"stage": "train", "key": "k"}))
    assert read_stage(tmp_path).metrics == {}  # unfinished, or made by hand
    (tmp_path / SUCCESS_MARKER).touch()
    with pytest.raises(DataError, match=f"{STAGE_METRICS_FILE}: file not found"):
        read_stage(tmp_path)


@pytest.mark.parametrize(("summary", "message"), [
    ({"overrides": []}, "field stages is missing"),
    ({"stages": {"eval": {"path": "x", "key": "k", "metrics": {}}}}, "field stages.eval.cache_hit is missing"),
    ({"stages": {"eval": {"path": "x", "key": "k", "cache_hit": 1, "metrics": {}}}},
     "field stages.eval.cache_hit must be bool, got int"),
    ({"stages": {}, "overrides": "ratio=0.1"}, "field overrides must be list"),
])
def test_a_malformed_run_summary_fails_naming_file_and_field(tmp_path, summary, message):
    (tmp_path / RUN_SUMMARY_FILE).write_text(json.dumps(summary))
    with pytest.raises(DataError, match=message) as failure:
        read_run_summary(tmp_path)
    assert str(failure.value).startswith(str(tmp_path / RUN_SUMMARY_FILE))


def test_a_corrupt_cached_metrics_file_is_named(tmp_path):
    built = run_stage(tmp_path, "demo", 1, {}, [], lambda out: {"n": 1})
    (built.path / STAGE_METRICS_FILE).write_text("{")
    with pytest.raises(DataError, match=f"{STAGE_METRICS_FILE}: line 1: not valid JSON"):
        load_artifact(tmp_path, "demo", built.key)


def test_write_text_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "report.md"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in path.parent.iterdir()] == ["report.md"]
