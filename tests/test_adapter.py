"""adapter/ on its base matches model/ as docs/artifacts.md states: via load_adapter for every base, and via
AutoPeftModelForCausalLM for a Hub base (a Hub-shaped cache, offline)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from superfilter.contracts import MODEL_INFO_FILE
from superfilter.data import Example, write_examples
from superfilter.errors import UserError
from superfilter.models import ModelConfig, build_tiny_model, load_adapter, load_model
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train.config import TrainConfig
from train.stage import train_stage

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
BOUND = 1e-5  # the max |Δlogit| docs/artifacts.md states for model/ against adapter/ on its fp32 base
LORA = TrainConfig(method="lora", lr=1e-2, max_steps=3, batch_size=4, micro_batch_size=4, save_steps=0)
IDS = torch.arange(3, 51).reshape(2, 24)


def subset(tmp_path: Path) -> Path:
    path = tmp_path / "subset.jsonl"
    write_examples([Example.create(f"Count to {i}.", "", " ".join(["one", "two"] * (1 + i))) for i in range(4)], path)
    return path


def lora_run(tmp_path: Path, model: ModelConfig) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    train_stage(subset(tmp_path), model, LORA, 0, RuntimeConfig(device="cpu", train_process="same"), out,
                StageRun(None, "train"))
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(IDS).logits.float()


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_merged_model_matches_the_adapter_on_its_fp32_base(tmp_path, dtype):
    out = lora_run(tmp_path, ModelConfig(dtype=dtype))
    info = json.loads((out / "adapter" / MODEL_INFO_FILE).read_text())
    assert info["weights_dtype"] == "float32"  # the tiny model is far below the 2 GiB limit
    merged = AutoModelForCausalLM.from_pretrained(out / "model")
    assert merged.dtype == torch.float32
    base, _ = load_model(ModelConfig(**info["base_model_spec"]), dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(base, out / "adapter")
    assert (logits(unmerged) - logits(merged)).abs().max() < BOUND
    adapter, _ = load_adapter(out / "adapter")
    assert (logits(adapter) - logits(merged)).abs().max() < BOUND


def test_the_fp32_merge_patches_a_copy_of_the_base_files_and_falls_back_when_it_cannot(tmp_path, monkeypatch):
    """An fp32 base on disk: model/ is its files with W + ΔW written in place (no second model is loaded); a base
    stored in bf16 cannot be patched into fp32, and is merged on a freshly loaded fp32 base instead."""
    from safetensors.torch import load_file, save_file

    import train.checkpoints

    real_assembled, loads = train.checkpoints.assembled_model, []
    monkeypatch.setattr(train.checkpoints, "assembled_model", lambda *a: loads.append(a) or real_assembled(*a))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fp32_base = build_tiny_model("llama", tmp_path / "fp32_base", seed=5)
    out = lora_run(tmp_path / "a", ModelConfig(name="mine", source="local", path=str(fp32_base), dtype="bfloat16"))
    assert not loads
    base, merged = load_file(fp32_base / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert set(merged) == set(base) and changed and all("proj" in k for k in changed)
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.dtype == torch.float32
    adapter, _ = load_adapter(out / "adapter")
    assert (logits(adapter) - logits(reloaded)).abs().max() < BOUND

    bf16_base = shutil.copytree(fp32_base, tmp_path / "bf16_base")
    save_file({k: v.to(torch.bfloat16) for k, v in base.items()}, bf16_base / "model.safetensors",
              metadata={"format": "pt"})
    out = lora_run(tmp_path / "b", ModelConfig(name="mine", source="local", path=str(bf16_base), dtype="bfloat16"))
    assert len(loads) == 1
    adapter, _ = load_adapter(out / "adapter")
    assert (logits(adapter) - logits(AutoModelForCausalLM.from_pretrained(out / "model"))).abs().max() < BOUND


def test_load_adapter_names_the_folder_when_the_base_is_gone(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    spec = {"name": "gone", "source": "local", "path": str(tmp_path / "no-such-model")}
    (adapter / MODEL_INFO_FILE).write_text(json.dumps({"base_model_spec": spec}))
    with pytest.raises(UserError, match=f"adapter {adapter}: cannot load its base") as caught:
        load_adapter(adapter)
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match=f"adapter {tmp_path}: {MODEL_INFO_FILE} is missing"):
        load_adapter(tmp_path)


HUB = """
import json, shutil, sys, torch
from pathlib import Path
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM
from superfilter.contracts import MODEL_INFO_FILE
from superfilter.errors import UserError
from superfilter.models import ModelConfig, load_adapter
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train.config import TrainConfig
from train.stage import train_stage

torch.set_num_threads(1)
subset, out = Path(sys.argv[1]), Path(sys.argv[2])
cfg = TrainConfig(method="lora", lr=1e-2, max_steps=3, batch_size=4, micro_batch_size=4, save_steps=0)
train_stage(subset, ModelConfig(name="tiny-hub", source="hub", path="org/tiny"), cfg, 0,
            RuntimeConfig(device="cpu"), out, StageRun(None, "train"))
ids = torch.arange(3, 51).reshape(2, 24)
with torch.no_grad():
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()(ids).logits
    auto = AutoPeftModelForCausalLM.from_pretrained(out / "adapter", dtype=torch.float32).eval()(ids).logits
moved = shutil.copytree(out / "adapter", out / "moved")
info = json.loads((moved / MODEL_INFO_FILE).read_text())
info["base_model_spec"]["path"] = "org/not-cached"
(moved / MODEL_INFO_FILE).write_text(json.dumps(info))
try:
    load_adapter(moved)
    error = None
except UserError as caught:
    error = str(caught)
print(json.dumps({"auto": (auto - merged).abs().max().item(), "error": error}))
"""


def test_auto_peft_loads_an_adapter_whose_base_is_on_the_hub(tmp_path):
    snapshot = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    build_tiny_model("llama", snapshot, seed=3)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HUB, str(subset(tmp_path)), str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/tiny"
    assert result["auto"] < BOUND
    assert result["error"].startswith(f"adapter {out / 'moved'}: cannot load its base 'org/not-cached'")
    assert "\n" not in result["error"]
    shutil.rmtree(out / "moved")
