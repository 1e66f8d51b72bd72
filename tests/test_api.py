"""The Python API: the pipeline's own scores for a list, a file and a Dataset; field mapping; selection; its docs."""

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from test_docs import code_blocks, doc_section

import superfilter
from superfilter import api, stages
from superfilter.config import Config
from superfilter.data import DataConfig, parse_record
from superfilter.errors import ConfigError, DataError
from superfilter.models import model_from_name
from superfilter.scoring import ScoreConfig
from superfilter.settings import ModelsConfig
from superfilter.tracking import TrackingConfig

ROOT = Path(__file__).resolve().parents[1]
N_RECORDS = 8
MAX_LENGTH = 128  # short records, short passes: the tiny model scores a handful in about a second
VALUE_COLUMNS = ["n_prompt_tokens", "n_response_tokens", "loss_direct", "loss_conditioned", "ppl_direct",
                 "ppl_conditioned", "ifd"]


def small_records() -> list[dict]:
    """The shortest Alpaca records of the tiny fixture, in file order."""
    rows = [json.loads(line) for line in (ROOT / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]
    flat = [r for r in rows if "output" in r]
    keep = sorted(flat, key=lambda r: len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]))
    return [r for r in flat if r in keep[:N_RECORDS]]


def pipeline_config(root: Path, path: Path, **overrides) -> Config:
    return Config(data=DataConfig(name="custom", path=str(path)), model=ModelsConfig(weak=model_from_name("tiny")),
                  score=ScoreConfig(max_length=MAX_LENGTH), tracking=TrackingConfig(mode="disabled"),
                  artifact_root=str(root), **overrides)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fixture file, scored once by the pipeline's own prepare and score stages."""
    root = tmp_path_factory.mktemp("api")
    path = root / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in small_records()))
    cfg = pipeline_config(root / "pipeline", path)
    examples = stages.prepare(cfg)
    scores = stages.score(cfg, examples, cfg.model.weak)
    expected = pd.read_parquet(scores.path / "scores.parquet").set_index("id")
    return {"root": root, "path": path, "cfg": cfg, "examples": examples, "scores": scores, "expected": expected}


def assert_pipeline_scores(records: list[dict], expected: pd.DataFrame, fields: dict | None = None) -> None:
    ids = [parse_record(r, "auto", fields or {}, "test").id for r in records]
    want = expected.loc[ids]
    for column in VALUE_COLUMNS:
        np.testing.assert_array_equal([r[column] for r in records], want[column].to_numpy(), err_msg=column)
    # scores.parquet keeps "" for a scored record; every output shows null
    assert [r["skip_reason"] for r in records] == [v or None for v in want["skip_reason"]]


def test_list_file_and_dataset_give_the_pipeline_scores(work):
    records = small_records()
    api_root = work["root"] / "api"

    from_list = superfilter.score(records, model="tiny", max_length=MAX_LENGTH, artifact_root=api_root)
    assert isinstance(from_list, list) and len(from_list) == len(records)
    assert all({**r, **s} == s for r, s in zip(records, from_list, strict=True))  # the input's fields untouched
    assert_pipeline_scores(from_list, work["expected"])

    dataset = datasets.Dataset.from_list(records)
    from_dataset = superfilter.score(dataset, model="tiny", max_length=MAX_LENGTH, artifact_root=api_root)
    assert isinstance(from_dataset, datasets.Dataset)
    assert set(api.ADDED_COLUMNS[:8]) <= set(from_dataset.column_names)
    assert_pipeline_scores(from_dataset.to_list(), work["expected"])

    score_folders = sorted((work["root"] / "pipeline" / "score").iterdir())
    from_file = superfilter.score(work["path"], model="tiny", max_length=MAX_LENGTH,
                                  artifact_root=work["root"] / "pipeline")
    assert_pipeline_scores(from_file, work["expected"])
    # The same file, model and settings as the pipeline: its folders, not new ones.
    assert sorted((work["root"] / "pipeline" / "score").iterdir()) == score_folders


def test_field_mapping_and_conversations(work):
    mapped = [{"question": r["instruction"], "context": r.get("input", ""), "answer": r["output"]}
              for r in small_records()]
    fields = {"instruction": "question", "input": "context", "output": "answer"}
    scored = superfilter.score(mapped, model="tiny", fields=fields, max_length=MAX_LENGTH,
                               artifact_root=work["root"] / "api")
    assert [r["question"] for r in scored] == [r["question"] for r in mapped]
    assert_pipeline_scores(scored, work["expected"], fields)

    conversations = pd.DataFrame([
        {"conversations": [{"from": "human", "value": "Hello, how are you?"},
                           {"from": "gpt", "value": "I am fine, thank you."},
                           {"from": "human", "value": "What is the capital of France?"},
                           {"from": "gpt", "value": "The capital of France is Paris."}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "List five fruits."},
                      {"role": "assistant", "content": "Apple, banana, cherry, grape, orange."}]},
    ])
    scored = superfilter.score(conversations, model="tiny", turns="each", max_length=MAX_LENGTH,
                               artifact_root=work["root"] / "api")
    assert isinstance(scored, pd.DataFrame) and len(scored) == 2
    assert np.isfinite(scored["ifd"]).all() and scored["n_turns"].tolist() == [2, 1]


def test_select_and_filter_agree_with_the_select_stage(work):
    ratio = 0.5
    cfg = pipeline_config(work["root"] / "pipeline", work["path"], ratio=ratio)
    stage = stages.select(cfg, work["examples"], work["scores"])
    stage_ids = [json.loads(line)["id"] for line in (stage.path / "subset.jsonl").read_text().splitlines()]
    assert stage_ids

    scored = superfilter.score(work["path"], model="tiny", max_length=MAX_LENGTH, artifact_root=work["root"] / "api")
    best = superfilter.select(scored, ratio=ratio)
    assert [parse_record(r, "auto", {}, "test").id for r in best] == stage_ids
    ifd = [r["ifd"] for r in best]
    assert ifd == sorted(ifd, reverse=True) and max(ifd) < 1

    filtered = superfilter.filter(work["path"], ratio=ratio, model="tiny", max_length=MAX_LENGTH,
                                  artifact_root=work["root"] / "pipeline")
    assert filtered == best

    dataset = superfilter.select(datasets.Dataset.from_list(scored), ratio=ratio)
    assert isinstance(dataset, datasets.Dataset) and dataset.to_list() == best
    assert len(superfilter.select(small_records(), ratio=0.25, method="random")) == N_RECORDS // 4
    assert len(superfilter.select(scored, method="full")) == N_RECORDS


def test_errors_name_the_problem_before_any_model_loads(work):
    with pytest.raises(ConfigError, match=r"unknown option bogus; valid options: .*max_length"):
        superfilter.score(small_records(), model="tiny", bogus=1)
    with pytest.raises(ConfigError, match=r"unknown option max_length; valid options: .*threshold"):
        superfilter.select(small_records(), max_length=1)
    with pytest.raises(ConfigError, match="method must be one of"):
        superfilter.select(small_records(), method="best")
    with pytest.raises(ConfigError, match="ranks by IFD"):
        superfilter.select(small_records())
    with pytest.raises(DataError, match=r"list\[1\]: missing field 'output'"):
        superfilter.score([small_records()[0], {"instruction": "no answer"}], model="tiny")
    with pytest.raises(DataError, match="no such file"):
        superfilter.score(work["root"] / "missing.jsonl", model="tiny")


@pytest.mark.slow
def test_import_stays_light():
    code = "import sys, superfilter; assert 'torch' not in sys.modules; assert 'score' in dir(superfilter)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert superfilter.score is api.score and superfilter.select is api.select and superfilter.filter is api.filter


def test_documented_python_example_runs(tmp_path, monkeypatch):
    (code,) = code_blocks(doc_section("Just filter my data"), "python")
    assert 'model="smollm2_135m"' in code
    monkeypatch.setenv(api.ARTIFACTS_ENV, str(tmp_path / "artifacts"))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace('model="smollm2_135m"', 'model="tiny"'), "<Just filter my data>", "exec"), namespace)
    assert len(namespace["best"]) <= 2 and all(r["ifd"] < 1 for r in namespace["best"])
    assert list((tmp_path / "artifacts" / "score").iterdir())
