"""Which weights train: LoRA adapters on every projection (peft), or all of them for full finetuning."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer

from train.config import TrainConfig

# LoRA on every attention and MLP projection (QLoRA's finding: all linear layers beat attention-only).
LORA_TARGETS = {
    **dict.fromkeys(
        ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo2",
         "smollm3"),
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "out_proj", "c_fc", "c_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}


def lora_targets(model, cfg: TrainConfig) -> list[str] | str:
    if cfg.lora.target_modules:
        return list(cfg.lora.target_modules)
    # peft's "all-linear": every linear layer but the output head, for architectures not in the table.
    return LORA_TARGETS.get(model.config.model_type, "all-linear")


def lora_config(model, cfg: TrainConfig) -> LoraConfig:
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lora_targets(model, cfg), task_type="CAUSAL_LM")


def make_trainable(model, cfg: TrainConfig):
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "full":
        return model
    return get_peft_model(model, lora_config(model, cfg))


def keep_adapter_inputs_in_half(model) -> None:
    """Under autocast the adapters' matmuls run in half precision anyway; PEFT's cast of every adapter input to the
    adapters' fp32 only adds fp32 copies to what the backward pass keeps (95 of 746 MB for Gemma-3-270M at 448
    tokens)."""
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False
