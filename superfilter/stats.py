"""Paired comparisons of two models on the same items: mean difference, a seeded bootstrap CI and a verdict.

Both models are measured on the same items (reference answers, benchmark questions, judged prompts), so the
comparison is made item by item: d_i = ours_i − theirs_i, Δ = mean(d), and a 95% percentile bootstrap interval
resamples the items (not the two models separately), which removes the between-item variance both share.

Several training seeds of a model are pooled per item first: each model's value for an item is its mean over that
model's seeds (items missing or non-finite in any seed are dropped), then d_i, then the bootstrap over items. The
interval therefore covers item sampling given these seeds; with one seed per model it says nothing about how much
another seed would move the result.

The verdict is "better" or "worse" when the interval excludes 0 (in the measure's own direction: lower NLL is
better, higher accuracy or win share is better), "no detectable difference" when it holds 0, and "too few items to
tell" when fewer than 2 items were compared (no interval).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no detectable difference"
TOO_FEW = "too few items to tell"  # fewer than 2 items compared: no interval
VERDICTS = (BETTER, WORSE, NO_DIFFERENCE, TOO_FEW)
CONFIDENCE = 0.95
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CHUNK_VALUES = 2**22  # resampled item indices per numpy call (32 MB of int64)
# A suite's comparisons in the eval stage's metrics: metrics[<suite>][PAIRED] = [Comparison.to_dict(), ...].
PAIRED = "paired"
OUTCOMES = {"win": 1.0, "tie": 0.0, "lose": -1.0}  # judged suites: one item's paired difference

Values = Mapping[str, float]


@dataclass(frozen=True)
class Comparison:
    """One measure, ours vs the partner: Δ = mean over items of (ours − theirs), its interval and the verdict."""

    measure: str  # what is compared, with its unit: "reference NLL gpt4_1106_preview (nats/token)"
    delta: float
    lo: float  # the bootstrap interval; NaN with fewer than 2 items
    hi: float
    n: int  # items compared
    verdict: str
    higher_is_better: bool
    share_better: float  # items where ours is better, as a share of n (ties count for neither side)
    share_worse: float
    partner: str = ""  # the other model's label
    seeds: tuple[int, int] = (1, 1)  # training seeds pooled per item: ours, the partner's
    confidence: float = CONFIDENCE

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN as None, seeds as a list."""
        out = asdict(self)
        out["seeds"] = list(self.seeds)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def line(self, label: str = "") -> str:
        """One markdown-ready line: 'label: measure, lower is better: Δ = x [lo, hi], n = N, better on a% / worse
        on b% — **verdict**' (the interval is the bootstrap's, at self.confidence)."""
        direction = "higher" if self.higher_is_better else "lower"
        interval = "(no interval: fewer than 2 items)" if not math.isfinite(self.lo) else \
            f"[{_signed(self.lo)}, {_signed(self.hi)}]"
        shares = "" if not self.n else \
            f", better on {100 * self.share_better:.0f}% / worse on {100 * self.share_worse:.0f}%"
        head = f"{label}: " if label else ""
        return (f"{head}{self.measure}, {direction} is better: Δ = {_signed(self.delta)} {interval}, n = {self.n}"
                f"{shares} — **{self.verdict}**")


def from_dict(data: Mapping[str, Any]) -> Comparison:
    """The inverse of Comparison.to_dict (None back to NaN)."""
    values = {k: (math.nan if v is None and k in ("delta", "lo", "hi", "share_better", "share_worse") else v)
              for k, v in data.items()}
    values["seeds"] = tuple(values.get("seeds", (1, 1)))
    return Comparison(**values)


def _signed(value: float) -> str:
    return f"{value:+.4f}".replace("-", "−")


def pool_seeds(runs: Values | Sequence[Values]) -> tuple[dict[str, float], int]:
    """Per-item mean over training seeds (one mapping id → value per seed) and the number of seeds; an item that is
    missing or non-finite in any seed is dropped, so every pooled value averages the same seeds."""
    seeds = [runs] if isinstance(runs, Mapping) else list(runs)
    if not seeds:
        raise ValueError("pool_seeds: no runs")
    common = [i for i in seeds[0] if all(i in s and math.isfinite(s[i]) for s in seeds)]
    return {i: float(np.mean([s[i] for s in seeds])) for i in common}, len(seeds)


def align(ours: Values, theirs: Values) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The items both sides have, finite on both, in `ours` order, with both sides' values."""
    ids = [i for i, v in ours.items() if i in theirs and math.isfinite(v) and math.isfinite(theirs[i])]
    return ids, np.array([ours[i] for i in ids], dtype=float), np.array([theirs[i] for i in ids], dtype=float)


def bootstrap_interval(differences: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: items drawn with replacement, `resamples` times, from a seeded
    generator (same input, same seed → same interval). NaN with fewer than 2 items."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=float)
    rows = max(1, CHUNK_VALUES // n)
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        means[start : start + count] = d[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    """better / worse when the interval excludes 0, in the measure's direction; no detectable difference when it holds
    0; too few items to tell when there is no interval (fewer than 2 items)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return TOO_FEW
    if lo <= 0.0 <= hi:
        return NO_DIFFERENCE
    ours_higher = lo > 0.0
    return BETTER if ours_higher == higher_is_better else WORSE


def compare_differences(differences: Values | Sequence[Values], measure: str, higher_is_better: bool,
                        partner: str = "", resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> Comparison:
    """A comparison from per-item differences already paired (a judge's win/tie/lose as +1/0/−1, see OUTCOMES);
    several mappings are several seed pairs' (pooled per item)."""
    pooled, n_seeds = pool_seeds(differences)
    d = np.array(list(pooled.values()), dtype=float)
    return _comparison(d, measure, higher_is_better, partner, (n_seeds, n_seeds), resamples, seed)


def compare(ours: Values | Sequence[Values], theirs: Values | Sequence[Values], measure: str,
            higher_is_better: bool, partner: str = "", resamples: int = RESAMPLES,
            seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Ours vs theirs on the items both have (id → value, or one such mapping per training seed)."""
    ours_pooled, ours_seeds = pool_seeds(ours)
    theirs_pooled, theirs_seeds = pool_seeds(theirs)
    _, a, b = align(ours_pooled, theirs_pooled)
    return _comparison(a - b, measure, higher_is_better, partner, (ours_seeds, theirs_seeds), resamples, seed)


def _comparison(d: np.ndarray, measure: str, higher_is_better: bool, partner: str, seeds: tuple[int, int],
                resamples: int, seed: int) -> Comparison:
    n = int(d.size)
    lo, hi = bootstrap_interval(d, resamples, seed)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    return Comparison(measure=measure, delta=float(d.mean()) if n else math.nan, lo=lo, hi=hi, n=n,
                      verdict=verdict(lo, hi, higher_is_better), higher_is_better=higher_is_better,
                      share_better=float(better.mean()) if n else math.nan,
                      share_worse=float(worse.mean()) if n else math.nan, partner=partner, seeds=seeds)


def verdict_lines(comparisons: Sequence[Comparison | Mapping[str, Any]], label: str) -> list[str]:
    """Markdown bullets, one per comparison, each led by `label` (e.g. 'superfilter 10% vs random 10%')."""
    return [f"- {(c if isinstance(c, Comparison) else from_dict(c)).line(label)}" for c in comparisons]
