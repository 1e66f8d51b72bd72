"""Per-step training metrics: an append-only JSONL that survives resume, and the loss-curve plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # a bare Figure draws with Agg: no pyplot, no display backend

from superfilter.artifacts import write_jsonl


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything after it is redone anyway
    return rows


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the rows of steps ≤ last_step: the steps after the checkpoint are trained (and logged) again."""
    rows = [r for r in read_metrics(path) if r["step"] <= last_step]
    write_jsonl(path, rows)


def append_metrics(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def plot_loss(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    steps = [r["step"] for r in rows]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(steps, [r["loss"] for r in rows], marker="." if len(rows) < 50 else None, label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean response-token loss")
    ax.set_title(title, fontsize=9)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", alpha=0.6, label="lr")
    lr_ax.set_ylabel("learning rate")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of the whole run from its per-step rows."""
    if not rows:
        return {}
    tail = rows[-max(1, len(rows) // 10):]
    time_s = sum(r["step_time_s"] for r in rows)
    tokens = sum(r["n_tokens"] for r in rows)
    return {
        "loss_first": rows[0]["loss"],
        "loss_last": rows[-1]["loss"],
        "loss_last_10pct": sum(r["loss"] for r in tail) / len(tail),
        "grad_norm_max": max((r["grad_norm"] for r in rows if not math.isnan(r["grad_norm"])), default=math.nan),
        "step_time_s_total": time_s,
        "tokens_per_s": tokens / time_s if time_s else math.nan,
        "examples_seen": rows[-1]["examples_seen"],
    }
