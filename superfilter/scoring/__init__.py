"""IFD scoring: per-example PPL(y), PPL(y|x) and IFD with a weak model → scores.parquet.

config (settings, columns, skip reasons) → plans (token ids per pass) → engine (batched forward passes) →
tables (per-record values, in memory) → shards (resumable files) / launcher + worker (several processes) →
plots → stage (the pipeline's score stage).
"""

from superfilter.contracts import SCORE_COLUMNS, TURN_COLUMNS
from superfilter.scoring.config import (
    AUTO_BATCH_TOKENS,
    BOUNDARIES,
    IFD_FORMS,
    SKIP_REASONS,
    TURN_MODES,
    ScoreConfig,
)
from superfilter.scoring.engine import Engine, batch_nll, make_engine, pass_losses, token_budget_batches
from superfilter.scoring.launcher import WORKER_JOB_FILE, balance_shards, launch_workers
from superfilter.scoring.plans import Pass, Tokenization, TurnPlan, TurnText, plan_records, probe_tokenization
from superfilter.scoring.plots import HISTOGRAM_FILE, plot_ifd_histogram
from superfilter.scoring.shards import (
    LAYOUT_FILE,
    SHARD_DIR,
    ExampleFile,
    marker_path,
    merge_shards,
    shard_done,
    shard_path,
)
from superfilter.scoring.stage import score_metrics, score_stage
from superfilter.scoring.tables import ifd_values, score_examples, score_records

__all__ = [
    "AUTO_BATCH_TOKENS", "BOUNDARIES", "HISTOGRAM_FILE", "IFD_FORMS", "LAYOUT_FILE", "SCORE_COLUMNS", "SHARD_DIR",
    "SKIP_REASONS", "TURN_COLUMNS", "TURN_MODES", "WORKER_JOB_FILE", "Engine", "ExampleFile", "Pass", "ScoreConfig",
    "Tokenization", "TurnPlan", "TurnText", "balance_shards", "batch_nll", "ifd_values", "launch_workers",
    "make_engine", "marker_path", "merge_shards", "pass_losses", "plan_records", "plot_ifd_histogram",
    "probe_tokenization", "score_examples", "score_metrics", "score_records", "score_stage", "shard_done",
    "shard_path", "token_budget_batches",
]
