"""One record shape everywhere: subset.jsonl, `superfilter filter`'s output and superfilter.filter's return hold the
same flat score columns (NaN as null, skip_reason null when scored), and they load cleanly in `datasets` and pandas;
`superfilter inspect` shows a scores.parquet's records by their text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pytest

import superfilter
from superfilter import api, stages
from superfilter.cli import main
from superfilter.contracts import EXAMPLES_FILE, SCORE_COLUMNS, SCORES_FILE, STAGE_CONFIG_FILE, SUBSET_FILE
from superfilter.data import DataConfig, Example, load_examples, write_examples
from superfilter.models import model_from_name
from superfilter.runtime import RuntimeConfig
from superfilter.scoring import ScoreConfig
from superfilter.selection import SelectConfig, select_stage
from superfilter.settings import FilterRunConfig, ModelsConfig
from superfilter.tracking import StageRun, TrackingConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny.jsonl"
EXAMPLE_FIELDS = ("id", "instruction", "input", "output", "system")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def null_typed(feature: Any) -> list[str]:
    """The paths of null-typed parts of a `datasets` feature (a column of nothing but nulls or empty lists)."""
    if isinstance(feature, datasets.Value):
        return ["."] if feature.dtype == "null" else []
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return [f"[]{p}" for p in null_typed(feature.feature)]
    if isinstance(feature, dict):
        return [f"{k}{p}" for k, f in feature.items() for p in null_typed(f)]
    return []


def null_lists(feature: Any) -> list[str]:
    return [p for p in null_typed(feature) if "[]" in p]


def synthetic_scores(examples: list[Example]) -> pd.DataFrame:
    """Scores as the score stage writes them: skip_reason "" when scored; two records skipped."""
    n = len(examples)
    rng = np.random.default_rng(0)
    ifd = rng.uniform(0.3, 1.2, n)
    table = pd.DataFrame({"id": [ex.id for ex in examples], "n_prompt_tokens": rng.integers(3, 40, n),
                          "n_response_tokens": rng.integers(1, 90, n), "loss_direct": ifd + 1, "loss_conditioned": ifd,
                          "ppl_direct": np.exp(ifd + 1), "ppl_conditioned": np.exp(ifd), "ifd": ifd,
                          "skip_reason": [""] * n})
    table.loc[:1, ["loss_direct", "loss_conditioned", "ppl_direct", "ppl_conditioned", "ifd"]] = np.nan
    table.loc[:1, "skip_reason"] = "too_long"
    return table[list(SCORE_COLUMNS)]


def written_subset(tmp_path: Path, examples: list[Example], name: str, ratio: float) -> Path:
    examples_path, scores_path = tmp_path / EXAMPLES_FILE, tmp_path / SCORES_FILE
    write_examples(examples, examples_path)
    synthetic_scores(examples).to_parquet(scores_path, index=False)
    out = tmp_path / name
    out.mkdir()
    select_stage(examples_path, scores_path, SelectConfig(name=name, scorer="weak"), ratio, 0, RuntimeConfig(), out,
                 StageRun(None, "select"))
    return out / SUBSET_FILE


def test_subset_jsonl_is_flat_and_loads_cleanly(tmp_path):
    examples, _ = load_examples(DataConfig(path=str(TINY)))
    assert any(ex.history for ex in examples)
    subset = written_subset(tmp_path, examples, "full", 1.0)  # every record, the skipped ones too
    rows = read_jsonl(subset)
    assert {tuple(r) for r in rows} == {(*EXAMPLE_FIELDS[:4], "history", "system", "rank", *SCORE_COLUMNS[1:])}
    skipped = [r for r in rows if r["skip_reason"] is not None]
    assert len(skipped) == 2 and all(r["ifd"] is None and r["skip_reason"] == "too_long" for r in skipped)
    assert sum(r["skip_reason"] is None for r in rows) == len(rows) - 2

    loaded = datasets.load_dataset("json", data_files=str(subset), split="train")
    assert null_typed(loaded.features) == []
    assert loaded.features["history"] == datasets.List(datasets.List(datasets.Value("string")))
    frame = pd.read_json(subset, lines=True)
    assert frame["skip_reason"].isna().sum() == len(rows) - 2 and frame["ifd"].isna().sum() == 2

    single = written_subset(tmp_path, [ex for ex in examples if not ex.history], "superfilter", 0.2)
    assert all("history" not in r and r["skip_reason"] is None for r in read_jsonl(single))
    plain = datasets.load_dataset("json", data_files=str(single), split="train").features
    assert null_lists(plain) == []  # no column of empty lists; skip_reason holds only nulls here, so JSON types it null
    carded = datasets.load_dataset(str(single.parent), split="train")  # the folder: its card types every column
    assert null_typed(carded.features) == [] and carded.features["skip_reason"] == datasets.Value("string")
    assert carded.to_list() == read_jsonl(single)


def test_a_scores_parquet_is_inspected_with_its_records(tmp_path, capsys):
    examples, _ = load_examples(DataConfig(path=str(TINY)))
    root = tmp_path / "artifacts"
    prepare_dir, score_dir = root / "prepare" / ("p" * 12), root / "score" / ("s" * 12)
    prepare_dir.mkdir(parents=True)
    score_dir.mkdir(parents=True)
    write_examples(examples, prepare_dir / EXAMPLES_FILE)
    synthetic_scores(examples).to_parquet(score_dir / SCORES_FILE, index=False)
    moved = {"key": "p" * 64, "path": str(tmp_path / "elsewhere")}  # the root was moved since: found by key
    (score_dir / STAGE_CONFIG_FILE).write_text(json.dumps({"upstream": {"prepare": moved}}))
    assert main(["inspect", str(score_dir / SCORES_FILE), "--top", "3"]) == 0
    report = capsys.readouterr().out
    best = synthetic_scores(examples).query("ifd < 1").sort_values("ifd", ascending=False)["id"].iloc[0]
    instruction = next(ex.instruction for ex in examples if ex.id == best)
    assert " ".join(instruction.split())[:40] in report and "id " not in report


@pytest.mark.slow
def test_subset_command_and_api_agree_on_every_column(tmp_path):
    """The same records and scores from the pipeline's stages, `superfilter filter` and superfilter.filter."""
    root, ratio = tmp_path / "artifacts", 0.5
    source = tmp_path / "data.jsonl"
    source.write_text("".join(line + "\n" for line in TINY.read_text().splitlines()[:12]))
    tiny = model_from_name("tiny")
    cfg = FilterRunConfig(data=DataConfig(name="custom", path=str(source)), model=ModelsConfig(weak=tiny, strong=tiny),
                          score=ScoreConfig(), tracking=TrackingConfig(mode="disabled"), artifact_root=str(root),
                          ratio=ratio, name="api")
    examples = stages.prepare(cfg)
    subset = read_jsonl(stages.select(cfg, examples, stages.score(cfg, examples, tiny)).path / SUBSET_FILE)
    columns = list(api.ADDED_COLUMNS[:8])

    returned = superfilter.filter(source, ratio=ratio, model="tiny", artifact_root=root)
    out = tmp_path / "kept.jsonl"
    assert main(["filter", str(source), "--out", str(out), "--ratio", str(ratio), "--model", "tiny",
                 "--artifacts", str(root), "--quiet"]) == 0
    written = read_jsonl(out)
    assert len(subset) == len(returned) == len(written) > 0
    for ours, theirs, command in zip(subset, returned, written, strict=True):
        assert ours["instruction"] == theirs["instruction"] == command["instruction"]
        assert {c: ours[c] for c in columns} == {c: theirs[c] for c in columns} == {c: command[c] for c in columns}
    assert all(r["skip_reason"] is None for r in written)
    loaded = datasets.load_dataset("json", data_files=str(out), split="train")
    assert null_lists(loaded.features) == []

    table = tmp_path / "scored.parquet"
    assert main(["score", str(source), "--out", str(table), "--model", "tiny", "--artifacts", str(root), "-q"]) == 0
    assert datasets.load_dataset("parquet", data_files=str(table), split="train").features["skip_reason"] == \
        datasets.Value("string")

    scored = superfilter.score(datasets.Dataset.from_list(read_jsonl(source)[:4]), model="tiny", artifact_root=root)
    assert scored.features["skip_reason"] == datasets.Value("string")
    assert scored["skip_reason"] == [None] * 4
