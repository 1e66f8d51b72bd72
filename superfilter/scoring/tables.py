"""Per-record values: from the passes' losses to the score table of records held in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from superfilter.contracts import SCORE_COLUMNS, TURN_COLUMNS
from superfilter.data import Example
from superfilter.scoring.config import AUTO_BATCH_TOKENS, ScoreConfig
from superfilter.scoring.engine import Engine, make_engine, pass_losses
from superfilter.scoring.plans import TurnPlan, plan_records


def ifd_values(loss_direct: np.ndarray, loss_conditioned: np.ndarray, ifd_form: str) -> np.ndarray:
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if ifd_form == "ppl_ratio":  # PPL(y|x) / PPL(y) [Superfiltering Eq. 2]
            return np.exp(loss_conditioned - loss_direct)
        return loss_conditioned / loss_direct  # mean NLL ratio [Cherry LLM]


def turn_table(plans: list[list[TurnPlan]], losses: dict[tuple[int, int], tuple[float, float]],
               ifd_form: str) -> pd.DataFrame:
    """One row per scored turn: record position, token counts, losses, perplexities, IFD, skip reason."""
    rows = []
    for r, record in enumerate(plans):
        for t, plan in enumerate(record):
            loss_d, loss_c = losses.get((r, t), (np.nan, np.nan))
            rows.append((r, plan.n_prompt_tokens, plan.conditioned.n_targets, loss_d, loss_c, plan.skip_reason))
    df = pd.DataFrame(rows, columns=["record", "n_prompt_tokens", "n_response_tokens", "loss_direct",
                                     "loss_conditioned", "skip_reason"])
    with np.errstate(over="ignore"):
        df["ppl_direct"] = np.exp(df["loss_direct"].to_numpy())
        df["ppl_conditioned"] = np.exp(df["loss_conditioned"].to_numpy())
    df["ifd"] = ifd_values(df["loss_direct"].to_numpy(), df["loss_conditioned"].to_numpy(), ifd_form)
    values = df[["loss_direct", "loss_conditioned", "ppl_direct", "ppl_conditioned", "ifd"]].to_numpy()
    bad = (df["skip_reason"] == "") & ~np.isfinite(values).all(axis=1)
    df.loc[bad, "skip_reason"] = "nonfinite_loss"
    skipped = df["skip_reason"] != ""
    df.loc[skipped, ["loss_direct", "loss_conditioned", "ppl_direct", "ppl_conditioned", "ifd"]] = np.nan
    return df


def record_table(turns: pd.DataFrame, ids: Sequence[str], each: bool) -> pd.DataFrame:
    """turns=last: the turn table itself. turns=each: per record, the mean over scored turns of every loss,
    perplexity and IFD (ifd = mean per-turn IFD), ifd_max, the summed response tokens and the last turn's
    prompt length; a record is skipped only when all its turns are (with its last turn's reason)."""
    if not each:
        out = turns.drop(columns="record").reset_index(drop=True)
        out.insert(0, "id", list(ids))
        return out[list(SCORE_COLUMNS)]
    scored = turns[turns["skip_reason"] == ""]
    grouped = scored.groupby("record")
    means = grouped[["loss_direct", "loss_conditioned", "ppl_direct", "ppl_conditioned", "ifd"]].mean()
    last = turns.groupby("record").last()
    out = pd.DataFrame({"id": list(ids)})
    out["n_prompt_tokens"] = last["n_prompt_tokens"].to_numpy()
    out["n_response_tokens"] = grouped["n_response_tokens"].sum().reindex(out.index, fill_value=0).to_numpy()
    for column in means.columns:
        out[column] = means[column].reindex(out.index).to_numpy()
    out["skip_reason"] = np.where(out["ifd"].notna(), "", last["skip_reason"].to_numpy())
    out["ifd_max"] = grouped["ifd"].max().reindex(out.index).to_numpy()
    out["n_turns"] = turns.groupby("record").size().to_numpy()
    out["n_turns_scored"] = grouped.size().reindex(out.index, fill_value=0).to_numpy()
    return out[[*SCORE_COLUMNS, *TURN_COLUMNS]]


def score_records(engine: Engine, examples: Sequence[Example], cfg: ScoreConfig,
                  on_progress: Callable[[float], None] | None = None) -> pd.DataFrame:
    """The score table of `examples` (in their order), from one set of token-budget batches. on_progress gets each
    batch's share of the work in records' worth (len(examples) in all), weighted by the tokens it reads: batches
    run longest first, so counting them evenly would make the first look slowest."""
    plans = plan_records(examples, cfg, engine.tokenizer, engine.tokenization)
    keys, passes = [], []
    for r, record in enumerate(plans):
        for t, plan in enumerate(record):
            if not plan.skip_reason:
                keys.append((r, t))
                passes += [plan.direct, plan.conditioned]
    # pass_losses runs the passes longest first: a batch of n passes is the next n of these lengths.
    longest_first = sorted((len(p.ids) for p in passes), reverse=True)
    per_token = len(examples) / sum(longest_first) if passes else 0.0
    ran = 0

    def advance(n_passes: int) -> None:
        nonlocal ran
        if on_progress is not None:
            on_progress(sum(longest_first[ran:ran + n_passes]) * per_token)
        ran += n_passes

    batch_tokens = cfg.batch_tokens or AUTO_BATCH_TOKENS.get(engine.device.type, AUTO_BATCH_TOKENS["cuda"])
    losses = pass_losses(engine, passes, batch_tokens, advance) if passes else np.empty(0)
    if not passes and on_progress is not None:
        on_progress(float(len(examples)))
    by_turn = {key: (losses[2 * k], losses[2 * k + 1]) for k, key in enumerate(keys)}
    turns = turn_table(plans, by_turn, cfg.ifd_form)
    return record_table(turns, [ex.id for ex in examples], each=cfg.turns == "each")


def example_cost(example: Example) -> int:
    """A tokenizer-free length proxy to sort records by (the response is read by both passes)."""
    history = sum(len(u) + len(a) for u, a in example.history)
    return len(example.instruction) + len(example.input) + 2 * len(example.output) + history


def plan_shards(costs: Sequence[float] | np.ndarray, shard_size: int) -> list[list[int]]:
    """Record positions sorted by cost (longest first), cut into shards of similar lengths."""
    order = np.argsort(-np.asarray(costs, dtype=np.float64), kind="stable")
    return [order[i:i + shard_size].tolist() for i in range(0, len(order), shard_size)]


def progress_bar(work: float, enabled: bool, position: int = 0, n_records: int = 0):
    """The scoring bar. It counts work, each record weighted by its length (example_cost, or the bytes of its
    line), not records: records are scored longest first, so a count of records would start slow and make the
    first minutes' estimate of the time left several times too long. The records done show after the bar.
    tqdm's own switch TQDM_DISABLE (set by `superfilter ... --quiet`) turns it off too."""
    disabled = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    bar = tqdm(total=work, desc="score", disable=disabled, dynamic_ncols=True, position=position, smoothing=0.05,
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")
    bar.set_postfix_str(f"0/{n_records} records", refresh=False)
    return bar


def score_shard(engine: Engine, examples: Sequence[Example], indices: Sequence[int], cfg: ScoreConfig,
                bar: Any = None, work: float = 0.0) -> pd.DataFrame:
    """Scores of examples[indices], with their positions in `_index`. work: the shard's share of the bar (its
    records' costs); 0 = one unit per record."""
    records = [examples[i] for i in indices]
    work = work or float(len(records))
    start = bar.n if bar is not None else 0.0
    per_record = work / len(records) if records else 0.0
    table = score_records(engine, records, cfg, (lambda done: bar.update(done * per_record)) if bar is not None
                          else None)
    if bar is not None:  # per-batch updates are fractional: land exactly on the shard's end
        bar.update(start + work - bar.n)
    table.insert(0, "_index", np.asarray(indices, dtype=np.int64))
    return table


def score_shards(engine: Engine, examples: Sequence[Example], shards: Sequence[Sequence[int]], costs: np.ndarray,
                 cfg: ScoreConfig, bar: Any, on_shard: Callable[[int, pd.DataFrame], None]) -> None:
    """Score each shard in turn, the bar advancing by work and showing the records done; on_shard(i, table)."""
    n_records, done = sum(len(s) for s in shards), 0
    for i, shard in enumerate(shards):
        table = score_shard(engine, examples, shard, cfg, bar, float(costs[list(shard)].sum()))
        done += len(shard)
        bar.set_postfix_str(f"{done}/{n_records} records")
        on_shard(i, table)


def score_examples(examples: Sequence[Example], model: Any, tokenizer: Any, cfg: ScoreConfig | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """Score records with a loaded (model, tokenizer): one row per record, in input order, columns SCORE_COLUMNS
    (+ TURN_COLUMNS for turns=each). Skipped records have NaN values and a skip_reason."""
    cfg = cfg or ScoreConfig()
    cfg.validate()
    engine = make_engine(model, tokenizer)
    costs = np.asarray([example_cost(ex) for ex in examples], dtype=np.float64)
    shards = plan_shards(costs, cfg.shard_size)
    frames: list[pd.DataFrame] = []
    with progress_bar(float(costs.sum()), progress, n_records=len(examples)) as bar:
        score_shards(engine, examples, shards, costs, cfg, bar, lambda _, table: frames.append(table))
    if not frames:
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    return pd.concat(frames).sort_values("_index").drop(columns="_index").reset_index(drop=True)
