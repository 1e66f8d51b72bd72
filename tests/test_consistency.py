"""Consistency metrics equal scipy's on toy tables; overlaps and the length-controlled views are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from superfilter.consistency import (
    align,
    binned_spearman,
    consistency,
    markdown_table,
    partial_spearman,
    scatter_plot,
    subset_overlaps,
)

N = 40


def toy_tables(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Weak and strong scores that share a length effect plus noise, in different row orders."""
    rng = np.random.default_rng(seed)
    length = rng.integers(5, 400, N)
    base = np.log(length) / 10 + rng.normal(0, 0.1, N)

    def table(noise: float, order: np.ndarray) -> pd.DataFrame:
        ifd = np.exp(base + rng.normal(0, noise, N) - 0.3)
        ppl_direct = np.exp(rng.normal(2, 0.5, N))
        frame = pd.DataFrame({
            "id": [f"r{i:03d}" for i in range(N)], "n_prompt_tokens": 5, "n_response_tokens": length,
            "loss_direct": np.log(ppl_direct), "loss_conditioned": np.log(ppl_direct * ifd),
            "ppl_direct": ppl_direct, "ppl_conditioned": ppl_direct * ifd, "ifd": ifd, "skip_reason": None})
        return frame.iloc[order].reset_index(drop=True)

    return table(0.05, np.arange(N)), table(0.1, rng.permutation(N))


def test_align_pairs_rows_by_id_and_drops_unscored() -> None:
    weak, strong = toy_tables()
    weak.loc[weak["id"] == "r003", ["ifd", "ppl_conditioned"]] = np.nan
    strong.loc[strong["id"] == "r007", "skip_reason"] = "empty response"
    frame = align(weak, strong)
    assert len(frame) == N - 2 and not {"r003", "r007"} & set(frame["id"])
    strong_by_id = strong.set_index("id").loc[frame["id"]]
    assert np.allclose(frame["strong_ifd"], strong_by_id["ifd"])


def test_correlations_equal_scipy() -> None:
    weak, strong = toy_tables()
    report = consistency(weak, strong)
    w, s = weak.set_index("id"), strong.set_index("id").loc[weak["id"]]
    for measure in ("ppl_conditioned", "ppl_direct", "ifd"):
        assert report["spearman"][measure] == pytest.approx(stats.spearmanr(w[measure], s[measure]).statistic)
        assert report["kendall"][measure] == pytest.approx(stats.kendalltau(w[measure], s[measure]).statistic)
    assert report["n_aligned"] == N


def test_partial_spearman_equals_the_rank_residual_correlation() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=200)
    x, y = z + rng.normal(size=200), z + rng.normal(size=200)
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    residual = [r - np.polyval(np.polyfit(rz, r, 1), rz) for r in (rx, ry)]
    assert partial_spearman(x, y, z) == pytest.approx(stats.pearsonr(*residual).statistic)
    assert partial_spearman(x, y, z) < stats.spearmanr(x, y).statistic  # the shared length effect is removed


def test_binned_spearman_matches_manual_bins() -> None:
    rng = np.random.default_rng(2)
    x, y, z = rng.normal(size=50), rng.normal(size=50), np.arange(50)
    result = binned_spearman(x, y, z, n_bins=5)
    assert [b["n"] for b in result["bins"]] == [10] * 5
    manual = [stats.spearmanr(x[i:i + 10], y[i:i + 10]).statistic for i in range(0, 50, 10)]
    assert [b["rho"] for b in result["bins"]] == pytest.approx(manual)
    assert result["weighted_mean"] == pytest.approx(np.mean(manual))


def test_overlaps_on_a_hand_made_table() -> None:
    frame = pd.DataFrame({
        "id": [f"r{i}" for i in range(10)],
        "weak_ifd": [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 1.5],  # r9 is above 1: never selected
        "strong_ifd": [0.8, 0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.05],
        "weak_ppl_conditioned": np.arange(10.0), "strong_ppl_conditioned": np.arange(10.0)[::-1],
        "length": [1, 2, 3, 4, 5, 6, 7, 8, 9, 100],
    })
    out = subset_overlaps(frame, ratios=(0.2, 0.3), threshold=1.0, seed=0, length_column="length")
    assert out["0.2"]["k"] == 2 and out["0.2"]["ifd_weak_vs_strong"] == 1.0  # {r0, r1} both times
    assert out["0.3"]["ifd_weak_vs_strong"] == pytest.approx(2 / 3)  # {r0, r1, r2} vs {r0, r1, r8}
    assert out["0.2"]["ppl_weak_vs_strong"] == 0.0
    assert out["0.2"]["length_vs_weak_ifd"] == 0.0  # longest {r9, r8} vs {r0, r1}
    assert out["0.3"]["length_vs_strong_ifd"] == pytest.approx(1 / 3)  # {r9, r8, r7} vs {r1, r0, r8}


def test_report_renders_and_plots(tmp_path: Path) -> None:
    weak, strong = toy_tables()
    table = markdown_table(consistency(weak, strong), "weak", "strong")
    assert table.count("\n") == 5 and "weak vs strong" in table
    assert scatter_plot(weak, strong, tmp_path / "scatter.png").stat().st_size > 0
