"""What a job needs before it runs: parameter counts from model shapes, memory per device and at load, and time.

Pure functions over a model's shape (its config.json) and the job's settings; nothing here loads a model. The
activation terms were measured: tests/test_plan.py counts the tensors autograd keeps for LLaMA-, Gemma-3- and
GPT-2-shaped layers and holds these formulas to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from superfilter.scoring.engine import HEAD_BUDGET

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Bytes a loaded tokenizer holds per vocabulary entry: Gemma-3's 262k-word tokenizer holds 0.23 GB (train/rank.py).
TOKENIZER_BYTES_PER_WORD = 880
# Of a device's memory, what a plan may fill: the allocator's fragmentation, the CUDA context and NCCL's buffers
# take the rest.
USABLE_FRACTION = 0.9


@dataclass(frozen=True)
class Family:
    """How one decoder layer of a model family keeps activations for the backward pass (counted on CPU, see
    tests/test_plan.py): its norms, whether q/k/v are one projection, and how many intermediate-width tensors its MLP
    keeps (gate, up, activation and product for gated MLPs; GPT-2's tanh GELU keeps five)."""

    norm: str  # rms (LLaMA: fp32 upcast + normalised copy), gemma (both in fp32), layer (LayerNorm: fp32 input)
    norms_per_layer: int
    qk_norm: bool
    fused_qkv: bool
    gated_mlp: bool
    mlp_saves: int


LLAMA = Family("rms", 2, qk_norm=False, fused_qkv=False, gated_mlp=True, mlp_saves=4)
FAMILIES = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "mixtral", "smollm3"), LLAMA),
    "qwen3": Family("rms", 2, qk_norm=True, fused_qkv=False, gated_mlp=True, mlp_saves=4),
    "gemma": Family("gemma", 2, qk_norm=False, fused_qkv=False, gated_mlp=True, mlp_saves=4),
    "gemma2": Family("gemma", 4, qk_norm=False, fused_qkv=False, gated_mlp=True, mlp_saves=4),
    **dict.fromkeys(("gemma3", "gemma3_text"), Family("gemma", 4, qk_norm=True, fused_qkv=False, gated_mlp=True,
                                                     mlp_saves=4)),
    "gpt2": Family("layer", 2, qk_norm=False, fused_qkv=True, gated_mlp=False, mlp_saves=5),
    "gpt_neo": Family("layer", 2, qk_norm=False, fused_qkv=False, gated_mlp=False, mlp_saves=5),
}
# config.json keys of the GPT-2 and GPT-Neo families, which predate the LLaMA-style names.
KEY_ALIASES = {"n_embd": "hidden_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
               "n_inner": "intermediate_size", "n_positions": "max_position_embeddings",
               "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}
LEARNED_POSITIONS = ("gpt2", "gpt_neo")  # a learned position table of max_position_embeddings rows
UNTIED_BY_DEFAULT = ("llama", "mistral", "qwen2", "qwen3", "mixtral")  # their config classes default to False

# Published config.json values of the models the presets name: the shapes a plan uses when the Hub is unreachable
# (or a gated repository refuses), and the ones the bundled GGUF packages hold.
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                                 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                                 "num_key_value_heads": 32, "max_position_embeddings": 4096,
                                 "tie_word_embeddings": False, "torch_dtype": "float16"},
    "meta-llama/Llama-2-13b-hf": {"model_type": "llama", "vocab_size": 32000, "hidden_size": 5120,
                                  "intermediate_size": 13824, "num_hidden_layers": 40, "num_attention_heads": 40,
                                  "num_key_value_heads": 40, "max_position_embeddings": 4096,
                                  "tie_word_embeddings": False, "torch_dtype": "float16"},
    "meta-llama/Meta-Llama-3-8B": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                                   "num_key_value_heads": 8, "max_position_embeddings": 8192,
                                   "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    "Qwen/Qwen2.5-7B": {"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
                        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                        "num_key_value_heads": 4, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                        "torch_dtype": "bfloat16"},
    "gpt2": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
             "n_positions": 1024, "torch_dtype": "float32"},
    "gpt2-medium": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 1024, "n_layer": 24, "n_head": 16,
                    "n_positions": 1024, "torch_dtype": "float32"},
    "gpt2-large": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 1280, "n_layer": 36, "n_head": 20,
                   "n_positions": 1024, "torch_dtype": "float32"},
    "gpt2-xl": {"model_type": "gpt2", "vocab_size": 50257, "n_embd": 1600, "n_layer": 48, "n_head": 25,
                "n_positions": 1024, "torch_dtype": "float32"},
    "EleutherAI/gpt-neo-125M": {"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 768, "num_layers": 12,
                                "num_heads": 12, "max_position_embeddings": 2048, "torch_dtype": "float32"},
    "EleutherAI/gpt-neo-1.3B": {"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 2048, "num_layers": 24,
                                "num_heads": 16, "max_position_embeddings": 2048, "torch_dtype": "float32"},
    "EleutherAI/gpt-neo-2.7B": {"model_type": "gpt_neo", "vocab_size": 50257, "hidden_size": 2560, "num_layers": 32,
                                "num_heads": 20, "max_position_embeddings": 2048, "torch_dtype": "float32"},
    "HuggingFaceTB/SmolLM2-135M-Instruct": {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
                                            "intermediate_size": 1536, "num_hidden_layers": 30,
                                            "num_attention_heads": 9, "num_key_value_heads": 3,
                                            "max_position_embeddings": 8192, "tie_word_embeddings": True,
                                            "torch_dtype": "bfloat16"},
    "google/gemma-3-270m": {"model_type": "gemma3_text", "vocab_size": 262144, "hidden_size": 640,
                            "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
                            "num_key_value_heads": 1, "head_dim": 256, "max_position_embeddings": 32768,
                            "tie_word_embeddings": True, "torch_dtype": "bfloat16"},
}
KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B-Instruct"] = KNOWN_CONFIGS["meta-llama/Meta-Llama-3-8B"]
KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M"] = KNOWN_CONFIGS["HuggingFaceTB/SmolLM2-135M-Instruct"]


@dataclass(frozen=True)
class Shape:
    """The sizes of a decoder-only transformer that decide its parameters and the memory its training needs."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    max_positions: int
    checkpoint_dtype: str  # what its weight files hold (their size is what loading reads)

    @property
    def family(self) -> Family:
        return FAMILIES.get(self.model_type, LLAMA)

    @property
    def q_width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def projections(self) -> list[tuple[int, int]]:
        """(inputs, outputs) of each linear layer of one decoder layer, the ones LoRA adapts."""
        h, inter = self.hidden_size, self.intermediate_size
        attention = [(h, self.q_width + 2 * self.kv_width)] if self.family.fused_qkv else [
            (h, self.q_width), (h, self.kv_width), (h, self.kv_width)]
        mlp = [(h, inter), (h, inter), (inter, h)] if self.family.gated_mlp else [(h, inter), (inter, h)]
        return attention + [(self.q_width, h)] + mlp

    @property
    def layer_params(self) -> int:
        """Weights of one decoder layer (biases and norm gains, under 0.1% of it, left out)."""
        return sum(i * o for i, o in self.projections())

    @property
    def n_params(self) -> int:
        embeddings = self.vocab_size * self.hidden_size
        positions = self.max_positions * self.hidden_size if self.model_type in LEARNED_POSITIONS else 0
        head = 0 if self.tied_embeddings else self.vocab_size * self.hidden_size
        return embeddings + positions + self.num_layers * self.layer_params + head

    def lora_params(self, r: int) -> int:
        """LoRA of rank r on every projection of every layer (train/lora.py's default targets)."""
        return self.num_layers * r * sum(i + o for i, o in self.projections())


def shape_from_config(config: Mapping[str, Any]) -> Shape:
    """A Shape from a config.json's fields; KeyError names a field it lacks."""
    c = {KEY_ALIASES.get(k, k): v for k, v in config.items() if v is not None}
    model_type = c["model_type"]
    h, heads = c["hidden_size"], c["num_attention_heads"]
    gated = FAMILIES.get(model_type, LLAMA).gated_mlp
    return Shape(
        model_type=model_type, vocab_size=c["vocab_size"], hidden_size=h,
        intermediate_size=c["intermediate_size"] if "intermediate_size" in c or gated else 4 * h,
        num_layers=c["num_hidden_layers"], num_heads=heads, num_kv_heads=c.get("num_key_value_heads", heads),
        head_dim=c.get("head_dim") or h // heads,
        tied_embeddings=c.get("tie_word_embeddings", model_type not in UNTIED_BY_DEFAULT),
        max_positions=c.get("max_position_embeddings", 2048),
        checkpoint_dtype=str(c.get("dtype") or c.get("torch_dtype") or "float32"),
    )


def layer_activation_bytes(shape: Shape, act: int, residual: int) -> int:
    """Bytes one token leaves in one decoder layer for the backward pass (what autograd saves).

    act: bytes of the matmuls' inputs and outputs (2 under bf16/fp16 autocast, 4 in fp32); residual: bytes of the
    residual stream, the weights' dtype (fp32 master weights keep it in fp32, and each projection then saves its
    own half-precision copy of its input).
    """
    f, h = shape.family, shape.hidden_size
    norm = {"rms": 4 + (4 if residual == 4 else 2), "gemma": 8, "layer": 4}[f.norm]
    per_projection_copies = act < residual or (f.norm == "layer" and act < 4)
    attention_inputs = (1 if f.fused_qkv else 3) if per_projection_copies else 1
    mlp_inputs = (2 if f.gated_mlp else 1) if per_projection_copies else 1
    qk_norm = 8 * (shape.q_width + shape.kv_width) if f.qk_norm else 0
    return (f.norms_per_layer * norm * h + qk_norm + act * h * (attention_inputs + mlp_inputs)
            + act * (2 * shape.q_width + 2 * shape.kv_width) + act * f.mlp_saves * shape.intermediate_size)


@dataclass(frozen=True)
class TrainSetup:
    """The settings that decide one training process's memory."""

    method: str  # full | lora
    lora_r: int
    micro_batch_size: int
    max_length: int
    gradient_checkpointing: bool
    weight_bytes: int  # 4: fp32 weights (full finetuning's master weights); 2: bf16/fp16
    act_bytes: int  # 2 under bf16/fp16 autocast, else the weights' bytes
    world: int  # processes training together
    sharded: bool  # FSDP full shard: weights, gradients and optimizer state divided by the world

    @property
    def tokens(self) -> int:
        """Tokens of the largest micro-batch: packing fills a row with up to micro_batch_size records of max_length."""
        return self.micro_batch_size * self.max_length


@dataclass(frozen=True)
class Memory:
    """Bytes one device holds at its peak, by what holds them."""

    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0  # saved for the backward pass (inference: one batch in flight), the loss's logits
    buffers: float = 0.0  # half-precision weight copies, gathered shards, gradient buckets, KV cache

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))


def trainable_params(shape: Shape, setup: TrainSetup) -> int:
    return shape.n_params if setup.method == "full" else shape.lora_params(setup.lora_r)


def train_memory(shape: Shape, setup: TrainSetup) -> Memory:
    """Peak bytes on one training device.

    AdamW keeps two fp32 moments per trainable weight; gradients take the trainable weights' dtype (LoRA adapters
    are fp32). Sharding divides weights, gradients and moments by the world and holds two layers gathered at a
    time (the one computing and the one prefetched); DDP keeps a second copy of the gradients in its buckets. Under
    autocast with fp32 weights, autocast's cache holds a half-precision copy of every matmul weight until the
    forward pass ends, gradient checkpointing or not (measured on CPU: 813 of 780 MB expected, freed on exit).
    Gradient checkpointing keeps each layer's input and recomputes one layer at a time in the backward pass.
    """
    n, h = setup.tokens, shape.hidden_size
    shards = setup.world if setup.sharded else 1
    trainable = trainable_params(shape, setup)
    grad_bytes = 4 if setup.method == "lora" else setup.weight_bytes
    weights = shape.n_params * setup.weight_bytes / shards
    gradients = trainable * grad_bytes / shards
    optimizer = trainable * 2 * grad_bytes / shards
    layer = layer_activation_bytes(shape, setup.act_bytes, setup.weight_bytes)
    if setup.gradient_checkpointing:
        activations = n * (shape.num_layers * setup.weight_bytes * h + layer)
    else:
        activations = n * shape.num_layers * layer
    activations += n * loss_bytes_per_token(shape, setup)
    casts = setup.act_bytes < setup.weight_bytes
    buffers = matmul_params(shape) * setup.act_bytes if casts else 0
    if setup.sharded and setup.world > 1:
        buffers = 2 * shape.layer_params * (setup.weight_bytes + setup.act_bytes)
    elif setup.world > 1:
        buffers += trainable * grad_bytes
    return Memory(weights, gradients, optimizer, activations, buffers)


def matmul_params(shape: Shape) -> int:
    """The weights autocast casts: every projection and the LM head (the embedding lookup is not cast)."""
    return shape.num_layers * shape.layer_params + shape.vocab_size * shape.hidden_size


def loss_bytes_per_token(shape: Shape, setup: TrainSetup) -> float:
    """The loss over the vocabulary: a trained head materialises fp32 logits, log-softmax and their gradients
    (12 bytes per word and position); a frozen one (LoRA) keeps a fp32 gradient per position and works through
    HEAD_BUDGET logits at a time (train/loss.py)."""
    if setup.method == "full":
        return 12 * shape.vocab_size
    chunk = min(setup.tokens, max(1, HEAD_BUDGET // shape.vocab_size)) * shape.vocab_size * 4
    return 4 * shape.hidden_size + chunk / setup.tokens


def inference_memory(shape: Shape, weight_bytes: int, batch_tokens: int, kv_tokens: int = 0) -> Memory:
    """Peak bytes of a forward pass over batch_tokens (scoring, evaluation): the weights, the widest layer's
    tensors in flight, LM-head chunks of HEAD_BUDGET fp32 logits and, when generating, the KV cache."""
    in_flight = batch_tokens * weight_bytes * (4 * shape.hidden_size + 3 * shape.intermediate_size)
    kv_cache = kv_tokens * 2 * shape.num_layers * shape.kv_width * weight_bytes
    return Memory(weights=shape.n_params * weight_bytes, activations=in_flight + 2 * HEAD_BUDGET * 4,
                  buffers=kv_cache)


def host_bytes_at_load(shape: Shape, weight_bytes: int) -> float:
    """One process's host RAM while from_pretrained loads: the memory-mapped weight files, the model built on the
    host in the weights' dtype (before it moves to a GPU), and the tokenizer."""
    files = shape.n_params * DTYPE_BYTES.get(shape.checkpoint_dtype, 4)
    return files + shape.n_params * weight_bytes + shape.vocab_size * TOKENIZER_BYTES_PER_WORD


@dataclass(frozen=True)
class Speed:
    """A measured training speed: tokens/s per device for one model and method. Its FLOP rate carries over to other
    models, methods and forward-only passes (tokens/s scale with the FLOPs per token)."""

    tokens_per_s: float
    n_params: int
    method: str  # full | lora
    source: str

    @property
    def flops_per_s(self) -> float:
        return self.tokens_per_s * flops_per_token(self.n_params, self.method, checkpointing=False)


def flops_per_token(n_params: int, method: str, checkpointing: bool) -> float:
    """Matmul FLOPs per token: 2N forward; a backward pass adds 4N for weight and input gradients (2N when the
    weights are frozen, LoRA); gradient checkpointing runs the forward twice."""
    if method == "forward":
        return 2 * n_params
    return (6 if method == "full" else 4) * n_params + (2 * n_params if checkpointing else 0)


LLAMA3_8B_PARAMS = 8_030_261_248
# The one table of speeds the plan's times and the presets' GPU hours come from. GPUs: torchtitan's published FSDP2
# runs (pytorch/torchtitan docs/performance.md), Llama-3-8B full training in bf16, sequences of 8,192 tokens,
# selective activation checkpointing, no torch.compile; expect a Hugging Face model and this project's loop to run
# slower until experiments/gpu_check measures them. CPU: this project's own measurement.
SPEEDS: dict[str, Speed] = {
    "a100-80gb": Speed(2904, LLAMA3_8B_PARAMS, "full", "torchtitan: Llama-3-8B, FSDP2 on 64 A100 80GB, batch 1"),
    "h100-80gb": Speed(5762, LLAMA3_8B_PARAMS, "full", "torchtitan: Llama-3.1-8B, FSDP2 on 8 H100, batch 2"),
    # Same bf16 tensor-core peak as the H100 (989 TFLOP/s dense) and training is compute-bound: the H100's figure.
    "h200": Speed(5762, LLAMA3_8B_PARAMS, "full", "as the H100 (same bf16 compute)"),
    "cpu": Speed(172, 268_098_176, "lora", "experiments/bench_train.md: Gemma-3-270M LoRA, bf16, 2 cores"),
}


def device_hours(tokens: float, n_params: int, method: str, checkpointing: bool, speed: Speed) -> float:
    """Device-hours to run `tokens` through a model of n_params (method: full | lora | forward)."""
    return tokens * flops_per_token(n_params, method, checkpointing) / speed.flops_per_s / 3600


@dataclass(frozen=True)
class DataSize:
    records: int
    tokens_per_record: float  # prompt template included
    source: str


# Records and mean tokens per record (a LLaMA-class tokenizer, ~35 template tokens included) of the Hub datasets
# the presets name. Alpaca and Alpaca-GPT4 measured on local samples (data/alpaca_5000.json, a 999-record
# Alpaca-GPT4 sample; SmolLM2's tokenizer, Alpaca template: 111 and 204); the others from their files' sizes at
# the 5.2 bytes per token measured on those samples' JSON. IFD-selected subsets run longer than the mean (1.7× the
# tokens of a random subset on alpaca_1k, experiments/bench_train.md).
KNOWN_DATA: dict[str, DataSize] = {
    "tatsu-lab/alpaca": DataSize(52_002, 111, "measured on the bundled 5,000-record sample"),
    "vicgalle/alpaca-gpt4": DataSize(52_002, 204, "measured on a 999-record sample"),
    "WizardLMTeam/WizardLM_evol_instruct_70k": DataSize(70_000, 410, "137 MB file"),
    "databricks/databricks-dolly-15k": DataSize(15_011, 200, "13.1 MB file"),
    "gbharti/finance-alpaca": DataSize(68_912, 155, "42.9 MB file"),
    "ise-uiuc/Magicoder-Evol-Instruct-110K": DataSize(111_183, 475, "255 MB file"),
    "medalpaca/medical_meadow_wikidoc": DataSize(10_000, 250, "about 11 MB of text"),
    "meta-math/MetaMathQA": DataSize(395_000, 228, "396 MB file"),
}
CHARS_PER_TOKEN = 4.7  # measured on data/alpaca_5000.json with SmolLM2's tokenizer
TEMPLATE_TOKENS = 35  # the Alpaca template's tokens around a record (measured the same way)
