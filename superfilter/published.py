"""Published numbers to set beside ours, each cell citing where it comes from; a run with no matching cell gets none."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAPER = "Superfiltering (ACL 2024)"
# Later papers that use Superfiltering as a baseline, as a results aggregator lists them; their recipes differ.
LATER = "published, Superfiltering as a baseline, recipe differs"


@dataclass(frozen=True)
class Cell:
    """One published number and the setting it was measured in (conf names: data, model/strong, model/weak, filter).

    weak is the model that scored the data (the strong model itself for self-filtering); None where no model scores
    (random, k-means clustering of the paper's embeddings). setting is the bench/* experiment name for numbers from
    later papers, None for the 2024 paper's own tables."""

    source: str
    where: str  # the table and row it is read from
    metric: str
    value: float
    dataset: str
    strong: str
    weak: str | None
    filter: str
    ratio: float
    setting: str | None = None


def _table2(dataset: str, strong: str, rows: dict[float, dict[str, float]]) -> list[Cell]:
    row_name = {1.0: "100%", 0.05: "5%", 0.1: "10%", 0.15: "15%"}
    return [Cell(PAPER, f"Table 2, {dataset} → {strong}, {row_name[ratio]}", metric, value, dataset, strong,
                 None if ratio == 1.0 else "gpt2", "full" if ratio == 1.0 else "superfilter", ratio)
            for ratio, metrics in rows.items() for metric, value in metrics.items()]


def _table3(filter_name: str, weak: str | None, label: str, values: Sequence[float]) -> list[Cell]:
    return [Cell(PAPER, f"Table 3, {label}, {ratio:.0%}", "pairwise", value, "alpaca", "llama2_7b", weak,
                 filter_name, ratio) for ratio, value in zip((0.05, 0.1, 0.15), values, strict=True)]


def _later(setting: str, dataset: str, strong: str, ratio: float, metrics: dict[str, float]) -> list[Cell]:
    return [Cell(LATER, f"{setting}: {metric}", metric, value, dataset, strong, "gpt2", "superfilter", ratio, setting)
            for metric, value in metrics.items()]


CELLS: tuple[Cell, ...] = (
    # Table 2: Alpaca 52k → LLaMA2-7B with GPT-2 IFD; pairwise vs the 100% model, Open LLM v1 average, AlpacaEval v1.
    *_table2("alpaca", "llama2_7b", {
        1.0: {"pairwise": 1.000, "Open LLM": 55.25, "AlpacaEval": 27.75},
        0.05: {"pairwise": 1.133, "Open LLM": 55.67, "AlpacaEval": 33.04},
        0.1: {"pairwise": 1.101, "Open LLM": 56.97},
        0.15: {"pairwise": 1.193, "Open LLM": 56.61},
    }),
    # Table 2, the larger setting: Alpaca-GPT4 → LLaMA2-13B.
    *_table2("alpaca_gpt4", "llama2_13b", {
        1.0: {"Open LLM": 60.81, "AlpacaEval": 77.86},
        0.05: {"pairwise": 1.041, "Open LLM": 63.29, "AlpacaEval": 78.15},
    }),
    # Table 3: Alpaca → LLaMA2-7B, pairwise vs the 100% model at 5/10/15% (its GPT-2 IFD row repeats Table 2's).
    *_table3("random", None, "random", (0.936, 0.968, 0.977)),
    *_table3("kmeans", None, "k-means diversity", (0.927, 0.977, 0.982)),
    *_table3("perplexity", "gpt2", "GPT-2 perplexity", (0.261, 0.569, 0.610)),
    *_table3("self_ifd", "llama2_7b", "LLaMA2-7B IFD", (1.303, 1.330, 1.294)),
    # Today's settings (conf/experiment/bench/*), Superfiltering as a baseline in later papers.
    *_later("bench_math", "metamathqa", "qwen2_5_7b", 0.1, {"GSM8K": 7.6, "MATH-500": 63.4, "AIME24": 4.8}),
    *_later("bench_finance", "finance_alpaca", "llama3_8b", 0.1, {"FiQA": 31.5}),
    *_later("bench_medical", "medical_meadow", "llama3_8b", 0.1, {"MedQA": 41.63}),
    *_later("bench_general", "alpaca", "llama3_8b", 0.1, {"AlpacaEval": 12.08}),
    *_later("bench_code", "magicoder_evol", "qwen2_5_7b", 0.1, {"HumanEval": 43.3}),
    # "total" is the sum of the four Open LLM v1 scores (ours reports their average); SUM is that paper's own sum.
    *_later("bench_dolly", "dolly", "llama3_8b", 0.15, {"Open LLM total": 142, "SUM": 140.6}),
)


def cells_for(dataset: str, strong: str, weak: str | None, filter_name: str, ratio: float | None,
              setting: str | None = None, cells: Sequence[Cell] = CELLS) -> list[Cell]:
    """The published cells of exactly this setting: data, strong model, the scoring model (for filters that score),
    filter and budget; a bench/* setting also by its experiment name. Anything else matches nothing."""
    if ratio is None:
        return []
    return [c for c in cells
            if (c.dataset, c.strong, c.filter) == (dataset, strong, filter_name) and abs(c.ratio - ratio) < 1e-9
            and (c.weak is None or c.weak == weak) and (c.setting is None or c.setting == setting)]


def describe(cells: Sequence[Cell]) -> str:
    """E.g. 'pairwise 1.133 · Open LLM 55.67 (Superfiltering (ACL 2024), Table 2, alpaca → llama2_7b)'; '–' if none."""
    if not cells:
        return "–"
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.source, cell.where.split(":")[0].rsplit(",", 1)[0] if cell.setting is None
                           else cell.setting), []).append(cell)
    parts = []
    for (source, where), group in groups.items():
        values = " · ".join(f"{c.metric} {c.value:.3f}" if c.metric == "pairwise" else f"{c.metric} {c.value:g}"
                            for c in group)
        parts.append(f"{values} ({source}, {where})")
    return "; ".join(parts)
