"""IFD scoring: per-example PPL(y), PPL(y|x) and IFD with a weak model → scores.parquet."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from superfilter.artifacts import read_json, write_json_atomic
from superfilter.data import Example, file_digest
from superfilter.errors import ConfigError, UserError
from superfilter.models import ModelConfig
from superfilter.prompts import SCORING_MODES, scoring_prompt
from superfilter.runtime import RuntimeConfig, resolve_device
from superfilter.tracking import StageRun

log = logging.getLogger(__name__)

IFD_FORMS = ("ppl_ratio", "loss_ratio")
TURN_MODES = ("last", "each")
BOUNDARIES = ("reference", "exact")
COLUMNS = ("id", "n_prompt_tokens", "n_response_tokens", "loss_direct", "loss_conditioned", "ppl_direct",
           "ppl_conditioned", "ifd", "skip_reason")
TURN_COLUMNS = ("ifd_max", "n_turns", "n_turns_scored")  # added when turns=each
SKIP_REASONS = {
    "empty_response": "the response is the empty string",
    "prompt_too_long": "the prompt alone has more than max_length tokens",
    "response_truncated": "truncation to max_length left no response token to score",
    "response_too_short": "the response-only pass predicts no token (a one-token response, no BOS, no prefix)",
    "nonfinite_loss": "a loss or the IFD came out NaN or infinite",
}
HEAD_CHUNK = 2048  # response positions per lm_head call: bounds the logits buffer at HEAD_CHUNK × vocab floats
# batch_tokens=0 picks these: a CPU is near its matmul roofline at batch 1 already, so bigger batches there only
# add padding (measured: 1024 → 5.0 rec/s, 8192 → 3.0 rec/s with SmolLM2); a GPU needs big batches to fill up.
AUTO_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}
SHARD_DIR = "shards"
LAYOUT_FILE = "layout.json"
WORKER_JOB_FILE = "worker_job.json"
HISTOGRAM_FILE = "ifd_hist.png"


@dataclass
class ScoreConfig:
    # None of these change a score (only float rounding through batch shapes): they stay out of the key.
    # max_skip_fraction is a check on the result, so raising it after a failed run resumes the same folder.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_tokens", "shard_size", "max_skip_fraction")

    prompt: str = "none"  # none (Superfiltering) | alpaca (Cherry) | chat (tokenizer's chat template)
    ifd_form: str = "ppl_ratio"  # ppl_ratio (Superfiltering) | loss_ratio (Cherry)
    turns: str = "last"  # last | each (multi-turn records)
    boundary: str = "reference"  # reference (re-tokenise the prefix, as the authors) | exact
    max_length: int = 1024
    max_skip_fraction: float = 0.5
    batch_tokens: int = 0  # padded tokens per forward pass (longest × count); 0 = auto (1024 CPU, 16384 GPU)
    shard_size: int = 256  # records per resumable shard; a resumed run keeps the first run's layout

    def validate(self) -> None:
        for name, value, allowed in (("prompt", self.prompt, SCORING_MODES), ("ifd_form", self.ifd_form, IFD_FORMS),
                                     ("turns", self.turns, TURN_MODES), ("boundary", self.boundary, BOUNDARIES)):
            if value not in allowed:
                raise ConfigError(f"score.{name} must be one of {list(allowed)}, got {value!r}")
        for name in ("max_length", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"score.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_tokens < 0:
            raise ConfigError(f"score.batch_tokens must be >= 0 (0 = auto), got {self.batch_tokens}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"score.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")


# ---------------------------------------------------------------------------------------------------------------------
# Token plans: which ids each pass sees and which of them carry a loss.


@dataclass(frozen=True)
class Pass:
    """One forward pass: `ids`, and the first target position; ids[start:] are scored, each given what precedes."""

    ids: tuple[int, ...]
    start: int

    @property
    def n_targets(self) -> int:
        return max(0, len(self.ids) - self.start)


@dataclass(frozen=True)
class TurnPlan:
    n_prompt_tokens: int  # tokens before the first response token of the conditioned pass, BOS included
    conditioned: Pass
    direct: Pass
    skip_reason: str  # "" when both passes have targets


@dataclass(frozen=True)
class TurnText:
    prompt: str  # the conditioning text x; the conditioned text is prompt + output
    prefix: str  # the response-only pass reads prefix + output ("" for Superfiltering)
    output: str
    lead: tuple[int, ...]  # ids before the text in both passes (the tokenizer's BOS)


@dataclass(frozen=True)
class Tokenization:
    """How the tokenizer wraps a text in special tokens, found by probing it once."""

    lead: tuple[int, ...]
    tail: tuple[int, ...]
    bos_text: str
    bos_id: int | None


def probe_tokenization(tokenizer: Any) -> Tokenization:
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return Tokenization(tuple(full[:i]), tuple(full[i + len(bare):]), tokenizer.bos_token or "",
                                tokenizer.bos_token_id)
    raise UserError(f"{type(tokenizer).__name__}: cannot find a text's tokens among the special tokens it adds")


def record_turns(example: Example, cfg: ScoreConfig, tokenizer: Any, tokenization: Tokenization) -> list[TurnText]:
    """The turns to score: the last reply (given the full history), or every reply with turns=each."""
    if cfg.turns == "each" and example.history:
        parts = [Example(example.id, u, "", a, example.history[:i], example.system)
                 for i, (u, a) in enumerate(example.history)] + [example]
    else:
        parts = [example]
    texts = []
    for part in parts:
        prompt, prefix = scoring_prompt(part, cfg.prompt, tokenizer)
        lead = tokenization.lead
        # Chat templates that write BOS themselves (Gemma) would get a second one from the tokenizer; the BOS
        # becomes an id in both passes instead, so the response-only pass starts the same way.
        if cfg.prompt == "chat" and tokenization.bos_text and prompt.startswith(tokenization.bos_text):
            prompt = prompt[len(tokenization.bos_text):]
            lead = lead or ((tokenization.bos_id,) if tokenization.bos_id is not None else ())
        texts.append(TurnText(prompt, prefix, part.output, lead))
    return texts


def _truncate(content: Sequence[int], lead: Sequence[int], tail: Sequence[int], max_length: int) -> tuple[int, ...]:
    # What `tokenizer.encode(text, truncation=True, max_length=m)` returns: content cut so specials still fit.
    keep = max(0, max_length - len(lead) - len(tail))
    return (*lead, *content[:keep], *tail)


def _direct_length(max_length: int, n_prompt: int, n_direct_prefix: int) -> int:
    # The authors truncate the response-only text to max_length − len(prompt) + 1 [Superfiltering code], so both
    # passes score about the same response tokens; with a direct prefix (Cherry) the prefix's length replaces 1.
    return max_length - min(n_prompt, max_length) + max(n_direct_prefix, 1)


def plan_turn(text: TurnText, encoded: dict[str, list[int]], cfg: ScoreConfig, tail: Sequence[int]) -> TurnPlan:
    """Both passes of one turn under cfg.boundary, and why it cannot be scored (if so)."""
    max_length, lead = cfg.max_length, text.lead
    if cfg.boundary == "reference":
        # The authors' rule: encode the whole text, mask len(encode(text[:text.rfind(output)])) leading labels.
        # rfind of a suffix always lands at len(prompt), so that prefix is the prompt.
        n_prompt = len(lead) + len(encoded[text.prompt]) + len(tail)
        conditioned = Pass(_truncate(encoded[text.prompt + text.output], lead, tail, max_length), max(n_prompt, 1))
        n_prompt_truncated = len(_truncate(encoded[text.prompt], lead, tail, max_length))
        n_direct_prefix = len(lead) + len(encoded[text.prefix]) + len(tail) if text.prefix else 0
        direct_content = encoded[text.prefix + text.output]
        direct_ids = _truncate(direct_content, lead, tail, _direct_length(max_length, n_prompt_truncated,
                                                                          n_direct_prefix))
        n_direct_full = len(lead) + len(direct_content) + len(tail)
    else:
        prompt_ids, output_ids, prefix_ids = encoded[text.prompt], encoded[text.output], encoded[text.prefix]
        n_prompt = len(lead) + len(prompt_ids)
        conditioned = Pass((*lead, *prompt_ids, *output_ids)[:max_length], max(n_prompt, 1))
        n_direct_prefix = len(lead) + len(prefix_ids)
        direct_full = (*lead, *prefix_ids, *output_ids)
        direct_ids = direct_full[:_direct_length(max_length, n_prompt, n_direct_prefix)]
        n_direct_full = len(direct_full)
    direct = Pass(direct_ids, max(n_direct_prefix, 1))
    return TurnPlan(n_prompt, conditioned, direct, _skip_reason(text, n_prompt, conditioned, direct, n_direct_full,
                                                                max_length))


def _skip_reason(text: TurnText, n_prompt: int, conditioned: Pass, direct: Pass, n_direct_full: int,
                 max_length: int) -> str:
    if not text.output:
        return "empty_response"
    if n_prompt > max_length:
        return "prompt_too_long"
    if conditioned.n_targets == 0:
        return "response_truncated"
    if direct.n_targets == 0:
        return "response_truncated" if n_direct_full > len(direct.ids) else "response_too_short"
    return ""


def texts_to_encode(text: TurnText, boundary: str) -> list[str]:
    if boundary == "reference":
        return [text.prompt, text.prompt + text.output, text.prefix, text.prefix + text.output]
    return [text.prompt, text.output, text.prefix]


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> dict[str, list[int]]:
    unique = list(dict.fromkeys(texts))
    # verbose=False: long records are truncated by the plan, the "longer than the model" warning is noise here.
    ids = tokenizer(unique, add_special_tokens=False, verbose=False)["input_ids"] if unique else []
    return dict(zip(unique, ids, strict=True))


def plan_records(examples: Sequence[Example], cfg: ScoreConfig, tokenizer: Any,
                 tokenization: Tokenization) -> list[list[TurnPlan]]:
    """Per record, the plan of each turn it scores."""
    turns = [record_turns(ex, cfg, tokenizer, tokenization) for ex in examples]
    encoded = encode_texts(tokenizer, [s for record in turns for t in record for s in texts_to_encode(t, cfg.boundary)])
    return [[plan_turn(t, encoded, cfg, tokenization.tail) for t in record] for record in turns]


# ---------------------------------------------------------------------------------------------------------------------
# The forward passes: length-sorted token-budget batches, the LM head only at scored positions.


@dataclass
class Engine:
    model: Any
    tokenizer: Any
    device: torch.device
    tokenization: Tokenization


def make_engine(model: Any, tokenizer: Any) -> Engine:
    device = next(model.parameters()).device
    _check_head(model, device)
    return Engine(model, tokenizer, device, probe_tokenization(tokenizer))


def head_logits(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2-style soft-capping, applied by the model's own forward after lm_head
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.inference_mode()
def _check_head(model: Any, device: torch.device) -> None:
    """Fail loudly on models whose logits are not lm_head(last hidden state) (+ soft-capping)."""
    ids = (torch.arange(1, 9, device=device) % model.config.vocab_size).unsqueeze(0)
    expected = model(input_ids=ids, use_cache=False).logits.float()
    ours = head_logits(model, model.base_model(input_ids=ids, use_cache=False).last_hidden_state).float()
    tolerance = 1e-3 * (1.0 + expected.nan_to_num(0.0, 0.0, 0.0).abs().max().item())
    # NaN where the model itself gives NaN is not a head mismatch: such records get skip_reason nonfinite_loss.
    if not torch.allclose(expected, ours, rtol=1e-3, atol=tolerance, equal_nan=True):
        raise UserError(f"{type(model).__name__}: its logits are not lm_head(hidden states); scoring cannot compute "
                        "the head at response positions only for this architecture")


def token_budget_batches(lengths: Sequence[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that (longest length × count) ≤ batch_tokens, longest first; a longer one goes alone."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = lengths[i]
        current.append(i)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def batch_nll(engine: Engine, passes: Sequence[Pass]) -> np.ndarray:
    """Sum of token NLLs of each pass's targets, from one right-padded forward pass."""
    width = max(len(p.ids) for p in passes)
    ids = torch.zeros((len(passes), width), dtype=torch.long)
    rows, cols = [], []
    for r, p in enumerate(passes):
        ids[r, :len(p.ids)] = torch.tensor(p.ids, dtype=torch.long)
        rows += [r] * p.n_targets
        cols += range(p.start, len(p.ids))
    ids = ids.to(engine.device)
    # Right padding only ever follows a sequence's real tokens, so the causal mask alone keeps every scored
    # position from seeing a pad: no padding mask, hence the fast is_causal attention path of a batch of one.
    hidden = engine.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
    row_index = torch.tensor(rows, dtype=torch.long, device=engine.device)
    col_index = torch.tensor(cols, dtype=torch.long, device=engine.device)
    targets = ids[row_index, col_index]
    hidden_at = hidden[row_index, col_index - 1]  # position t-1 predicts token t
    nll = torch.empty(len(rows), dtype=torch.float32, device=engine.device)
    for s in range(0, len(rows), HEAD_CHUNK):
        logits = head_logits(engine.model, hidden_at[s:s + HEAD_CHUNK]).float()
        nll[s:s + HEAD_CHUNK] = F.cross_entropy(logits, targets[s:s + HEAD_CHUNK], reduction="none")
    sums = torch.zeros(len(passes), dtype=torch.float64, device=engine.device)
    sums.index_add_(0, row_index, nll.double())
    return sums.cpu().numpy()


def pass_losses(engine: Engine, passes: Sequence[Pass], batch_tokens: int,
                on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Mean NLL over each pass's targets (every pass must have at least one target)."""
    losses = np.empty(len(passes), dtype=np.float64)
    for batch in token_budget_batches([len(p.ids) for p in passes], batch_tokens):
        sums = batch_nll(engine, [passes[i] for i in batch])
        losses[batch] = sums / np.array([passes[i].n_targets for i in batch], dtype=np.float64)
        if on_batch is not None:
            on_batch(len(batch))
    return losses


# ---------------------------------------------------------------------------------------------------------------------
# Per-record values.


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
        return out[list(COLUMNS)]
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
    return out[[*COLUMNS, *TURN_COLUMNS]]


def score_records(engine: Engine, examples: Sequence[Example], cfg: ScoreConfig,
                  on_progress: Callable[[float], None] | None = None) -> pd.DataFrame:
    """The score table of `examples` (in their order), from one set of token-budget batches."""
    plans = plan_records(examples, cfg, engine.tokenizer, engine.tokenization)
    keys, passes = [], []
    for r, record in enumerate(plans):
        for t, plan in enumerate(record):
            if not plan.skip_reason:
                keys.append((r, t))
                passes += [plan.direct, plan.conditioned]
    per_pass = len(examples) / len(passes) if passes else 0.0

    def advance(n_passes: int) -> None:
        if on_progress is not None:
            on_progress(n_passes * per_pass)

    batch_tokens = cfg.batch_tokens or AUTO_BATCH_TOKENS.get(engine.device.type, AUTO_BATCH_TOKENS["cuda"])
    losses = pass_losses(engine, passes, batch_tokens, advance) if passes else np.empty(0)
    if not passes and on_progress is not None:
        on_progress(float(len(examples)))
    by_turn = {key: (losses[2 * k], losses[2 * k + 1]) for k, key in enumerate(keys)}
    turns = turn_table(plans, by_turn, cfg.ifd_form)
    return record_table(turns, [ex.id for ex in examples], each=cfg.turns == "each")


# ---------------------------------------------------------------------------------------------------------------------
# Library entry point.


def example_cost(example: Example) -> int:
    """A tokenizer-free length proxy to sort records by (the response is read by both passes)."""
    history = sum(len(u) + len(a) for u, a in example.history)
    return len(example.instruction) + len(example.input) + 2 * len(example.output) + history


def plan_shards(costs: Sequence[float] | np.ndarray, shard_size: int) -> list[list[int]]:
    """Record positions sorted by cost (longest first), cut into shards of similar lengths."""
    order = np.argsort(-np.asarray(costs, dtype=np.float64), kind="stable")
    return [order[i:i + shard_size].tolist() for i in range(0, len(order), shard_size)]


def progress_bar(total: int, enabled: bool, position: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="rec", desc="score", disable=not enabled, dynamic_ncols=True, position=position,
                smoothing=0.05, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")


def score_shard(engine: Engine, examples: Sequence[Example], indices: Sequence[int], cfg: ScoreConfig,
                bar: Any = None) -> pd.DataFrame:
    """Scores of examples[indices], with their positions in `_index`."""
    records = [examples[i] for i in indices]
    start = bar.n if bar is not None else 0.0
    table = score_records(engine, records, cfg, bar.update if bar is not None else None)
    if bar is not None:  # per-batch updates are fractional: land exactly on the shard's end
        bar.update(start + len(records) - bar.n)
    table.insert(0, "_index", np.asarray(indices, dtype=np.int64))
    return table


def score_examples(examples: Sequence[Example], model: Any, tokenizer: Any, cfg: ScoreConfig | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """Score records with a loaded (model, tokenizer): one row per record, in input order, columns COLUMNS
    (+ TURN_COLUMNS for turns=each). Skipped records have NaN values and a skip_reason."""
    cfg = cfg or ScoreConfig()
    cfg.validate()
    engine = make_engine(model, tokenizer)
    shards = plan_shards([example_cost(ex) for ex in examples], cfg.shard_size)
    with progress_bar(len(examples), progress) as bar:
        frames = [score_shard(engine, examples, shard, cfg, bar) for shard in shards]
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames).sort_values("_index").drop(columns="_index").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------------
# The stage: resumable shards in the partial folder, one process or several.


class ExampleFile(Sequence[Example]):
    """The records of an examples.jsonl, read on demand by byte offset: memory holds offsets, not records."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        offsets, costs = [], []
        position = 0
        with open(self.path, "rb") as f:
            for line in f:
                if line.strip():
                    offsets.append(position)
                    costs.append(len(line))
                position += len(line)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.costs = np.asarray(costs, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        with open(self.path, "rb") as f:
            f.seek(int(self.offsets[i]))
            return Example.from_dict(json.loads(f.readline()))


def shard_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"{shard:05d}.parquet"


def marker_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"{shard:05d}.done"


def shard_done(shard_dir: Path, shard: int) -> bool:
    return marker_path(shard_dir, shard).exists() and shard_path(shard_dir, shard).exists()


def write_shard(shard_dir: Path, shard: int, table: pd.DataFrame, seconds: float) -> None:
    """Parquet first (temp name, fsync, rename), then the marker: a marker always means a complete file."""
    final = shard_path(shard_dir, shard)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    table.to_parquet(tmp, index=False)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    write_json_atomic(marker_path(shard_dir, shard), {"records": len(table), "seconds": seconds})


def load_or_plan_layout(shard_dir: Path, examples: ExampleFile, shard_size: int) -> list[list[int]]:
    """The shard layout of this folder: planned once, then reused by every resumed run whatever its settings."""
    path = shard_dir / LAYOUT_FILE
    digest = file_digest(examples.path)
    if path.exists():
        layout = read_json(path)
        if layout["examples_sha256"] != digest or layout["n_records"] != len(examples):
            raise UserError(f"{shard_dir} holds shards of other data ({layout['n_records']} records); delete it")
        return layout["shards"]
    shards = plan_shards(examples.costs, shard_size)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"examples_sha256": digest, "n_records": len(examples), "shard_size": shard_size,
                             "shards": shards})
    return shards


def score_shards_to_dir(engine: Engine, examples: Sequence[Example], layout: list[list[int]], todo: Sequence[int],
                        cfg: ScoreConfig, shard_dir: Path, progress: bool, position: int = 0) -> None:
    with progress_bar(sum(len(layout[s]) for s in todo), progress, position) as bar:
        for shard in todo:
            started = time.perf_counter()
            table = score_shard(engine, examples, layout[shard], cfg, bar)
            write_shard(shard_dir, shard, table, time.perf_counter() - started)


def merge_shards(shard_dir: Path, layout: list[list[int]], n_records: int):
    """All shards as one Arrow table in input order; fails on any duplicate, missing or misplaced record.

    Arrow, not pandas: concatenation shares the shards' buffers, so the merge costs about one copy of the table.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for shard, indices in enumerate(layout):
        table = pq.read_table(shard_path(shard_dir, shard))
        if not np.array_equal(table.column("_index").to_numpy(), indices):
            raise RuntimeError(f"{shard_path(shard_dir, shard)}: holds other records than the layout assigns it")
        tables.append(table)
    merged = pa.concat_tables(tables)
    index = merged.column("_index").to_numpy()
    counts = np.bincount(index, minlength=n_records)
    if len(counts) != n_records or (counts != 1).any():
        raise RuntimeError(f"{shard_dir}: shards do not cover each of the {n_records} records exactly once")
    return merged.take(np.argsort(index, kind="stable")).drop_columns(["_index"])


def balance_shards(shards: Sequence[int], costs: Sequence[float], n_workers: int) -> list[list[int]]:
    """Longest-processing-time assignment: each shard to the worker with the least work so far."""
    load = [0.0] * n_workers
    assignment: list[list[int]] = [[] for _ in range(n_workers)]
    for shard, cost in sorted(zip(shards, costs, strict=True), key=lambda sc: (-sc[1], sc[0])):
        worker = min(range(n_workers), key=lambda w: (load[w], w))
        assignment[worker].append(shard)
        load[worker] += cost
    return [sorted(a) for a in assignment]


def launch_workers(examples_path: Path, model: ModelConfig, cfg: ScoreConfig, runtime: RuntimeConfig,
                   shard_dir: Path, assignment: list[list[int]]) -> None:
    """Score the assigned shards with torchrun, one process per entry (per GPU, or CPU processes)."""
    n = len(assignment)
    device = resolve_device(runtime.device)
    if device.type == "cuda" and n > torch.cuda.device_count():
        raise ConfigError(f"runtime.num_processes={n} but only {torch.cuda.device_count()} GPUs are visible")
    threads = max(1, (runtime.num_threads or torch.get_num_threads()) // n) if device.type == "cpu" else 1
    job = {"examples_path": str(examples_path), "model": asdict(model), "score": asdict(cfg),
           "device": device.type, "shard_dir": str(shard_dir), "assignment": assignment, "threads": threads}
    job_path = shard_dir / WORKER_JOB_FILE
    write_json_atomic(job_path, job)
    project_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join(p for p in (project_root, os.environ.get("PYTHONPATH", "")) if p)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
               "-m", "superfilter.scoring_worker", str(job_path)]
    log.info("score: launching %d %s workers: %s", n, device.type, " ".join(command[1:]))
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scoring workers failed (exit code {result.returncode}); finished shards are kept in "
                           f"{shard_dir} and a rerun resumes from them")


def score_metrics(scores: pd.DataFrame, cfg: ScoreConfig) -> dict[str, Any]:
    ifd = scores["ifd"].to_numpy(dtype=np.float64)
    finite = ifd[np.isfinite(ifd)]
    reasons = scores.loc[scores["skip_reason"] != "", "skip_reason"].value_counts()
    quantiles = {f"p{int(q * 100):02d}": float(np.quantile(finite, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
    return {
        "n_records": len(scores),
        "n_scored": int(len(finite)),
        "n_skipped": int(len(scores) - len(finite)),
        "skip_fraction": float(1 - len(finite) / len(scores)) if len(scores) else 0.0,
        "skip_reasons": {str(k): int(v) for k, v in reasons.items()},
        "ifd_quantiles": ({"min": float(finite.min()), **quantiles, "max": float(finite.max())}
                          if len(finite) else {}),
        "ifd_mean": float(finite.mean()) if len(finite) else None,
        "share_ifd_ge_1": float((finite >= 1).mean()) if len(finite) else None,
        "mean_response_tokens": float(scores["n_response_tokens"].mean()) if len(scores) else None,
        "ifd_form": cfg.ifd_form,
        "prompt": cfg.prompt,
        "boundary": cfg.boundary,
        "turns": cfg.turns,
    }


def plot_ifd_histogram(scores: pd.DataFrame, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    ifd = scores["ifd"].to_numpy(dtype=np.float64)
    ifd = ifd[np.isfinite(ifd)]
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(ifd, bins=60, color="tab:blue")
    ax.axvline(1.0, color="tab:red", linestyle="--", label="IFD = 1 (prompt does not help)")
    share = f"{(ifd >= 1).mean():.1%}" if len(ifd) else "n/a"
    ax.set(xlabel="IFD", ylabel="records", title=f"{title}: {len(ifd)} scored, {share} with IFD ≥ 1")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_parquet_atomic(table, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _log_skips(scores: pd.DataFrame) -> None:
    skipped = scores[scores["skip_reason"] != ""]
    for reason, group in skipped.groupby("skip_reason"):
        log.warning("score: %d records skipped, %s (%s), e.g. ids %s", len(group), reason,
                    SKIP_REASONS.get(str(reason), ""), ", ".join(group["id"].head(3)))


def score_stage(
    examples_path: Path, model: ModelConfig, cfg: ScoreConfig, runtime: RuntimeConfig,
    out_dir: Path, tracker: StageRun,
) -> dict[str, Any]:
    """Write out_dir/scores.parquet (+ plots) for the records in examples_path; return metrics."""
    cfg.validate()
    if cfg.prompt == "chat" and not model.chat_template:
        raise ConfigError(f"score.prompt=chat but model {model.name} has chat_template=false")
    examples = ExampleFile(examples_path)
    shard_dir = Path(out_dir) / SHARD_DIR
    layout = load_or_plan_layout(shard_dir, examples, cfg.shard_size)
    todo = [s for s in range(len(layout)) if not shard_done(shard_dir, s)]
    n_todo = sum(len(layout[s]) for s in todo)
    if len(todo) < len(layout):
        log.info("score: resuming, %d of %d shards already scored; %d records left",
                 len(layout) - len(todo), len(layout), n_todo)
    seconds = 0.0
    if todo and runtime.num_processes > 1:
        costs = [float(examples.costs[layout[s]].sum()) for s in todo]
        started = time.perf_counter()
        launch_workers(examples_path, model, cfg, runtime, shard_dir,
                       balance_shards(todo, costs, runtime.num_processes))
        seconds = time.perf_counter() - started
    elif todo:
        from superfilter.models import load_model

        device = resolve_device(runtime.device)
        engine = make_engine(*load_model(model, device))
        started = time.perf_counter()
        score_shards_to_dir(engine, examples, layout, todo, cfg, shard_dir, progress=True)
        seconds = time.perf_counter() - started
    merged = merge_shards(shard_dir, layout, len(examples))
    write_parquet_atomic(merged, Path(out_dir) / "scores.parquet")
    scores = merged.select(["id", "n_response_tokens", "ifd", "skip_reason"]).to_pandas()
    del merged
    metrics = score_metrics(scores, cfg)
    metrics.update({
        "model": model.name,
        "n_processes": runtime.num_processes,
        "records_scored_this_run": n_todo,
        "scoring_seconds": round(seconds, 3),
        "records_per_s": round(n_todo / seconds, 3) if seconds > 0 else None,
    })
    histogram = Path(out_dir) / HISTOGRAM_FILE
    plot_ifd_histogram(scores, histogram, f"{model.name} IFD ({cfg.ifd_form})")
    tracker.image("ifd_hist", histogram)
    _log_skips(scores)
    skipped = scores[scores["skip_reason"] != ""]
    if len(skipped):
        tracker.table("skipped", ["id", "skip_reason"], skipped[["id", "skip_reason"]].head(1000).values.tolist())
    log.info("score: %d records, %d scored, %.1f%% with IFD >= 1, %s records/s", metrics["n_records"],
             metrics["n_scored"], 100 * (metrics["share_ifd_ge_1"] or 0.0), metrics["records_per_s"])
    if metrics["skip_fraction"] > cfg.max_skip_fraction:
        raise UserError(
            f"{metrics['n_skipped']} of {metrics['n_records']} records ({metrics['skip_fraction']:.1%}) could not "
            f"be scored ({metrics['skip_reasons']}), more than score.max_skip_fraction={cfg.max_skip_fraction}; "
            f"see {Path(out_dir) / 'scores.parquet'}. Raise score.max_length or score.max_skip_fraction, "
            "or fix the data"
        )
    return metrics

