"""experiments/bench_train.py runs every part on the tiny model: each table it documents can be regenerated."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from superfilter.data import Example, write_examples

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_runs_every_part_on_the_tiny_model(tmp_path: Path) -> None:
    subset = tmp_path / "subset.jsonl"
    write_examples([Example.create(f"Name {i} colours.", "", "Red, green and blue. " * (1 + i % 4))
                    for i in range(16)], subset)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "experiments/bench_train.py", "--model", "tiny", "--subset", str(subset), "--steps", "1",
         "--repeats", "1", "--stage-records", "8", "--precision-steps", "2", "--precision-rounds", "1",
         "--memory-rounds", "1", "--json", str(out)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [row["mode"] for row in report["throughput"]] == ["padding", "packing"]
    assert report["stage"]["n_steps"] >= 1 and report["stage"]["wall_s"] > 0
    assert set(report["precision"]["tokens_per_s"]) == {"fp32", "bf16"}
    assert [row["variant"] for row in report["memory"]] == ["lengths rounded up to 64", "exact lengths"]
    assert all(row["peak_rss_gib"] > 0 and row["wall_s"] > 0 for row in report["memory"])
    assert "rounded / exact" in result.stdout
