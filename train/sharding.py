"""How the model is spread over the training processes: one process, DDP replicas, or FSDP2 shards applied here.

`train.accelerate_config` names a file in conf/accelerate/ (or a path): its `distributed_type` picks the strategy
(MULTI_GPU: DDP; FSDP: FSDP2) and, on GPUs, `accelerate launch` starts the ranks with it. The ranks never hand the
model to accelerate: with `cpu=True` it silently turns FSDP (and DeepSpeed) into DDP, so its sharded path cannot
run on a CPU. Applying `torch.distributed.fsdp.fully_shard` here (each decoder layer, then the root, as torchtune
and torchtitan do) makes the sharded path the test suite runs on CPU (gloo) the one GPUs run (NCCL).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import init_empty_weights
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from superfilter.errors import ConfigError
from superfilter.launch import accelerate_config_file
from superfilter.models import ModelConfig, load_model, load_tokenizer, resolve_attn_implementation, resolve_model_dir
from superfilter.runtime import RuntimeConfig
from train.config import TrainConfig
from train.loss import causal_lm
from train.world import World

log = logging.getLogger(__name__)

STRATEGIES = {"MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "FSDP": "fsdp"}
# What the project's FSDP2 does; a config asking for something else is refused rather than silently ignored.
FSDP_FIXED = {
    "fsdp_version": (2, "only FSDP2 (torch.distributed.fsdp.fully_shard) is supported"),
    "fsdp_auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "each decoder layer is one shard unit"),
    "fsdp_state_dict_type": ("SHARDED_STATE_DICT", "checkpoints are sharded (torch.distributed.checkpoint)"),
    "fsdp_cpu_ram_efficient_loading": (True, "rank 0 loads the weights and broadcasts them"),
    "fsdp_offload_params": (False, "CPU offload is not supported"),
    "fsdp_activation_checkpointing": (False, "use train.gradient_checkpointing=true"),
}
FSDP_FREE = {"fsdp_reshard_after_forward": bool}
# Settings the train config owns: a value in the accelerate file would contradict it.
TRAIN_OWNED = {
    "mixed_precision": "train.mixed_precision",
    "gradient_accumulation_steps": "train.batch_size / train.micro_batch_size",
    "deepspeed_config": "train.accelerate_config=fsdp (DeepSpeed is not supported)",
}


@dataclass(frozen=True)
class Strategy:
    """`single` (one process), `ddp` (a full replica per rank) or `fsdp` (FSDP2 full shard)."""

    name: str
    reshard_after_forward: bool = True  # FSDP: free each layer's gathered weights after its forward

    @property
    def sharded(self) -> bool:
        return self.name == "fsdp"

    def describe(self, world_size: int) -> str:
        if self.name == "single":
            return "one process"
        if self.name == "ddp":
            return f"DDP over {world_size} processes"
        return f"FSDP2 (full shard per decoder layer) over {world_size} processes"


def read_strategy(name: str) -> Strategy:
    """The strategy `train.accelerate_config=name` asks for, checked against what the project implements."""
    path = accelerate_config_file(name, "train.accelerate_config")
    settings = yaml.safe_load(path.read_text()) or {}
    for key, owner in TRAIN_OWNED.items():
        if key in settings:
            raise ConfigError(f"{path}: {key} is set by {owner}; remove it from the accelerate config")
    kind = settings.get("distributed_type", "")
    if kind not in STRATEGIES:
        raise ConfigError(f"{path}: distributed_type={kind!r} is not supported; use MULTI_GPU (DDP) or FSDP (FSDP2)"
                          + (" (DeepSpeed: see docs/training.md)" if kind == "DEEPSPEED" else ""))
    if STRATEGIES[kind] == "fsdp":
        return Strategy("fsdp", **fsdp_settings(path, settings.get("fsdp_config") or {}))
    return Strategy("ddp")


def fsdp_settings(path: Path, fsdp: dict[str, Any]) -> dict[str, Any]:
    for key, value in fsdp.items():
        if key in FSDP_FIXED:
            wanted, why = FSDP_FIXED[key]
            if value != wanted:
                raise ConfigError(f"{path}: fsdp_config.{key}={value!r} is not supported ({why}); set {wanted!r}")
        elif key in FSDP_FREE:
            if not isinstance(value, FSDP_FREE[key]):
                raise ConfigError(f"{path}: fsdp_config.{key} must be a {FSDP_FREE[key].__name__}, got {value!r}")
        else:
            raise ConfigError(f"{path}: fsdp_config.{key} is not read by the project's FSDP2; remove it (read: "
                              f"{sorted([*FSDP_FIXED, *FSDP_FREE])})")
    return {"reshard_after_forward": fsdp.get("fsdp_reshard_after_forward", True)}


def check_world(cfg: TrainConfig, runtime: RuntimeConfig) -> Strategy:
    """The strategy this run trains with, once the world is found consistent: a sharding config has processes to
    shard over, and the global batch splits evenly into micro-batches on every process. Loads nothing."""
    world = runtime.world_size
    strategy = read_strategy(cfg.accelerate_config)
    if world == 1 and strategy.sharded:
        raise ConfigError(f"train.accelerate_config={cfg.accelerate_config} shards the model over processes, but "
                          f"there is one (runtime.num_processes={runtime.num_processes}, runtime.num_nodes="
                          f"{runtime.num_nodes}); use runtime.num_processes=N with N GPUs, or "
                          "train.accelerate_config=ddp for one process")
    per_step = cfg.micro_batch_size * world
    if cfg.batch_size % per_step:
        raise ConfigError(f"train.batch_size={cfg.batch_size} is not a multiple of train.micro_batch_size × "
                          f"processes = {cfg.micro_batch_size} × {world} = {per_step}; change train.batch_size or "
                          "train.micro_batch_size")
    return Strategy("single") if world == 1 else strategy


def empty_model(spec: ModelConfig, dtype: torch.dtype, device: torch.device, pad_token_id: int | None):
    """The spec's architecture with its parameters on the meta device (no memory); buffers are real."""
    # deferred: transformers takes seconds to import; loaded only when a model is
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = resolve_model_dir(spec)
    kwargs: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if folder is None:
        kwargs["revision"] = spec.revision
    config = AutoConfig.from_pretrained(str(folder) if folder else spec.path, **kwargs)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(
            config, dtype=dtype, attn_implementation=resolve_attn_implementation(spec.attn_implementation, device),
            trust_remote_code=spec.trust_remote_code)
    if model.config.pad_token_id is None:  # as load_model does
        model.config.pad_token_id = pad_token_id
    return model


def build_model(spec: ModelConfig, world: World, strategy: Strategy, dtype: torch.dtype):
    """(model, tokenizer) as this rank needs them. FSDP loads the weights once, on rank 0 in host memory; the
    other ranks build the architecture on the meta device and receive their shards in `shard`."""
    if not strategy.sharded:
        return load_model(spec, world.device, dtype=dtype, for_training=True)
    if world.is_main:
        return load_model(spec, torch.device("cpu"), dtype=dtype, for_training=True)
    tokenizer = load_tokenizer(spec)
    model = empty_model(spec, dtype, world.device, tokenizer.pad_token_id)
    model.train()
    return model, tokenizer


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks (transformers' `_no_split_modules`): FSDP's unit of gathering and freeing weights."""
    names = set(getattr(causal_lm(model), "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"cannot find the decoder layers of {type(causal_lm(model)).__name__} to shard "
                          f"(_no_split_modules={sorted(names)}); use train.accelerate_config=ddp")
    return layers


def shard(model, world: World, strategy: Strategy, param_dtype: torch.dtype | None):
    """The model spread over the world: as is (one process), DDP, or FSDP2 full shard per decoder layer then the
    root, with rank 0's weights broadcast into every rank's shards. Build the optimizer after this."""
    if strategy.name == "single":
        return model
    if strategy.name == "ddp":
        return DistributedDataParallel(model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    full = model.state_dict() if world.is_main else {}
    fully_shard_layers(model, world, strategy, param_dtype)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return model


def fully_shard_layers(model, world: World, strategy: Strategy, param_dtype: torch.dtype | None) -> None:
    """FSDP2 on each decoder layer, then the root; parameters become shards (DTensors) on the world's devices."""
    mesh = init_device_mesh(world.device.type, (world.size,))
    # Gathered weights and the forward in the autocast dtype, gradients reduced in fp32 (torchtitan's default).
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=policy, reshard_after_forward=strategy.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def accumulating(model, strategy: Strategy, last: bool) -> AbstractContextManager:
    """DDP skips the gradient all-reduce on all but a step's last micro-batch. FSDP reduce-scatters every
    micro-batch: skipping would keep each rank's unsharded gradients, the memory FSDP is there to save."""
    if strategy.name == "ddp" and not last:
        return model.no_sync()
    return nullcontext()


def unwrap(model):
    """The module a replicated strategy trains (DDP's inner module); FSDP2 has no whole model to unwrap."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gathered_state_dict(model, world: World, trainable_only: bool) -> dict[str, torch.Tensor] | None:
    """FSDP: the full weights gathered layer by layer into rank 0's host memory (every rank must call this)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    state = get_model_state_dict(model, options=options)
    return state if world.is_main else None
