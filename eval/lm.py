"""Forward passes that reuse a key/value cache and put only the positions that are read through the LM head."""

from __future__ import annotations

import inspect
from typing import Any

import torch


@torch.no_grad()
def forward_tail(model: Any, ids: list[list[int]], cache: Any = None, keep: int = 1) -> tuple[torch.Tensor, Any]:
    """(log-softmax over the vocabulary at the last `keep` positions [batch, keep, vocab], the extended cache).

    `ids` continue `cache` (None: start fresh); equal-length rows, or right-padded ones whose padding is never
    read (causal attention: a real token does not see the padding after it).
    """
    params = _forward_params(model)
    kwargs: dict[str, Any] = {"logits_to_keep": keep} if "logits_to_keep" in params else {}
    kwargs["cache" if "cache" in params else "past_key_values"] = cache  # renamed in transformers 5
    out = model(torch.tensor(ids, device=model.device), use_cache=True, **kwargs)
    extended = out.get("cache", None) or out.get("past_key_values", None)
    return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1), extended


def _forward_params(model: Any) -> set[str]:
    cached = getattr(model, "_superfilter_forward_params", None)
    if cached is None:
        cached = set(inspect.signature(model.forward).parameters)
        model._superfilter_forward_params = cached
    return cached
