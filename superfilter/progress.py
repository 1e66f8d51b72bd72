"""Elapsed and remaining time of a long loop whose steps differ in size, from the work done (tokens), not steps."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def duration(seconds: float) -> str:
    """45s, 3m20s, 1h02m: as short as the size allows."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass(frozen=True)
class Progress:
    done: float
    total: float
    elapsed_s: float
    remaining_s: float  # nan until some work is done

    @property
    def rate(self) -> float:
        """Work per second since the meter started (a mean over all steps, so one slow step does not swing it)."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 else math.nan

    def fields(self, unit: str = "tokens") -> dict[str, float]:
        """For a metrics row: elapsed_s, remaining_s and the mean rate, e.g. tokens_per_s_mean."""
        return {"elapsed_s": round(self.elapsed_s, 3), "remaining_s": round(self.remaining_s, 1),
                f"{unit}_per_s_mean": round(self.rate, 1)}

    def __str__(self) -> str:
        return f"{duration(self.elapsed_s)} elapsed, {duration(self.remaining_s)} left"


@dataclass
class Meter:
    """Remaining time = work left / mean rate so far. The work of a step is what it costs (its tokens), so steps of
    different sizes, in any order, give an estimate that holds from the first one.

        meter = Meter(total=sum(tokens of every step))
        for step in steps:
            ...
            progress = meter.advance(tokens of this step)
            log.info("step %d: %s", step, progress)  # 1m05s elapsed, 3m20s left
    """

    total: float
    clock: Callable[[], float] = time.perf_counter
    done: float = 0.0
    started: float = field(default=math.nan)

    def __post_init__(self) -> None:
        if math.isnan(self.started):
            self.started = self.clock()

    def advance(self, work: float) -> Progress:
        self.done += work
        elapsed = self.clock() - self.started
        left = max(0.0, self.total - self.done)
        remaining = left * elapsed / self.done if self.done > 0 else math.nan
        return Progress(self.done, self.total, elapsed, remaining)
