"""model/ of a LoRA run merged in fp32 without a second model in memory: the base's fp32 safetensors files are
copied by the operating system, then each LoRA-targeted weight is rewritten in place as W + ΔW, one at a time.

Loading an fp32 base next to the trained model and serialising the merge held the base's file pages, the merged
weights and safetensors' byte copy of them at once: the train stage of Gemma-3-270M peaked at 4.2 GB. Here the
merge holds one weight. The result is what `merge_and_unload` on the fp32 base gives (the same fp32 addition);
`tests/test_adapter.py` checks model/ against the adapter on its base.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from superfilter.models import resolve_model_dir
from superfilter.weight_files import read_header
from train.job import TrainJob

log = logging.getLogger(__name__)

WEIGHTS_INDEX = "model.safetensors.index.json"
PEFT_PREFIX = "base_model.model."


def lora_layers(model: PeftModel) -> dict[str, LoraLayer] | None:
    """Base weight name → its LoRA layer; None when the adapter holds more than plain LoRA on weights (biases, DoRA
    and other variants, modules trained whole), which only peft's own merge handles."""
    adapter = model.active_adapter
    if model.peft_config[adapter].modules_to_save:
        return None
    layers = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        if module.lora_bias.get(adapter) or adapter in getattr(module, "lora_variant", {}) or \
                not hasattr(module.get_base_layer(), "weight"):
            return None
        layers[f"{name.removeprefix(PEFT_PREFIX)}.weight"] = module
    return layers


def write_merged_fp32(model: PeftModel, job: TrainJob, model_dir: Path) -> bool:
    """The base's files into model_dir with ΔW added to each targeted weight; False, with nothing written, when the
    base is not a local folder of fp32 safetensors holding every targeted weight under the model's own names."""
    base_dir = resolve_model_dir(job.model)
    layers = lora_layers(model)
    files = sorted(base_dir.glob("*.safetensors")) if base_dir is not None else []
    if not files or layers is None:
        return False
    where = {name: (file, entry, start) for file in files for header, start in [read_header(file)]
             for name, entry in header.items()}
    for name, layer in layers.items():
        entry, shape = where.get(name, (None, {}, 0))[1], tuple(layer.get_base_layer().weight.shape)
        if entry.get("dtype") != "F32" or tuple(entry.get("shape", ())) != shape:
            log.info("train: %s is not an fp32 %s weight in %s: merging on a loaded base instead", name, shape,
                     base_dir)
            return False
    model_dir.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(file, model_dir / file.name)
    if (base_dir / WEIGHTS_INDEX).is_file():
        shutil.copyfile(base_dir / WEIGHTS_INDEX, model_dir / WEIGHTS_INDEX)
    for name, layer in layers.items():  # one ΔW in memory at a time (all of Gemma-3-270M's: 0.47 GB in fp32)
        file, entry, start = where[name]
        begin, end = entry["data_offsets"]
        with torch.no_grad():
            delta = layer.get_delta_weight(model.active_adapter).float()
        with open(model_dir / file.name, "r+b") as f:
            f.seek(start + begin)
            weight = torch.frombuffer(bytearray(f.read(end - begin)), dtype=torch.float32).reshape(delta.shape)
            weight += delta  # what merge_and_unload does to an fp32 base weight
            if not torch.isfinite(weight).all():
                raise ValueError(f"non-finite merged weight {name}: the adapter is broken")
            f.seek(start + begin)
            f.write(weight.numpy().tobytes())
    return True
