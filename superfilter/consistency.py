"""Weak-to-strong consistency of two score tables on the same records: rank correlations, overlap of the selected
subsets, and the length-controlled views (partial ρ given response length, ρ within length bins, length/random)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from superfilter.selection import ranked_ids

RATIOS = (0.05, 0.1, 0.15)  # the paper's Table 1 budgets
MEASURES = ("ppl_conditioned", "ppl_direct", "ifd")
N_LENGTH_BINS = 5


def align(weak: pd.DataFrame, strong: pd.DataFrame) -> pd.DataFrame:
    """Records both models scored (finite IFD and PPLs, no skip reason), columns `weak_*` / `strong_*`, by id."""
    columns = ["id", "n_response_tokens", *MEASURES, "skip_reason"]
    merged = weak[columns].add_prefix("weak_").merge(
        strong[columns].add_prefix("strong_"), left_on="weak_id", right_on="strong_id", validate="one_to_one")
    ok = np.ones(len(merged), dtype=bool)
    for side in ("weak", "strong"):
        for measure in MEASURES:
            ok &= np.isfinite(merged[f"{side}_{measure}"].to_numpy(dtype=float))
        reason = merged[f"{side}_skip_reason"]
        ok &= (reason.isna() | (reason.astype(str) == "")).to_numpy()
    aligned = merged[ok].rename(columns={"weak_id": "id"}).drop(columns=["strong_id"])
    return aligned.sort_values("id", kind="mergesort").reset_index(drop=True)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    return float(stats.spearmanr(x, y).statistic)


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    return float(stats.kendalltau(x, y).statistic)  # tau-b: handles ties


def partial_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float]) -> float:
    """Spearman ρ of x and y with z partialled out: the partial correlation of the ranks.

    If both scorers merely tracked response length, this falls towards 0 while the plain ρ stays high.
    """
    r_xy, r_xz, r_yz = spearman(x, y), spearman(x, z), spearman(y, z)
    denominator = math.sqrt(max((1 - r_xz**2) * (1 - r_yz**2), 0.0))
    return float("nan") if denominator == 0 else (r_xy - r_xz * r_yz) / denominator


def binned_spearman(x: Sequence[float], y: Sequence[float], z: Sequence[float],
                    n_bins: int = N_LENGTH_BINS) -> dict[str, Any]:
    """ρ(x, y) inside each quantile bin of z (records of similar length), and their size-weighted mean."""
    frame = pd.DataFrame({"x": x, "y": y, "z": z})
    # rank first so that ties in z (token counts) cannot leave a bin empty or make qcut fail
    frame["bin"] = pd.qcut(frame["z"].rank(method="first"), q=n_bins, labels=False)
    bins = []
    for _, group in frame.groupby("bin", sort=True):
        bins.append({"n": len(group), "length_min": float(group["z"].min()), "length_max": float(group["z"].max()),
                     "rho": spearman(group["x"], group["y"]) if len(group) > 2 else float("nan")})
    valid = [b for b in bins if math.isfinite(b["rho"])]
    weighted = sum(b["rho"] * b["n"] for b in valid) / sum(b["n"] for b in valid) if valid else float("nan")
    return {"bins": bins, "weighted_mean": weighted}


def top_ids(frame: pd.DataFrame, column: str, k: int, threshold: float | None = None) -> set[str]:
    """The first k ids by `column`, highest first, ties by id; with a threshold, only rows strictly below it
    (Superfiltering's IFD < 1 rule). The same ordering as the `superfilter` selector."""
    if threshold is not None:
        frame = frame[frame[column] < threshold]
    return set(ranked_ids(frame, column, descending=True)[:k])


def random_ids(frame: pd.DataFrame, k: int, seed: int) -> set[str]:
    order = np.random.default_rng(seed).permutation(len(frame))
    return set(frame["id"].to_numpy()[order][:k].tolist())


def overlap(a: set[str], b: set[str], k: int) -> float:
    """Share of the budget both subsets agree on (|A ∩ B| / k)."""
    return len(a & b) / k if k else float("nan")


def subset_overlaps(frame: pd.DataFrame, ratios: Sequence[float], threshold: float, seed: int,
                    length_column: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for ratio in ratios:
        k = math.floor(len(frame) * ratio + 1e-9)
        weak_ifd = top_ids(frame, "weak_ifd", k, threshold)
        strong_ifd = top_ids(frame, "strong_ifd", k, threshold)
        longest = top_ids(frame, length_column, k)
        chosen_at_random = random_ids(frame, k, seed)
        out[f"{ratio:g}"] = {
            "k": k,
            "ifd_weak_vs_strong": overlap(weak_ifd, strong_ifd, k),
            "ppl_weak_vs_strong": overlap(top_ids(frame, "weak_ppl_conditioned", k),
                                          top_ids(frame, "strong_ppl_conditioned", k), k),
            "length_vs_strong_ifd": overlap(longest, strong_ifd, k),
            "length_vs_weak_ifd": overlap(longest, weak_ifd, k),
            "random_vs_strong_ifd": overlap(chosen_at_random, strong_ifd, k),
        }
    return out


def consistency(weak: pd.DataFrame, strong: pd.DataFrame, ratios: Sequence[float] = RATIOS,
                threshold: float = 1.0, seed: int = 0, length: pd.Series | None = None) -> dict[str, Any]:
    """Everything Table 1 reports, plus the length-controlled views.

    `length` (a Series indexed by id, e.g. response characters) is the length to control for; by default the weak
    scorer's response token count.
    """
    frame = align(weak, strong)
    if length is not None:
        frame["length"] = frame["id"].map(length).astype(float)
    else:
        frame["length"] = frame["weak_n_response_tokens"].astype(float)
    report: dict[str, Any] = {
        "n_records": int(len(weak)),
        "n_aligned": int(len(frame)),
        "share_below_threshold": {side: float((frame[f"{side}_ifd"] < threshold).mean()) for side in
                                  ("weak", "strong")},
        "spearman": {m: spearman(frame[f"weak_{m}"], frame[f"strong_{m}"]) for m in MEASURES},
        "kendall": {m: kendall(frame[f"weak_{m}"], frame[f"strong_{m}"]) for m in MEASURES},
        "partial_spearman_given_length": {
            m: partial_spearman(frame[f"weak_{m}"], frame[f"strong_{m}"], frame["length"]) for m in MEASURES},
        "length_binned_spearman": {m: binned_spearman(frame[f"weak_{m}"], frame[f"strong_{m}"], frame["length"])
                                   for m in ("ppl_conditioned", "ifd")},
        "spearman_with_length": {f"{side}_{m}": spearman(frame[f"{side}_{m}"], frame["length"])
                                 for side in ("weak", "strong") for m in ("ppl_conditioned", "ifd")},
        "overlap": subset_overlaps(frame, ratios, threshold, seed, "length"),
    }
    return report


def markdown_table(report: dict[str, Any], weak_name: str, strong_name: str) -> str:
    """One row per comparison, the same columns as the paper's Table 1 plus the length-controlled ones."""
    ratios = list(report["overlap"])
    header = ("| comparison | ρ(PPL) | ρ(IFD) | τ(IFD) | partial ρ(IFD \\| length) | binned ρ(IFD) | "
              f"overlap at {' / '.join(f'{float(r):.0%}' for r in ratios)} |")
    lines = [header, "|---|---|---|---|---|---|---|"]

    def cells(values: list[float]) -> str:
        return " / ".join(f"{v:.2f}" for v in values)

    rho, tau = report["spearman"], report["kendall"]
    lines.append(
        f"| {weak_name} vs {strong_name} | {rho['ppl_conditioned']:.3f} | {rho['ifd']:.3f} | {tau['ifd']:.3f} | "
        f"{report['partial_spearman_given_length']['ifd']:.3f} | "
        f"{report['length_binned_spearman']['ifd']['weighted_mean']:.3f} | "
        f"{cells([report['overlap'][r]['ifd_weak_vs_strong'] for r in ratios])} |")
    for key, label in (("length_vs_strong_ifd", f"length vs {strong_name} IFD"),
                       ("length_vs_weak_ifd", f"length vs {weak_name} IFD"),
                       ("random_vs_strong_ifd", f"random vs {strong_name} IFD")):
        lines.append(f"| {label} | – | – | – | – | – | {cells([report['overlap'][r][key] for r in ratios])} |")
    return "\n".join(lines)


def scatter_plot(weak: pd.DataFrame, strong: pd.DataFrame, path: Path, weak_name: str = "weak",
                 strong_name: str = "strong") -> Path:
    """Weak vs strong PPL(y|x) and IFD on log axes, coloured by response length; IFD = 1 marked."""
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    # deferred: matplotlib loads only when a plot is drawn
    import matplotlib.pyplot as plt

    frame = align(weak, strong)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), constrained_layout=True)
    for ax, measure, title in ((axes[0], "ppl_conditioned", "PPL(y|x)"), (axes[1], "ifd", "IFD")):
        points = ax.scatter(frame[f"weak_{measure}"], frame[f"strong_{measure}"], s=6, alpha=0.6,
                            c=np.log10(frame["weak_n_response_tokens"].clip(lower=1)), cmap="viridis")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{weak_name} {title}")
        ax.set_ylabel(f"{strong_name} {title}")
        ax.set_title(f"{title}: Spearman ρ = {spearman(frame[f'weak_{measure}'], frame[f'strong_{measure}']):.3f}")
        if measure == "ifd":
            ax.axvline(1.0, color="grey", lw=0.8, ls="--")
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    fig.colorbar(points, ax=axes, label="log10 response tokens (weak tokenizer)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
