"""The subset's length policy over tokenised records, and micro-batches (padded, or packed without cross-attention)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from superfilter.data import Example
from superfilter.errors import ConfigError
from superfilter.tokenized import IGNORE, Encoded, encode


@dataclass
class EncodeReport:
    """What length handling did to the subset; every record is accounted for exactly once."""

    n_records: int = 0
    n_kept: int = 0
    n_truncated: int = 0  # kept, with its tail cut at max_length
    n_dropped_too_long: int = 0  # truncation=drop and longer than max_length
    n_dropped_prompt_too_long: int = 0  # no response token fits within max_length
    n_dropped_empty_output: int = 0  # an empty reply teaches nothing but the end-of-sequence token
    n_dropped_multi_turn: int = 0  # template=alpaca has no multi-turn form (use vicuna_v1.1 or chat for them)
    n_tokens: int = 0
    n_trainable_tokens: int = 0
    max_tokens_seen: int = 0  # longest record before truncation
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id, reason)


def encode_all(
    examples: Sequence[Example], template: str, tokenizer: Any, max_length: int, truncation: str,
) -> tuple[list[Encoded], EncodeReport]:
    """Encode every record and apply the length policy; skipped records are counted, never silent."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("training needs a fast (Rust) tokenizer; this model only ships a slow one")
    report = EncodeReport(n_records=len(examples))
    kept: list[Encoded] = []
    for ex in examples:
        if not ex.output.strip():
            report.n_dropped_empty_output += 1
            report.skipped.append((ex.id, "empty_output"))
            continue
        if ex.history and template == "alpaca":
            report.n_dropped_multi_turn += 1
            report.skipped.append((ex.id, "multi_turn"))
            continue
        enc = encode(ex, template, tokenizer)
        report.max_tokens_seen = max(report.max_tokens_seen, enc.n_tokens)
        if enc.n_tokens > max_length:
            if truncation == "drop":
                report.n_dropped_too_long += 1
                report.skipped.append((ex.id, "too_long"))
                continue
            enc = Encoded(enc.id, enc.input_ids[:max_length], enc.labels[:max_length])
            if enc.n_trainable == 0:
                report.n_dropped_prompt_too_long += 1
                report.skipped.append((ex.id, "prompt_too_long"))
                continue
            report.n_truncated += 1
        kept.append(enc)
        report.n_tokens += enc.n_tokens
        report.n_trainable_tokens += enc.n_trainable
    report.n_kept = len(kept)
    return kept, report


@dataclass
class MicroBatch:
    """Model inputs for one forward pass plus what the loss needs.

    `targets[b, i]` is the token position i must predict (IGNORE where none); `keep` lists the positions
    with any target, so the LM head (a 262k-word matmul for Gemma) runs only where a loss is taken.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor
    targets: torch.Tensor
    keep: torch.Tensor
    ids: list[str]
    n_tokens: int  # real tokens (no padding)
    n_slots: int  # tokens computed, padding included
    n_trainable: int

    def to(self, device: torch.device) -> MicroBatch:
        move = {"input_ids": self.input_ids, "position_ids": self.position_ids, "targets": self.targets,
                "keep": self.keep}
        moved = {k: v.to(device) for k, v in move.items()}
        mask = self.attention_mask.to(device) if self.attention_mask is not None else None
        return MicroBatch(**moved, attention_mask=mask, ids=self.ids, n_tokens=self.n_tokens,
                          n_slots=self.n_slots, n_trainable=self.n_trainable)


def shifted_targets(enc: Encoded) -> list[int]:
    return [*enc.labels[1:], IGNORE]


def pad_batch(batch: Sequence[Encoded], pad_id: int, multiple: int = 1) -> MicroBatch:
    """Right-padded rows (width rounded up to `multiple`); the attention mask hides padding, its targets are IGNORE."""
    width = _round_up(max(e.n_tokens for e in batch), multiple)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    targets = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, enc in enumerate(batch):
        n = enc.n_tokens
        input_ids[row, :n] = torch.tensor(enc.input_ids)
        targets[row, :n] = torch.tensor(shifted_targets(enc))
        attention_mask[row, :n] = 1
    position_ids = torch.arange(width).unsqueeze(0).expand(len(batch), -1).contiguous()
    return _finish(input_ids, attention_mask, position_ids, targets, batch)


def pack_batch(batch: Sequence[Encoded], pad_id: int = 0, multiple: int = 1) -> MicroBatch:
    """All records of the micro-batch in one row with position ids restarting at 0 for each record.

    With no 2-D attention mask, transformers (≥ 4.56, masking_utils.find_packed_sequence_indices) reads the
    restarts as sequence boundaries and builds a block-diagonal causal mask for eager/SDPA, and varlen kernels
    for flash attention: no token attends across records. The last token of a record predicts nothing, so no
    loss crosses a boundary either. Padding up to `multiple` is one more such segment, with no targets.
    """
    n_tokens = sum(e.n_tokens for e in batch)
    extra = _round_up(n_tokens, multiple) - n_tokens
    input_ids = torch.tensor([t for e in batch for t in e.input_ids] + [pad_id] * extra, dtype=torch.long)
    targets = torch.tensor([t for e in batch for t in shifted_targets(e)] + [IGNORE] * extra, dtype=torch.long)
    position_ids = torch.cat([torch.arange(n) for n in [e.n_tokens for e in batch] + [extra] if n])
    return _finish(input_ids.unsqueeze(0), None, position_ids.unsqueeze(0), targets.unsqueeze(0), batch)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _finish(input_ids, attention_mask, position_ids, targets, batch: Sequence[Encoded]) -> MicroBatch:
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)
    return MicroBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, targets=targets,
        keep=keep, ids=[e.id for e in batch], n_tokens=sum(e.n_tokens for e in batch),
        n_slots=input_ids.numel(), n_trainable=sum(e.n_trainable for e in batch),
    )


def collate(batch: Sequence[Encoded], packing: bool, pad_id: int, multiple: int = 1) -> MicroBatch:
    """Padded or packed rows whose length is rounded up to `multiple` (see TrainConfig.pad_to_multiple_of)."""
    return pack_batch(batch, pad_id, multiple) if packing else pad_batch(batch, pad_id, multiple)
