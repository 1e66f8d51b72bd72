"""The deterministic order of training: epochs → optimizer steps → each process's share → micro-batches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Step:
    """One optimizer step: which records (indices into the encoded subset) it trains on, in which epoch."""

    index: int  # 1-based optimizer step
    epoch: int  # 0-based
    records: tuple[int, ...]


def steps_per_epoch(n_records: int, batch_size: int) -> int:
    return math.ceil(n_records / batch_size)


def total_steps(n_records: int, batch_size: int, epochs: float, max_steps: int) -> int:
    return max_steps if max_steps > 0 else math.ceil(steps_per_epoch(n_records, batch_size) * epochs)


def plan(n_records: int, batch_size: int, n_steps: int, seed: int) -> list[Step]:
    """Every step of the run, computed identically on every process and after every resume.

    Each epoch is a fresh permutation (seeded by (seed, epoch)), cut into global batches; the last batch of an
    epoch may be smaller, so every record is seen exactly once per epoch.
    """
    steps: list[Step] = []
    epoch = 0
    while len(steps) < n_steps:
        order = np.random.default_rng([seed, epoch]).permutation(n_records)
        for start in range(0, n_records, batch_size):
            if len(steps) == n_steps:
                break
            steps.append(Step(len(steps) + 1, epoch, tuple(int(i) for i in order[start:start + batch_size])))
        epoch += 1
    return steps


def accumulation_steps(batch_size: int, micro_batch_size: int, world_size: int) -> int:
    """Micro-batches per process per step: fixed, so accelerate's accumulation boundary stays aligned."""
    return math.ceil(batch_size / (micro_batch_size * world_size))


def rank_micro_batches(
    records: Sequence[int], lengths: Sequence[int], rank: int, world_size: int, micro_batch_size: int,
    n_micro: int,
) -> list[list[int]]:
    """This process's records of one step in `n_micro` micro-batches (some may be empty at an epoch's end).

    Records are dealt round-robin to processes, then sorted by length so padded rows waste little; the order
    inside a step does not change the step's mean loss.
    """
    share = sorted(records[rank::world_size], key=lambda i: (lengths[i], i))
    chunks = [share[i:i + micro_batch_size] for i in range(0, len(share), micro_batch_size)]
    return chunks + [[] for _ in range(n_micro - len(chunks))]
