"""The plan before a run: model shapes, the memory estimator against measurements and published figures, the
stages it walks, the presets against the world they state, and the refusal with its fix."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from superfilter import pipeline, planning
from superfilter.artifacts import plan_only
from superfilter.config import compose_config, to_config
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig
from superfilter.plan import (
    GIB,
    KNOWN_CONFIGS,
    SPEEDS,
    TrainSetup,
    host_bytes_at_load,
    layer_activation_bytes,
    shape_from_config,
    train_memory,
)
from superfilter.presets import conf_dir
from superfilter.runtime import GPU_MEMORY_GIB

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted(f"{p.parent.name}/{p.stem}" for group in ("paper", "bench")
                 for p in (conf_dir() / "experiment" / group).glob("*.yaml"))
HOURS = re.compile(r"≈ ([\d.]+) GPU hours of scoring")
WORLD = re.compile(r"# World: (\d+|one) GPUs?")


def config(*overrides: str, root: Path):
    return to_config(compose_config([*overrides, f"artifact_root={root}"]))


def preset_jobs(preset: str) -> list[list[str]]:
    """The jobs of `python run.py -m experiment=<preset>`: its hydra.sweeper.params, crossed."""
    node = OmegaConf.load(conf_dir() / "experiment" / f"{preset}.yaml")
    params = OmegaConf.select(node, "hydra.sweeper.params") or {}
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*axes)]


# Shapes and parameter counts.

# Parameter counts the model cards and papers publish (Hugging Face's model pages; LLaMA 2 paper Table 1 rounds them
# to 7B/13B). The shapes leave out biases and norm gains, under 0.2% of any of them.
PUBLISHED = {
    "meta-llama/Llama-2-7b-hf": 6_738_415_616, "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248, "Qwen/Qwen2.5-7B": 7_615_616_512, "gpt2": 124_439_808,
    "gpt2-large": 774_030_080, "EleutherAI/gpt-neo-1.3B": 1_315_575_808,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134_515_008, "google/gemma-3-270m": 268_098_176,
}


@pytest.mark.parametrize("repo", sorted(PUBLISHED))
def test_known_shapes_give_the_published_parameter_counts(repo):
    assert shape_from_config(KNOWN_CONFIGS[repo]).n_params == pytest.approx(PUBLISHED[repo], rel=2e-3)


@pytest.mark.slow
@pytest.mark.parametrize("repo", sorted(KNOWN_CONFIGS))
def test_known_shapes_count_what_transformers_builds(repo):
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(KNOWN_CONFIGS[repo])
    model_type = values.pop("model_type")
    if model_type == "gpt_neo":  # alternating global/local layers, as the published configs say
        values["attention_types"] = [[["global", "local"], values["num_layers"] // 2]]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **values))
    built = sum(p.numel() for p in model.parameters())
    assert shape_from_config(KNOWN_CONFIGS[repo]).n_params == pytest.approx(built, rel=2e-3)


def test_a_tiny_model_shape_comes_from_its_config(tmp_path):
    found = planning.model_shape(ModelConfig(name="tiny", source="tiny", path="llama"))
    assert found.shape is not None and found.source == "tiny llama"
    assert (found.shape.hidden_size, found.shape.num_layers, found.shape.tied_embeddings) == (64, 2, False)


def test_a_local_folder_shape_comes_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(KNOWN_CONFIGS["gpt2"]))
    found = planning.model_shape(ModelConfig(name="mine", source="local", path=str(tmp_path)))
    assert found.shape == shape_from_config(KNOWN_CONFIGS["gpt2"]) and found.source == str(tmp_path / "config.json")


def test_offline_the_hub_models_fall_back_to_the_known_shapes():
    found = planning.model_shape(ModelConfig(name="llama2_7b", source="hub", path="meta-llama/Llama-2-7b-hf"))
    assert found.source == "known shapes of meta-llama/Llama-2-7b-hf"
    unknown = planning.model_shape(ModelConfig(name="x", source="hub", path="nobody/nothing"))
    assert unknown.shape is None and "unknown" in unknown.source


@pytest.mark.slow
@pytest.mark.assets
@pytest.mark.parametrize("package", sorted(planning.GGUF_MODELS))
def test_the_bundled_models_converted_configs_match_their_known_shapes(package):
    from superfilter.models import gguf_model_dir
    from superfilter.presets import model_preset

    preset = next(p for name in ("smollm2_135m", "gemma3_270m") if (p := model_preset(name))["path"] == package)
    try:
        folder = gguf_model_dir(ModelConfig(**preset))
    except Exception as e:  # noqa: BLE001 - a missing package is a skip, whatever the loader raised
        pytest.skip(f"bundled model {package} not available: {e}")
    converted = shape_from_config(json.loads((folder / "config.json").read_text()))
    assert converted == planning.model_shape(ModelConfig(**preset)).shape


# The activation formula against what autograd keeps, counted on CPU.


def saved_bytes(config, weights: torch.dtype, autocast: bool, tokens: int) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass in one forward over `tokens` tokens."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=weights, attn_implementation="sdpa").train()
    seen: dict[tuple[int, torch.dtype], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tokens in t.shape:  # activations; the weights' autocast copies are counted by train_memory's buffers
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (1, tokens))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return sum(seen.values())


def family_config(name: str, layers: int):
    from transformers import Gemma3TextConfig, GPT2Config, LlamaConfig

    if name == "llama":
        return LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=layers,
                           num_attention_heads=8, num_key_value_heads=2)
    if name == "gemma3_text":
        return Gemma3TextConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=layers,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=128,
                                layer_types=["full_attention"] * layers)
    return GPT2Config(vocab_size=1000, n_embd=256, n_layer=layers, n_head=8, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2"])
@pytest.mark.parametrize(("weights", "autocast", "act", "residual"), [
    (torch.float32, True, 2, 4),  # full finetuning: fp32 master weights, bf16 autocast
    (torch.bfloat16, True, 2, 2),  # LoRA on a bf16 base
    (torch.float32, False, 4, 4),  # fp32 throughout (a CPU without bf16)
])
def test_layer_activations_match_what_autograd_saves(family, weights, autocast, act, residual):
    tokens = 600
    per_layer = (saved_bytes(family_config(family, 4), weights, autocast, tokens)
                 - saved_bytes(family_config(family, 2), weights, autocast, tokens)) / 2 / tokens
    shape = shape_from_config({"model_type": family, **family_config(family, 2).to_dict()})
    assert layer_activation_bytes(shape, act, residual) == pytest.approx(per_layer, rel=0.1)


# The estimator against published figures for 7B/13B full finetuning.


def full_setup(world: int, sharded: bool) -> TrainSetup:
    """conf/train/paper_7b.yaml on GPUs: fp32 master weights, bf16 autocast, micro-batch 4 × 2048, checkpointing."""
    return TrainSetup("full", 16, 4, 2048, True, weight_bytes=4, act_bytes=2, world=world, sharded=sharded)


def test_full_finetuning_states_take_16_bytes_per_parameter_and_fsdp_divides_them():
    """ZeRO (Rajbhandari et al., 2020, §3.1): mixed-precision Adam keeps 16 bytes per parameter (fp16 weights and
    gradients, fp32 master weights, momentum and variance); ours keep fp32 weights and gradients, the same 16. A 7B
    model: ~108 GB before activations, more than any single GPU; FSDP over 8 GPUs: ~13.5 GB per GPU plus
    activations. Hugging Face's "model training anatomy" counts 18 bytes per parameter for mixed-precision AdamW:
    the 16 plus the half-precision weight copy autocast holds, our buffers."""
    llama7b = shape_from_config(KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"])
    one = train_memory(llama7b, full_setup(1, False))
    states = one.weights + one.gradients + one.optimizer
    assert states == pytest.approx(16 * llama7b.n_params, rel=1e-6)
    assert states + one.buffers == pytest.approx(18 * llama7b.n_params, rel=0.01)
    assert one.total > GPU_MEMORY_GIB["h100-80gb"] * GIB
    fsdp = train_memory(llama7b, full_setup(8, True))
    assert (fsdp.weights + fsdp.gradients + fsdp.optimizer) / 1e9 == pytest.approx(13.5, rel=0.02)
    assert fsdp.total < 0.9 * GPU_MEMORY_GIB["a100-80gb"] * GIB
    llama13b = shape_from_config(KNOWN_CONFIGS["meta-llama/Llama-2-13b-hf"])
    fsdp13 = train_memory(llama13b, full_setup(8, True))
    assert (fsdp13.weights + fsdp13.gradients + fsdp13.optimizer) / 1e9 == pytest.approx(26.0, rel=0.02)
    assert fsdp13.total < 0.9 * GPU_MEMORY_GIB["a100-80gb"] * GIB


# The estimator against measured peaks on CPU (stage_peak_rss_mb: the process's peak since the stage began).


def cpu_train_estimate(shape, setup: TrainSetup, resident: float) -> float:
    """What a CPU train stage peaks at: what the process held before, plus the larger of loading and training."""
    return resident + max(train_memory(shape, setup).total, host_bytes_at_load(shape, setup.weight_bytes))


def test_gemma_lora_estimate_is_within_25_percent_of_the_measured_train_stage():
    """docs/cpu.md, the embedded default measured 2026-12-01 (bf16 on an AVX512-BF16 CPU): the train stage peaked
    at 2.70 GiB, the select stage before it at 0.83 GiB (what the process held when training began). The GGUF model
    is loaded from its dequantised fp32 files."""
    gemma = shape_from_config({**KNOWN_CONFIGS["google/gemma-3-270m"], "torch_dtype": "float32"})
    lora = TrainSetup("lora", 16, 1, 512, False, weight_bytes=2, act_bytes=2, world=1, sharded=False)
    assert cpu_train_estimate(gemma, lora, 0.83 * GIB) / GIB == pytest.approx(2.70, rel=0.25)


@pytest.mark.slow
def test_tiny_run_peak_and_keys_match_the_plan(tmp_path):
    """A real tiny run: the train stage's measured peak is within 25% of the estimate, and the plan of the same
    config then finds every stage built, under the keys the run reported."""
    cfg = config("experiment=smoke", "stages=[score,select,train]", root=tmp_path)
    summary = pipeline.run(cfg)
    metrics = {name: info["metrics"] for name, info in summary["stages"].items()}
    shape = planning.model_shape(cfg.model.strong).shape
    setup = planning.train_setup(cfg, cfg.train, planning.hardware(cfg.runtime, plan_only_run=False), 1)
    estimate = cpu_train_estimate(shape, setup, metrics["select"]["stage_peak_rss_mb"] * 2**20)
    assert estimate / 2**20 == pytest.approx(metrics["train"]["stage_peak_rss_mb"], rel=0.25)
    plan = planning.make_plan(cfg, pipeline.run)
    assert {s.name: (s.artifact.key, s.artifact.cached) for s in plan.stages} == {
        name: (info["key"], True) for name, info in summary["stages"].items()}


# The walk and the check.


def test_planning_builds_nothing_and_names_the_partners_stages(tmp_path):
    cfg = config("experiment=smoke", root=tmp_path / "store")
    with plan_only() as planned:
        summary = pipeline.run(cfg)
    assert not (tmp_path / "store").exists()
    assert [p.artifact.stage for p in planned][:2] == ["prepare", "score"]
    plan = planning.make_plan(cfg, pipeline.run)
    names = [s.name for s in plan.stages]
    assert names == ["prepare", "score", "select", "train", "select_reference", "train_reference", "eval"]
    assert {s.name for s in plan.stages} >= set(summary["stages"])
    assert not any(s.artifact.cached for s in plan.stages) and not plan.problems


def test_a_run_that_cannot_fit_stops_before_prepare(tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "host_memory", lambda: 64 * 2**20)
    cfg = config("experiment=smoke", root=tmp_path / "store")
    with pytest.raises(ConfigError, match=r"does not fit: score \(tiny\) needs .* GiB of RAM"):
        pipeline.run(cfg)
    assert not (tmp_path / "store").exists()


def test_runtime_gpu_names_a_known_gpu(tmp_path):
    with pytest.raises(ConfigError, match=r"runtime.gpu must be auto or one of \['a100-80gb', 'h100-80gb', 'h200'\]"):
        config("runtime.gpu=v100", root=tmp_path)


def test_a_named_gpu_on_a_host_without_cuda_is_a_plan_not_a_run(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    cfg = config("experiment=smoke", "runtime.gpu=h100-80gb", root=tmp_path)
    with pytest.raises(ConfigError, match="runtime.gpu=h100-80gb names a GPU, but this run would use the cpu"):
        pipeline.run(cfg)
    assert planning.make_plan(cfg, pipeline.run).hardware.name == "h100-80gb"


def test_sharding_follows_the_accelerate_config_and_needs_several_processes():
    from train.config import TrainConfig

    assert planning.sharding(TrainConfig(accelerate_config="fsdp"), 1) == "none"
    assert planning.sharding(TrainConfig(accelerate_config="fsdp"), 8) == "fsdp"
    assert planning.sharding(TrainConfig(accelerate_config="ddp"), 8) == "ddp"


def test_every_gpu_runtime_gpu_names_has_a_speed():
    assert set(SPEEDS) == {*GPU_MEMORY_GIB, "cpu"}


# The headline case and the presets.


def test_full_finetuning_on_one_gpu_stops_with_the_fix_and_eight_fit(tmp_path):
    one = planning.make_plan(config("experiment=bench/math", "runtime.gpu=a100-80gb", "runtime.num_processes=1",
                                    root=tmp_path), pipeline.run)
    assert len(one.problems) == 1
    assert re.search(r"^train \(qwen2_5_7b, full, .*\) needs \d+\.\d GiB per GPU, a100-80gb .* has 72 GiB usable; "
                     r"fits with: runtime.num_processes=4 train.accelerate_config=fsdp \| train=lora$",
                     one.problems[0])
    eight = planning.make_plan(config("experiment=bench/math", "runtime.gpu=a100-80gb", "runtime.num_processes=8",
                                      root=tmp_path), pipeline.run)
    assert not eight.problems
    text = planning.render(eight)
    assert "fits: every stage fits" in text and "train  " in text and "qwen2_5_7b" in text


def test_a_one_gpu_host_is_told_to_use_its_gpu_and_lora(tmp_path, monkeypatch):
    one_gpu = planning.Hardware("NVIDIA A100-SXM4-80GB", 80 * GIB, True, SPEEDS["a100-80gb"], 1, True, "bfloat16")
    monkeypatch.setattr(planning, "hardware", lambda runtime, plan_only_run: one_gpu)
    plan = planning.make_plan(config("experiment=bench/math", root=tmp_path), pipeline.run)
    train = next(p for p in plan.problems if p.startswith("train"))
    assert "8 processes but this host has 1 GPU; fits with: runtime.num_processes=1 train=lora" in train
    assert any(p.startswith("score") and p.endswith("fits with: runtime.num_processes=1") for p in plan.problems)


def preset_hours(preset: str, root: Path) -> tuple[float, list[str]]:
    """GPU hours of scoring and training of all the preset's jobs on its world of A100s (a stage the jobs share
    counted once), and the problems the plan finds."""
    hours: dict[str, float] = {}
    problems: list[str] = []
    for job in preset_jobs(preset) or [[]]:
        plan = planning.make_plan(config(f"experiment={preset}", "runtime.gpu=a100-80gb", *job, root=root),
                                  pipeline.run)
        hours.update({s.artifact.key: s.hours for s in plan.stages if s.hours is not None})
        problems += plan.problems
    return sum(hours.values()), problems


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_fits_the_world_it_states_and_quotes_the_plans_hours(preset, tmp_path):
    text = (conf_dir() / "experiment" / f"{preset}.yaml").read_text()
    world = WORLD.search(text)
    assert world, f"{preset} states no '# World: N GPUs' line"
    cfg = config(f"experiment={preset}", root=tmp_path)
    assert cfg.runtime.num_processes == (1 if world.group(1) == "one" else int(world.group(1)))
    hours, problems = preset_hours(preset, tmp_path)
    assert problems == []
    quoted = HOURS.search(text)
    assert quoted and quoted.group(1) == f"{hours:.1f}", f"{preset}: the plan says {hours:.2f} GPU hours"


@pytest.mark.slow
def test_the_13b_variant_of_table_2_fits_its_world(tmp_path):
    cfg = config("experiment=paper/table2_main", "model/strong=llama2_13b", "train=paper_13b",
                 "runtime.gpu=a100-80gb", root=tmp_path)
    assert not planning.make_plan(cfg, pipeline.run).problems


def test_the_reproducing_page_quotes_the_presets_hours():
    page = (ROOT / "docs" / "reproducing.md").read_text()
    for preset in (p for p in PRESETS if p.startswith("paper/")):
        quoted = HOURS.search((conf_dir() / "experiment" / f"{preset}.yaml").read_text()).group(1)
        row = next(line for line in page.splitlines() if f"experiment={preset}`" in line)
        assert f"≈ {quoted}" in row, row


# What a user types.


def run_py(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args, f"artifact_root={tmp_path / 'store'}",
                           f"hydra.run.dir={tmp_path / 'hydra'}", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_plan_true_from_the_command_line(tmp_path):
    refused = run_py("experiment=bench/math", "plan=true", "runtime.gpu=a100-80gb", "runtime.num_processes=1",
                     tmp_path=tmp_path)
    assert refused.returncode == 2
    assert "fits with: runtime.num_processes=4 train.accelerate_config=fsdp | train=lora" in refused.stderr
    planned = run_py("experiment=bench/math", "plan=true", "runtime.gpu=a100-80gb", "runtime.num_processes=8",
                     tmp_path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert "fits: every stage fits" in planned.stdout and "GPU h" in planned.stdout
    sweep = run_py("-m", "experiment=paper/table4_efficiency", "plan=true", "runtime.gpu=a100-80gb", tmp_path=tmp_path)
    assert sweep.returncode == 0, sweep.stderr
    lines = [line for line in sweep.stdout.splitlines() if line.startswith("plan ")]
    assert len(lines) == 2 and all("fits" in line for line in lines), sweep.stdout
    assert not (tmp_path / "store").exists()
