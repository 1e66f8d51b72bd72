"""The summed response-token loss of a micro-batch; with a frozen LM head, computed without the full logits."""

from __future__ import annotations

import weakref
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from superfilter.scoring.engine import HeadBuffers, head_chunk, linear_into
from superfilter.tokenized import IGNORE
from train.collate import MicroBatch


def token_loss_sum(model, batch: MicroBatch, autocast: AbstractContextManager | None = None) -> torch.Tensor:
    """Summed cross-entropy over the response tokens of the micro-batch (logits only where a target exists).

    `autocast` (mixed precision) covers the model's forward only; the loss is computed in fp32 outside it.

    With a frozen LM head (LoRA) the model returns hidden states and FrozenHeadLoss computes loss and gradient
    chunk by chunk, so the positions × vocabulary logits (1,700 × 262k floats = 1.8 GB for a packed Gemma
    micro-batch, held three times over for the backward pass) never exist at once.
    """
    kwargs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids, "logits_to_keep": batch.keep, "use_cache": False}
    targets = batch.targets[:, batch.keep].reshape(-1)
    inner = causal_lm(model)
    head = inner.get_output_embeddings()
    frozen = (type(head) is torch.nn.Linear and not any(p.requires_grad for p in head.parameters())
              and getattr(inner.config, "final_logit_softcapping", None) is None)
    if not frozen:
        with autocast or nullcontext():
            logits = model(**kwargs).logits
        logits = logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, ignore_index=IGNORE, reduction="sum")
    inner.set_output_embeddings(torch.nn.Identity())  # the forward then returns the head's input
    try:
        with autocast or nullcontext():
            hidden = model(**kwargs).logits
    finally:
        inner.set_output_embeddings(head)
    buffers = _BUFFERS.setdefault(head, HeadBuffers())
    return FrozenHeadLoss.apply(hidden.reshape(-1, hidden.size(-1)), head.weight, head.bias, targets, buffers)


_BUFFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # per LM head, for as long as the model lives


def release_head_buffers() -> None:
    """Hand back FrozenHeadLoss's buffers (0.2 GB for Gemma's 262k words) once training is over."""
    _BUFFERS.clear()


def causal_lm(model):
    """The transformers model inside DDP and PEFT wrappers (the one whose lm_head the forward calls); FSDP2 keeps
    the module itself."""
    inner = getattr(model, "module", model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


class FrozenHeadLoss(torch.autograd.Function):
    """sum CE(hidden @ W.T + b, targets) with W frozen: the gradient w.r.t. hidden, (softmax − onehot) @ W, is
    computed in the forward pass chunk by chunk and kept (positions × width), instead of the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, buffers: HeadBuffers | None = None):
        buffers = buffers or HeadBuffers()
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        step = head_chunk(weight.size(0))
        for s in range(0, hidden.size(0), step):
            # In the head's dtype: the LoRA output can be fp32 beside a bf16 base, and autocast (around the
            # model's forward only) is not active here. One chunk × vocabulary fp32 buffer, turned into
            # softmax − onehot in place: a second or third buffer of that size was a third of the train stage's peak.
            # Both buffers are kept across chunks and micro-batches (HeadBuffers: fresh ones cost page faults).
            chunk = targets[s:s + step]
            rows = torch.nonzero(chunk != IGNORE).squeeze(1)
            logits = linear_into(buffers.take("logits", chunk.size(0), weight, weight.dtype),
                                 hidden[s:s + step].to(weight.dtype), weight, bias)
            probs = buffers.take("probs", chunk.size(0), weight, torch.float32)
            probs.copy_(logits)
            lse = torch.logsumexp(probs, dim=-1)
            loss += (lse[rows] - probs[rows, chunk[rows]]).sum()
            probs.sub_(lse.unsqueeze(1)).exp_()
            probs[rows, chunk[rows]] -= 1.0
            probs[chunk == IGNORE] = 0.0
            logits.copy_(probs)
            grad[s:s + step] = logits @ weight
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.hidden_dtype), None, None, None, None
