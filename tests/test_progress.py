"""Honest progress: the remaining time comes from the work done (tokens), so it holds from the first step although
steps differ in size and records are scored longest first."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from superfilter.data import Example
from superfilter.models import ModelConfig, build_tiny_model, load_model
from superfilter.progress import Meter, duration
from superfilter.scoring import ScoreConfig, make_engine, score_records
from superfilter.scoring.tables import example_cost, plan_shards, progress_bar, score_shards


def test_remaining_time_comes_from_tokens_not_steps():
    ticks = itertools.accumulate([0.0, 1.0, 0.25, 0.25])  # a long step, then two short ones, one token per ms
    meter = Meter(total=1500, clock=lambda: next(ticks))
    first = meter.advance(1000)
    assert first.elapsed_s == 1.0 and first.remaining_s == pytest.approx(0.5) and first.rate == 1000
    assert str(first) == "1s elapsed, 0s left"
    assert meter.advance(250).remaining_s == pytest.approx(0.25)
    last = meter.advance(250)
    assert last.remaining_s == 0 and last.fields() == {"elapsed_s": 1.5, "remaining_s": 0.0,
                                                       "tokens_per_s_mean": 1000.0}
    assert math.isnan(Meter(total=10, clock=lambda: 0.0).advance(0).remaining_s)
    assert [duration(s) for s in (44.6, 200, 3720, math.nan)] == ["45s", "3m20s", "1h02m", "?"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = build_tiny_model("llama", tmp_path_factory.mktemp("tiny") / "llama")
    return make_engine(*load_model(ModelConfig(name="tiny", source="local", path=str(folder)), "cpu"))


class Bar:
    """What the scoring code calls on its bar, with every position it reached."""

    def __init__(self) -> None:
        self.n, self.positions, self.postfix = 0.0, [], ""

    def update(self, amount: float) -> None:
        self.n += amount
        self.positions.append(self.n)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text


def test_the_score_bar_advances_by_work(engine):
    long = Example.create("Describe the sea. " * 20, "", "The sea is wide and deep. " * 20)
    short = [Example.create(f"Name {i}.", "", f"Item {i}.") for i in range(9)]
    examples = [*short, long]
    costs = np.asarray([example_cost(ex) for ex in examples], dtype=np.float64)
    shards = plan_shards(costs, 1)
    assert shards[0] == [9]  # longest first
    bar, ends = Bar(), []
    score_shards(engine, examples, shards, costs, ScoreConfig(batch_tokens=1), bar, lambda i, _: ends.append(bar.n))
    assert ends[0] == pytest.approx(costs[9]) and ends[0] / costs.sum() > 0.5  # not 1 record in 10
    assert ends[-1] == pytest.approx(costs.sum()) and bar.postfix == "10/10 records"
    assert bar.positions == sorted(bar.positions)

    shares: list[float] = []  # one pass per batch: each batch's share follows its tokens
    score_records(engine, [long, short[0]], ScoreConfig(batch_tokens=1), shares.append)
    assert sum(shares) == pytest.approx(2) and shares == sorted(shares, reverse=True) and shares[0] > 0.5


def test_the_bar_shows_records_and_respects_tqdm_disable(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(10.0, enabled=True, n_records=3).disable
    monkeypatch.delenv("TQDM_DISABLE")
    with progress_bar(10.0, enabled=True, n_records=3) as bar:
        assert bar.postfix == "0/3 records" and not bar.disable


def test_meter_starts_on_creation():
    clock = iter([5.0, 7.0])
    assert Meter(total=4, clock=lambda: next(clock)).advance(2).elapsed_s == 2.0
