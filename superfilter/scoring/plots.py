"""The IFD histogram of a score table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HISTOGRAM_FILE = "ifd_hist.png"


def plot_ifd_histogram(scores: pd.DataFrame, path: Path, title: str) -> None:
    # deferred: matplotlib loads only when a plot is drawn
    from matplotlib.figure import Figure

    ifd = scores["ifd"].to_numpy(dtype=np.float64)
    ifd = ifd[np.isfinite(ifd)]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(ifd, bins=60, color="tab:blue")
    ax.axvline(1.0, color="tab:red", linestyle="--", label="IFD = 1 (prompt does not help)")
    share = f"{(ifd >= 1).mean():.1%}" if len(ifd) else "n/a"
    ax.set(xlabel="IFD", ylabel="records", title=f"{title}: {len(ifd)} scored, {share} with IFD ≥ 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
