"""Every built stage records its wall time and the peak RSS it reached, for the per-stage memory table."""

import sys
from pathlib import Path

import pytest

from superfilter import stages
from superfilter.config import Config
from superfilter.runtime import peak_rss_mb, reset_peak_rss

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_prepare_records_wall_time_and_peak_rss(tmp_path: Path) -> None:
    cfg = Config(artifact_root=str(tmp_path))
    cfg.data.path = str(PROJECT_ROOT / "data" / "tiny.jsonl")
    cfg.runtime.device = "cpu"
    built = stages.prepare(cfg)
    assert built.metrics["stage_wall_s"] >= 0
    assert 10 < built.metrics["stage_peak_rss_mb"] < 100_000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_peak_rss_resets() -> None:
    assert reset_peak_rss()
    before = peak_rss_mb()
    block = bytearray(200 * 2**20)  # touched: 200 MB resident
    block[::4096] = b"x" * len(block[::4096])
    high = peak_rss_mb()
    del block
    reset_peak_rss()
    assert high - before > 150
    assert peak_rss_mb() < high - 150
