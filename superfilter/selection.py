"""Selectors (a registry): score table + examples + budget → the chosen subset, with its metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import yaml

from superfilter.artifacts import write_jsonl
from superfilter.contracts import SCORE_COLUMNS, SUBSET_CARD_FILE, SUBSET_FILE, TURN_COLUMNS
from superfilter.data import Example, read_examples
from superfilter.embeddings import embed_texts, example_text
from superfilter.errors import ConfigError, DataError
from superfilter.facility import facility_location
from superfilter.models import ModelConfig, load_tokenizer
from superfilter.runtime import RuntimeConfig, resolve_device
from superfilter.tracking import StageRun

log = logging.getLogger(__name__)

SCORERS = ("weak", "strong", "none")
BUDGET_BASES = ("pool", "survivors")
ENDS = ("high", "low")
EXAMPLE_COLUMNS = ("id", "instruction", "input", "output", "system")  # a subset record's own fields, history aside
TOKEN_BUDGET_UNITS = ("response", "example")
# What identifies a tokenizer in the select key (not the dtype or the attention kernel of the model around it).
TOKENIZER_FIELDS = ("source", "path", "gguf_file", "revision", "trust_remote_code")
TABLE_ROWS = 10  # top and bottom examples shown in the tracker's table
TEXT_PREVIEW_CHARS = 300
# A ratio × size product such as 0.29 × 100 = 28.999999999999996 must floor to 29, not 28.
BUDGET_EPSILON = 1e-9


@dataclass
class SelectConfig:
    # allow_empty never changes which records are chosen, only whether none is an error (stages.select_params
    # still keys an allowed-empty run apart, so a run that forbids it never reuses an empty subset).
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("embed_batch_size", "allow_empty")

    name: str = "superfilter"
    scorer: str = "weak"  # which model's scores the selector reads: weak | strong (self_ifd) | none
    threshold: float = 1.0  # IFD selectors keep IFD < threshold (IFD > 1: the instruction does not help)
    keep_equal: bool = False  # also keep IFD == threshold (Cherry LLM keeps IFD <= 1)
    budget_of: str = "pool"  # the ratio applies to all records (pool) or to those left after the threshold
    count: int = 0  # exact budget; 0 = use the top-level ratio
    # > 0: a budget in tokens of the strong model's tokenizer instead of records: the longest prefix of the
    # selector's order whose tokens total at most this (the next record would exceed it); the ratio is ignored.
    budget_tokens: int = 0
    budget_tokens_of: str = "response"  # what it counts: response | example (system, history, prompt, response)
    base: int = 0  # budget = int(base × ratio), e.g. 52002 to reproduce the authors' Alpaca sizes
    end: str = "high"  # perplexity: keep the highest (high) or lowest (low) conditioned perplexity
    pool_ratio: float = 0.2  # superfilter_d: facility location runs on this top share of the data by IFD
    embedder: str = "minilm"  # superfilter_d, kmeans: minilm (all-MiniLM-L6-v2) | weak (embed_model's hidden state)
    # The model behind embedder=weak (a ModelConfig); typed Any so that a filter file can say ${model.weak}.
    embed_model: Any = None
    similarity: str = "euclidean"  # facility location: euclidean (submodlib's exp(-d/dim)) | cosine
    dense_max: int = 12_000  # facility location on more rows than this uses a sparse k-NN similarity
    n_neighbors: int = 300  # neighbours per row in the sparse similarity
    n_clusters: int = 100  # kmeans: clusters the budget is spread over
    embed_batch_size: int = 64
    allow_empty: bool = False  # an empty selection (budget rounds to 0, nothing qualifies) warns instead of failing

    def unused_fields(self) -> tuple[str, ...]:
        """Fields this selector ignores here, left out of the select key: embed_model unless the weak model embeds,
        the token budget's fields unless it is set (so the keys of record-budget runs never change)."""
        embeds_with_model = self.embedder == "weak" and self.name in SELECTORS and SELECTORS[self.name].needs_embeddings
        unused = () if embeds_with_model else ("embed_model",)
        return unused if self.budget_tokens else (*unused, "budget_tokens", "budget_tokens_of")

    def validate(self) -> None:
        if self.name not in SELECTORS:
            raise ConfigError(f"filter.name must be one of {sorted(SELECTORS)}, got {self.name!r}")
        spec = SELECTORS[self.name]
        if self.scorer not in SCORERS:
            raise ConfigError(f"filter.scorer must be one of {SCORERS}, got {self.scorer!r}")
        if spec.needs_scores and self.scorer == "none":
            raise ConfigError(f"filter={self.name} reads IFD/perplexity scores: set filter.scorer=weak or strong")
        if self.count < 0 or self.base < 0:
            raise ConfigError(f"filter.count and filter.base must be >= 0, got {self.count}, {self.base}")
        if self.count and self.base:
            raise ConfigError("set at most one of filter.count (exact size) and filter.base (int(base × ratio))")
        if self.budget_tokens < 0:
            raise ConfigError(f"filter.budget_tokens must be >= 0 (0 = a budget in records), got {self.budget_tokens}")
        if self.budget_tokens and (self.count or self.base):
            raise ConfigError("filter.budget_tokens replaces the record budget: leave filter.count and filter.base 0")
        if self.budget_tokens and self.name == "full":
            raise ConfigError("filter=full takes every record: filter.budget_tokens does not apply to it")
        if self.budget_tokens_of not in TOKEN_BUDGET_UNITS:
            raise ConfigError(f"filter.budget_tokens_of must be one of {TOKEN_BUDGET_UNITS}, "
                              f"got {self.budget_tokens_of!r}")
        if self.budget_of not in BUDGET_BASES:
            raise ConfigError(f"filter.budget_of must be one of {BUDGET_BASES}, got {self.budget_of!r}")
        if self.end not in ENDS:
            raise ConfigError(f"filter.end must be one of {ENDS}, got {self.end!r}")
        if not 0.0 < self.pool_ratio <= 1.0:
            raise ConfigError(f"filter.pool_ratio must be in (0, 1], got {self.pool_ratio}")
        if self.embedder not in ("minilm", "weak"):
            raise ConfigError(f"filter.embedder must be minilm or weak, got {self.embedder!r}")
        if self.embedder == "weak" and spec.needs_embeddings and not isinstance(self.embed_model, ModelConfig):
            raise ConfigError("filter.embedder=weak needs filter.embed_model (the filter files set ${model.weak})")
        if self.similarity not in ("euclidean", "cosine"):
            raise ConfigError(f"filter.similarity must be euclidean or cosine, got {self.similarity!r}")
        if self.n_neighbors < 2 or self.n_clusters < 1 or self.dense_max < 0 or self.embed_batch_size < 1:
            raise ConfigError("filter.n_neighbors >= 2, n_clusters >= 1, dense_max >= 0, embed_batch_size >= 1")


# The candidate table


def read_scores(path: Path) -> pd.DataFrame:
    scores = pd.read_parquet(path)
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}")
    duplicated = scores["id"][scores["id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: {len(duplicated)} duplicate ids, e.g. {duplicated.iloc[0]!r}")
    return scores


def candidate_table(examples: Sequence[Example], scores: pd.DataFrame | None) -> pd.DataFrame:
    """One row per example, sorted by id (the tie-breaker everywhere): text lengths, plus the scores if any."""
    table = pd.DataFrame({
        "id": [ex.id for ex in examples],
        "instruction_chars": [len(ex.prompt) for ex in examples],
        "response_chars": [len(ex.output) for ex in examples],
        "has_input": [bool(ex.input.strip()) for ex in examples],
    })
    if table["id"].duplicated().any():
        raise DataError("examples: duplicate ids (prepare drops exact duplicates; was the file edited?)")
    if scores is not None:
        known = set(table["id"])
        foreign = [i for i in scores["id"] if i not in known]
        if foreign:
            raise DataError(f"scores: {len(foreign)} ids are not in the examples, e.g. {foreign[0]!r}")
        if len(scores) != len(table):
            raise DataError(f"scores: {len(table) - len(scores)} of {len(table)} examples have no score row")
        table = table.merge(scores, on="id", how="left", validate="one_to_one")
    return table.sort_values("id", kind="mergesort").reset_index(drop=True)


def scored(table: pd.DataFrame, column: str) -> pd.Series:
    """Rows with a usable value in `column`: finite and not skipped by scoring (NaN/skip rows are never chosen)."""
    ok = np.isfinite(table[column].to_numpy(dtype=float))
    if "skip_reason" in table:
        reason = table["skip_reason"]
        ok &= (reason.isna() | (reason.astype(str) == "")).to_numpy()
    return pd.Series(ok, index=table.index)


def below_threshold(table: pd.DataFrame, cfg: SelectConfig) -> pd.DataFrame:
    ifd = table["ifd"]
    keep = (ifd <= cfg.threshold) if cfg.keep_equal else (ifd < cfg.threshold)
    return table[scored(table, "ifd") & keep]


def ranked_ids(table: pd.DataFrame, column: str, descending: bool) -> list[str]:
    """Ids by `column`, ties broken by id, so the order never depends on file order or sort stability."""
    ordered = table.sort_values([column, "id"], ascending=[not descending, True], kind="mergesort")
    return ordered["id"].tolist()


# Budgets


def budget_size(n: int, ratio: float, count: int = 0, base: int = 0) -> int:
    """count if set, else floor(base × ratio) (the authors' int(52002 × rate)), else floor(n × ratio)."""
    if count:
        return count
    return math.floor((base or n) * ratio + BUDGET_EPSILON)


@dataclass
class Choice:
    ids: list[str]  # the chosen ids, best first (selection order)
    requested: int  # the budget asked for
    available: int  # records the selector could choose from (after thresholds and skips)
    details: dict[str, Any] = field(default_factory=dict)


Embed = Callable[[list[str]], np.ndarray]  # ids → one L2-normalised row per id


def take(ranked: list[str], requested: int, available: int, **details: Any) -> Choice:
    return Choice(ranked[:requested], requested, available, details)


def ratio_budget(cfg: SelectConfig, ratio: float, n_all: int, n_survivors: int) -> int:
    return budget_size(n_all if cfg.budget_of == "pool" else n_survivors, ratio, cfg.count, cfg.base)


# The selectors


def select_ifd(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None) -> Choice:
    """Superfiltering (and self_ifd): IFD below the threshold, highest first."""
    survivors = below_threshold(table, cfg)
    requested = ratio_budget(cfg, ratio, len(table), len(survivors))
    return take(ranked_ids(survivors, "ifd", descending=True), requested, len(survivors))


def select_ifd_diverse(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int,
                       embed: Embed | None) -> Choice:
    """Superfiltering.D: the top pool_ratio by IFD (below the threshold), then facility location to the budget."""
    if embed is None:
        raise ValueError("superfilter_d needs an embedder")
    survivors = below_threshold(table, cfg)
    # The pool is a share of the data (the authors: 10,400 = 20% of 52,002), never the exact-count budget.
    pool_basis = len(table) if cfg.budget_of == "pool" else len(survivors)
    pool_size = budget_size(pool_basis, cfg.pool_ratio, base=cfg.base)
    pool = ranked_ids(survivors, "ifd", descending=True)[:pool_size]
    requested = ratio_budget(cfg, ratio, len(table), len(survivors))
    k = min(requested, len(pool))
    details: dict[str, Any] = {"pool_requested": pool_size, "pool_size": len(pool)}
    if k == 0:
        return Choice([], requested, len(pool), details)
    result = facility_location(embed(pool), k, cfg.similarity, cfg.dense_max, cfg.n_neighbors)
    details.update(similarity_mode=result.mode, n_neighbors=result.n_neighbors, objective=result.objective)
    return Choice([pool[i] for i in result.order], requested, len(pool), details)


def select_perplexity(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int,
                      embed: Embed | None) -> Choice:
    """The paper's "perplexity only" ablation: conditioned PPL, the high (or low) end."""
    usable = table[scored(table, "ppl_conditioned")]
    requested = ratio_budget(cfg, ratio, len(table), len(usable))
    return take(ranked_ids(usable, "ppl_conditioned", descending=cfg.end == "high"), requested, len(usable))


def select_length(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None) -> Choice:
    """Longest responses (in characters, so it needs no scores): the baseline IFD is said to track."""
    requested = ratio_budget(cfg, ratio, len(table), len(table))
    return take(ranked_ids(table, "response_chars", descending=True), requested, len(table))


def select_random(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None) -> Choice:
    """A seeded permutation of the id-sorted records: smaller budgets are prefixes of larger ones."""
    requested = ratio_budget(cfg, ratio, len(table), len(table))
    order = np.random.default_rng(seed).permutation(len(table))
    return take(table["id"].to_numpy()[order].tolist(), requested, len(table))


def spread_budget(sizes: Sequence[int], budget: int) -> list[int]:
    """As equal a share per cluster as the cluster sizes allow (water filling); leftovers go to lower indices."""
    quota = [0] * len(sizes)
    left = min(budget, sum(sizes))
    while left:
        open_clusters = [c for c, size in enumerate(sizes) if quota[c] < size]
        share = max(1, left // len(open_clusters))
        for c in open_clusters:
            add = min(share, sizes[c] - quota[c], left)
            quota[c] += add
            left -= add
            if not left:
                break
    return quota


def select_kmeans(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None) -> Choice:
    """Diversity only (the paper's k-means ablation): k-means on embeddings, the budget spread evenly over the
    clusters, a seeded random draw inside each (with one cluster this is the random baseline)."""
    # deferred: scikit-learn/apricot load only for the selectors that use them
    from sklearn.cluster import KMeans

    if embed is None:
        raise ValueError("kmeans needs an embedder")
    requested = ratio_budget(cfg, ratio, len(table), len(table))
    ids = table["id"].tolist()
    n_clusters = max(1, min(cfg.n_clusters, requested, len(ids)))
    if requested == 0:
        return Choice([], 0, len(ids), {"n_clusters": 0})
    labels = KMeans(n_clusters=n_clusters, random_state=seed, n_init=1).fit_predict(embed(ids))
    members = [[i for i, label in enumerate(labels) if label == c] for c in range(n_clusters)]
    quota = spread_budget([len(m) for m in members], requested)
    rng = np.random.default_rng(seed)
    picked = [[ids[i] for i in rng.permutation(m)[:q]] for m, q in zip(members, quota, strict=True)]
    # Round-robin over clusters, so any prefix of the result is itself spread over the clusters.
    chosen = [group[r] for r in range(max(quota, default=0)) for group in picked if r < len(group)]
    return Choice(chosen, requested, len(ids), {"n_clusters": n_clusters})


def select_full(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None) -> Choice:
    """Every record: the 100% baseline (the ratio is ignored)."""
    return take(table["id"].tolist(), len(table), len(table))


@dataclass(frozen=True)
class SelectorSpec:
    select: Callable[[pd.DataFrame, SelectConfig, float, int, Embed | None], Choice]
    needs_scores: bool
    needs_embeddings: bool


SELECTORS: dict[str, SelectorSpec] = {
    "superfilter": SelectorSpec(select_ifd, needs_scores=True, needs_embeddings=False),
    "self_ifd": SelectorSpec(select_ifd, needs_scores=True, needs_embeddings=False),
    "superfilter_d": SelectorSpec(select_ifd_diverse, needs_scores=True, needs_embeddings=True),
    "perplexity": SelectorSpec(select_perplexity, needs_scores=True, needs_embeddings=False),
    "length": SelectorSpec(select_length, needs_scores=False, needs_embeddings=False),
    "random": SelectorSpec(select_random, needs_scores=False, needs_embeddings=False),
    "kmeans": SelectorSpec(select_kmeans, needs_scores=False, needs_embeddings=True),
    "full": SelectorSpec(select_full, needs_scores=False, needs_embeddings=False),
}


def select(table: pd.DataFrame, cfg: SelectConfig, ratio: float, seed: int, embed: Embed | None = None,
           tokens: Mapping[str, int] | None = None) -> Choice:
    """Run the configured selector on a candidate table; never returns more ids than asked for.

    tokens: id → token count, needed for filter.budget_tokens (token_counts); the selector then orders every
    candidate and the budget takes the longest prefix of that order that fits."""
    cfg.validate()
    spec = SELECTORS[cfg.name]
    if spec.needs_scores and "ifd" not in table:
        raise ConfigError(f"filter={cfg.name} needs a score table (filter.scorer=weak or strong)")
    if cfg.budget_tokens:
        if tokens is None:
            raise ValueError("filter.budget_tokens needs the records' token counts (token_counts)")
        # An exact count of every record makes the selector rank all it can choose from.
        choice = token_prefix(spec.select(table, replace(cfg, count=len(table)), ratio, seed, embed), cfg, tokens)
    else:
        choice = spec.select(table, cfg, ratio, seed, embed)
    if len(choice.ids) != len(set(choice.ids)):
        raise AssertionError(f"selector {cfg.name} returned duplicate ids")
    if not choice.ids:
        check_not_empty(choice, cfg, ratio, len(table))
    elif cfg.budget_tokens and choice.details["next_tokens"] is None:
        log.warning("filter=%s: every one of its %d ranked records fits in filter.budget_tokens=%d (%d tokens); took "
                    "them all", cfg.name, len(choice.ids), cfg.budget_tokens, choice.details["selected_tokens"])
    elif len(choice.ids) < choice.requested:
        log.warning("filter=%s: asked for %d records but only %d qualify; took %d",
                    cfg.name, choice.requested, choice.available, len(choice.ids))
    return choice


def token_prefix(ranked: Choice, cfg: SelectConfig, tokens: Mapping[str, int]) -> Choice:
    """The longest prefix of the selector's order whose tokens total at most filter.budget_tokens: the total never
    exceeds the budget, and the next record in the order (if any) would. Nothing is skipped to fill the remainder
    with shorter records, so the subset stays what the selector ranks highest."""
    total = 0
    taken: list[str] = []
    for id_ in ranked.ids:
        if total + tokens[id_] > cfg.budget_tokens:
            break
        total += tokens[id_]
        taken.append(id_)
    details = {**ranked.details, "budget_tokens": cfg.budget_tokens, "budget_tokens_of": cfg.budget_tokens_of,
               "selected_tokens": total, "ranked": len(ranked.ids),
               "next_tokens": tokens[ranked.ids[len(taken)]] if len(taken) < len(ranked.ids) else None}
    return Choice(taken, len(taken), ranked.available, details)


def token_counts(examples: Sequence[Example], tokenizer: Any, of: str = "response") -> dict[str, int]:
    """id → tokens of the response (of="response") or of every text of the record (of="example": system prompt,
    earlier turns, instruction and input, response), each text tokenised alone without special tokens or template."""
    if of not in TOKEN_BUDGET_UNITS:
        raise ConfigError(f"filter.budget_tokens_of must be one of {TOKEN_BUDGET_UNITS}, got {of!r}")
    texts: list[str] = []
    owners: list[str] = []
    for ex in examples:
        parts = [ex.output]
        if of == "example":
            parts += [ex.system, *(text for turn in ex.history for text in turn), ex.prompt]
        texts += [p for p in parts if p]
        owners += [ex.id] * sum(1 for p in parts if p)
    counts = dict.fromkeys((ex.id for ex in examples), 0)
    if texts:
        for owner, ids in zip(owners, tokenizer(texts, add_special_tokens=False)["input_ids"], strict=True):
            counts[owner] += len(ids)
    return counts


def tokenizer_params(model: ModelConfig) -> dict[str, Any]:
    """What identifies the tokenizer that counts a token budget, for the select key."""
    return {name: getattr(model, name) for name in TOKENIZER_FIELDS}


def check_not_empty(choice: Choice, cfg: SelectConfig, ratio: float, n_records: int) -> None:
    """An empty selection fails (or, with allow_empty, warns) with the numbers that made it empty."""
    if cfg.budget_tokens and choice.details.get("next_tokens") is not None:
        why = (f"its first record has {choice.details['next_tokens']} tokens, more than filter.budget_tokens="
               f"{cfg.budget_tokens}")
    elif cfg.budget_tokens:
        why = f"none of them qualify ({choice.available} candidates)"
    elif choice.requested == 0:
        why = f"the budget rounds down to 0 (ratio {ratio:g} of {n_records} records)"
    else:
        why = f"none of them qualify (budget {choice.requested}, {choice.available} candidates)"
    message = f"filter={cfg.name} selected 0 of {n_records} records: {why}"
    if cfg.allow_empty:
        log.warning("%s; writing an empty selection (allow_empty)", message)
        return
    larger = "a larger filter.budget_tokens" if cfg.budget_tokens else "a larger ratio or an exact count"
    raise DataError(f"{message}; use {larger}, or accept an empty result with allow_empty "
                    "(filter.allow_empty=true, --allow-empty)")


# Metrics and output


def _stats(values: pd.Series) -> dict[str, float]:
    values = values.astype(float)
    values = values[np.isfinite(values)]
    if values.empty:
        return {}
    return {"mean": float(values.mean()), "median": float(values.median()), "min": float(values.min()),
            "max": float(values.max())}


def describe(rows: pd.DataFrame) -> dict[str, Any]:
    """Length, input share and score statistics of a set of rows (the subset, or the pool to compare with)."""
    out: dict[str, Any] = {
        "n": len(rows),
        "response_chars": _stats(rows["response_chars"]),
        "instruction_chars": _stats(rows["instruction_chars"]),
        "share_with_input": float(rows["has_input"].mean()) if len(rows) else float("nan"),
    }
    for column in ("n_response_tokens", "n_prompt_tokens", "ifd", "ppl_conditioned"):
        if column in rows:
            out[column] = _stats(rows[column])
    return out


def selection_metrics(table: pd.DataFrame, cfg: SelectConfig, choice: Choice, ratio: float) -> dict[str, Any]:
    chosen = table.set_index("id").loc[choice.ids].reset_index()
    metrics: dict[str, Any] = {
        "selector": cfg.name,
        "scorer": cfg.scorer,
        "ratio": ratio,
        "count": len(choice.ids),
        "requested": choice.requested,
        "available": choice.available,
        "shortfall": choice.requested - len(choice.ids),
        "pool": describe(table),
        "subset": describe(chosen),
        **choice.details,
    }
    if "ifd" in table:
        metrics["n_unscored"] = int((~scored(table, "ifd")).sum())
    return metrics


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(value) else float(value)
    return value


def output_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The score columns as every output shows them (subset.jsonl, the command, the API): skip_reason null, not
    "", when the record was scored, so that `isna()` counts the scored records."""
    out = table.copy()
    if "skip_reason" in out:
        out["skip_reason"] = pd.Series([None if v is None or v == "" else str(v) for v in out["skip_reason"]],
                                       index=out.index, dtype=object)
    return out


def subset_records(examples: dict[str, Example], table: pd.DataFrame, ids: Sequence[str]) -> list[dict[str, Any]]:
    """The chosen records in selection order, in one flat shape: the record's fields, `rank`, then the score
    columns the command and the API add (NaN written as null, skip_reason null when scored). `history` is written
    only when a chosen record has one: a column of empty lists would load as a list of nulls in `datasets`."""
    score_columns = [c for c in (*SCORE_COLUMNS, *TURN_COLUMNS) if c != "id" and c in table]
    by_id = output_scores(table).set_index("id")
    multi_turn = any(examples[id_].history for id_ in ids)
    records = []
    for rank, id_ in enumerate(ids):
        record = examples[id_].to_dict()
        if not multi_turn:
            del record["history"]
        record["rank"] = rank
        if score_columns:
            row = by_id.loc[id_]
            record.update({c: _json_value(row[c]) for c in score_columns})
        records.append(record)
    return records


# The type of each subset.jsonl column, declared in the dataset card: JSON cannot type a column that holds only
# nulls (skip_reason in a subset of scored records) or empty lists.
CARD_TYPES = {"id": "string", "instruction": "string", "input": "string", "output": "string", "system": "string",
              "rank": "int64", "n_prompt_tokens": "int64", "n_response_tokens": "int64", "loss_direct": "float64",
              "loss_conditioned": "float64", "ppl_direct": "float64", "ppl_conditioned": "float64",
              "ifd": "float64", "skip_reason": "string", "ifd_max": "float64", "n_turns": "int64",
              "n_turns_scored": "int64"}


def dataset_card(columns: Sequence[str], selector: str) -> str:
    """README.md for the select folder: `datasets.load_dataset(<folder>)` reads subset.jsonl (and only it) with
    these column types, whatever values this subset happens to hold."""
    features = [{"name": c, "list": {"list": "string"}} if c == "history" else {"name": c, "dtype": CARD_TYPES[c]}
                for c in columns]
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": SUBSET_FILE}]}],
              "dataset_info": {"features": features}}
    return (f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\nThe records selected by `{selector}`, best first, "
            f"with their scores: {SUBSET_FILE}. The selection's numbers are in metrics.json.\n")


def preview_rows(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """The first and last TABLE_ROWS chosen records (top and bottom of the selection order)."""
    columns = ["end", "rank", "id", "ifd", "ppl_conditioned", "n_response_tokens", "instruction", "input", "output"]
    picks = [("top", r) for r in records[:TABLE_ROWS]]
    picks += [("bottom", r) for r in records[max(TABLE_ROWS, len(records) - TABLE_ROWS):]]
    rows = []
    for end, r in picks:
        rows.append([end, r["rank"], r["id"], r.get("ifd"), r.get("ppl_conditioned"), r.get("n_response_tokens"),
                     r["instruction"][:TEXT_PREVIEW_CHARS], r["input"][:TEXT_PREVIEW_CHARS],
                     r["output"][:TEXT_PREVIEW_CHARS]])
    return columns, rows


def make_embed(examples: dict[str, Example], cfg: SelectConfig, runtime: RuntimeConfig) -> Embed:
    def embed(ids: list[str]) -> np.ndarray:
        return embed_texts([example_text(examples[i]) for i in ids], cfg.embedder, cfg.embed_model,
                           cfg.embed_batch_size, resolve_device(runtime.device))

    return embed


def select_stage(
    examples_path: Path, scores_path: Path | None, cfg: SelectConfig, ratio: float, seed: int,
    runtime: RuntimeConfig, out_dir: Path, tracker: StageRun, tokenizer_model: ModelConfig | None = None,
) -> dict[str, Any]:
    """Write out_dir/subset.jsonl (records with their score columns, flat); return metrics. tokenizer_model: the model
    whose tokenizer counts filter.budget_tokens (the strong model; unused without a token budget)."""
    examples = read_examples(examples_path)
    by_id = {ex.id: ex for ex in examples}
    scores = read_scores(scores_path) if scores_path is not None else None
    table = candidate_table(examples, scores)
    embed = make_embed(by_id, cfg, runtime) if SELECTORS[cfg.name].needs_embeddings else None
    tokens = None
    if cfg.budget_tokens:
        if tokenizer_model is None:
            raise ConfigError("filter.budget_tokens needs the model whose tokenizer counts it (the strong model)")
        tokens = token_counts(examples, load_tokenizer(tokenizer_model), cfg.budget_tokens_of)
    choice = select(table, cfg, ratio, seed, embed, tokens)
    records = subset_records(by_id, table, choice.ids)
    write_jsonl(out_dir / SUBSET_FILE, records, allow_nan=False)
    columns = list(records[0]) if records else [*EXAMPLE_COLUMNS, "rank", *SCORE_COLUMNS[1:]]
    (out_dir / SUBSET_CARD_FILE).write_text(dataset_card(columns, cfg.name), encoding="utf-8")
    metrics = selection_metrics(table, cfg, choice, ratio)
    columns, rows = preview_rows(records)
    write_jsonl(out_dir / "top_bottom.jsonl", [dict(zip(columns, row, strict=True)) for row in rows], allow_nan=False)
    tracker.table("top_bottom", columns, rows)
    log.info("select: %s chose %d of %d records (asked %d)", cfg.name, len(choice.ids), len(table),
             choice.requested)
    return metrics
