"""The frozen-head loss (LoRA) gives the plain full-logits loss and the same LoRA gradients, chunk size aside."""

import copy

import pytest
import torch
import torch.nn.functional as F

import train.loss as loss_module
from superfilter.data import Example
from superfilter.models import ModelConfig, build_tiny_tokenizer, load_model
from superfilter.tokenized import IGNORE
from train.collate import encode_all, pack_batch, pad_batch
from train.config import LoraSettings, TrainConfig
from train.lora import keep_adapter_inputs_in_half, make_trainable
from train.loss import FrozenHeadLoss, causal_lm, token_loss_sum

RECORDS = [Example.create(f"Give {i} tips for staying healthy.", "" if i % 2 else "at home",
                          "Eat a balanced diet, exercise regularly and sleep well. " * (1 + i % 3)) for i in range(6)]


def plain_loss(model, batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=batch.keep, use_cache=False)
    logits = out.logits.float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.targets[:, batch.keep].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def lora_grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("packing", [True, False])
def test_frozen_head_loss_equals_full_logits(monkeypatch, arch: str, packing: bool) -> None:
    monkeypatch.setattr(loss_module, "head_chunk", lambda vocab: 7)  # several chunks, the last one partial
    tokenizer = build_tiny_tokenizer(adds_bos=arch == "llama")
    base, _ = load_model(ModelConfig(source="tiny", path=arch), "cpu", for_training=True)
    encoded, _ = encode_all(RECORDS, "alpaca", tokenizer, 512, "truncate")
    batch = pack_batch(encoded) if packing else pad_batch(encoded, tokenizer.pad_token_id)
    results = []
    for loss_fn in (token_loss_sum, plain_loss):
        torch.manual_seed(0)
        model = make_trainable(copy.deepcopy(base), TrainConfig(method="lora"))
        model.train()
        loss = loss_fn(model, batch)
        loss.backward()
        results.append((loss.detach(), lora_grads(model), model))
    (chunked, chunked_grads, model), (plain, plain_grads, _) = results
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-4)
    assert chunked_grads.keys() == plain_grads.keys() and chunked_grads
    for name in plain_grads:
        torch.testing.assert_close(chunked_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in chunked_grads.values())
    assert isinstance(causal_lm(model).get_output_embeddings(), torch.nn.Linear)  # the head is put back


def test_trainable_head_takes_the_plain_path() -> None:
    model, _ = load_model(ModelConfig(source="tiny", path="llama"), "cpu", for_training=True)
    tokenizer = build_tiny_tokenizer(adds_bos=True)
    batch = pack_batch(encode_all(RECORDS[:2], "alpaca", tokenizer, 512, "truncate")[0])
    loss = token_loss_sum(model, batch)  # full finetuning: the head has a gradient of its own
    loss.backward()
    assert model.get_output_embeddings().weight.grad is not None
    torch.testing.assert_close(loss.detach(), plain_loss(model, batch).detach())


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_frozen_head_loss_matches_autograd_and_mixes_dtypes(monkeypatch, weight_dtype: torch.dtype) -> None:
    monkeypatch.setattr(loss_module, "head_chunk", lambda vocab: 5)
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)  # fp32, as a LoRA output beside a bf16 base
    weight, bias = torch.randn(50, 8).to(weight_dtype), torch.randn(50).to(weight_dtype)
    targets = torch.randint(0, 50, (13,))
    targets[[2, 9]] = IGNORE
    loss = FrozenHeadLoss.apply(hidden, weight, bias, targets)
    (grad,) = torch.autograd.grad(loss * 2.0, hidden)
    reference_hidden = hidden.detach().clone().requires_grad_(True)
    logits = F.linear(reference_hidden.to(weight_dtype), weight, bias).float()
    expected = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected * 2.0, reference_hidden)
    tolerance = 1e-5 if weight_dtype == torch.float32 else 2e-2
    torch.testing.assert_close(loss, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)
    assert grad.dtype == hidden.dtype and grad[[2, 9]].abs().sum() == 0


def saved_bytes(model, batch) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors the backward pass keeps (weights included), and the loss."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = token_loss_sum(model, batch)
    return sum(storages.values()), loss


def test_adapter_inputs_stay_in_half_precision_under_autocast() -> None:
    tokenizer = build_tiny_tokenizer(adds_bos=True)
    base, _ = load_model(ModelConfig(source="tiny", path="llama"), "cpu", dtype=torch.bfloat16, for_training=True)
    batch = pack_batch(encode_all(RECORDS, "alpaca", tokenizer, 512, "truncate")[0])
    model = make_trainable(base, TrainConfig(method="lora", lora=LoraSettings(dropout=0.0)))
    with torch.no_grad():  # non-zero B matrices, so the adapters change the loss
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    model.train()
    cast_bytes, cast_loss = saved_bytes(model, batch)
    keep_adapter_inputs_in_half(model)
    half_bytes, half_loss = saved_bytes(model, batch)
    assert half_bytes < cast_bytes  # no fp32 copies of the adapters' inputs kept for backward
    torch.testing.assert_close(half_loss, cast_loss, rtol=1e-3, atol=1e-3)  # the matmuls ran in bf16 either way
    half_loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
