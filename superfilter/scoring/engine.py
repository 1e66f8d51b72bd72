"""The forward passes: length-sorted token-budget batches, the LM head only at scored positions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from superfilter.errors import UserError
from superfilter.scoring.plans import Pass, Tokenization, probe_tokenization

HEAD_BUDGET = 2**25  # logits per LM-head call (128 MB in fp32): 682 positions for SmolLM2, 128 for Gemma's 262k words


def head_chunk(vocab_size: int) -> int:
    """Positions per LM-head call, so that its positions × vocabulary logits stay within HEAD_BUDGET."""
    return max(1, HEAD_BUDGET // vocab_size)


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
    chunk = head_chunk(engine.model.get_output_embeddings().weight.size(0))
    for s in range(0, len(rows), chunk):
        logits = head_logits(engine.model, hidden_at[s:s + chunk]).float()
        nll[s:s + chunk] = F.cross_entropy(logits, targets[s:s + chunk], reduction="none")
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
