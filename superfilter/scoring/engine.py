"""The forward passes: length-sorted token-budget batches, the LM head only at scored positions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


class HeadBuffers:
    """The LM head's chunk outputs, kept from call to call and grown only when a chunk is larger.

    A fresh positions × vocabulary tensor per chunk (64–128 MB) is a fresh mapping that the kernel zero-fills a
    4 KiB page at a time: 37 million page faults and a third of the CPU time of the default run's evaluation.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, rows: int, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A [rows, like.size(0)] view of the buffer `name` (contents undefined) on like's device."""
        width = like.size(0)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size(0) < rows or buffer.size(1) != width or buffer.dtype != dtype \
                or buffer.device != like.device:
            self._buffers.pop(name, None)  # freed before its replacement is allocated
            buffer = self._buffers[name] = torch.empty((rows, width), dtype=dtype, device=like.device)
        return buffer[:rows]


@dataclass
class Engine:
    model: Any
    tokenizer: Any
    device: torch.device
    tokenization: Tokenization
    buffers: HeadBuffers = field(default_factory=HeadBuffers)


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


def linear_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for a 2-d x, written into `out`: the kernels F.linear runs, with an output buffer."""
    if bias is None:
        return torch.matmul(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def head_nll(engine: Engine, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(head_logits(hidden).float(), targets, reduction="none"), bit for bit, in engine.buffers:
    the logits in the head's dtype, then their fp32 log-softmax in place."""
    head = engine.model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or hidden.dtype != head.weight.dtype:
        return F.cross_entropy(head_logits(engine.model, hidden).float(), targets, reduction="none")
    logits = linear_into(engine.buffers.take("logits", hidden.size(0), head.weight, hidden.dtype), hidden,
                         head.weight, head.bias)
    cap = getattr(engine.model.config, "final_logit_softcapping", None)
    if cap:
        logits.div_(cap).tanh_().mul_(cap)
    log_probs = engine.buffers.take("log_probs", hidden.size(0), head.weight, torch.float32)
    log_probs.copy_(logits)
    torch.log_softmax(log_probs, dim=-1, out=log_probs)
    return -log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)


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
        nll[s:s + chunk] = head_nll(engine, hidden_at[s:s + chunk], targets[s:s + chunk])
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
