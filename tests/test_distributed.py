"""Several training processes and nodes on a CPU (gloo): DDP and FSDP2 train as one process does, a killed sharded
run resumes to the same weights, model/ holds the in-memory weights, and bad worlds fail before anything loads."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from superfilter import pipeline
from superfilter.config import compose_config, register_configs, to_config
from superfilter.data import Example, write_examples
from superfilter.errors import ConfigError
from superfilter.launch import (
    Launch,
    Nodes,
    first_slurm_host,
    free_port,
    launch_ranks,
    rank_command,
    rank_env,
    release_followers,
    resolve_nodes,
)
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train.config import LoraSettings, TrainConfig
from train.job import JOB_FILE, TrainJob
from train.sharding import read_strategy
from train.stage import check, train_stage

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig()
CPU = RuntimeConfig(device="cpu")
# 9 records, global batch 4: each epoch ends with a one-record step, where one rank trains on nothing (weight 0)
# but must still join every collective.
CFG = TrainConfig(lr=1e-3, epochs=2, batch_size=4, micro_batch_size=1, save_steps=0, lora=LoraSettings(dropout=0.0))

# Runs train.rank as a launched rank, then compares what model/ (or adapter/) holds with the weights the ranks
# held in memory, gathered to rank 0 before save_outputs (which merges LoRA in place). `--slow` sleeps in each step
# so a test can kill the run between two checkpoints.
RANK_CHECK = '''
import json, sys, time
from pathlib import Path
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import AutoModelForCausalLM
import train.rank as rank

slow = "--slow" in sys.argv
save, step = rank.save_outputs, rank.train_step

def slow_step(*args, **kwargs):
    time.sleep(0.3)
    return step(*args, **kwargs)

def save_and_check(trainer, job, out_dir):
    lora = job.train.method == "lora"
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=lora)
    memory = get_model_state_dict(trainer.model, options=options)
    save(trainer, job, out_dir)
    if not trainer.world.is_main:
        return
    if lora:
        saved = load_file(out_dir / "adapter" / "adapter_model.safetensors")
        memory = {k.replace(".default", ""): v for k, v in memory.items()}
        missing = []
    else:
        model, info = AutoModelForCausalLM.from_pretrained(out_dir / "model", output_loading_info=True)
        saved, missing = model.state_dict(), [*info["missing_keys"], *info["unexpected_keys"]]
    diff = max((saved[k].float() - v.float()).abs().max().item() for k, v in memory.items())
    (out_dir / "check.json").write_text(json.dumps({"keys": sorted(memory) == sorted(saved), "missing": missing,
                                                    "max_diff": diff, "n": len(memory)}))

rank.save_outputs = save_and_check
if slow:
    rank.train_step = slow_step
rank.main([a for a in sys.argv[1:] if a != "--slow"])
'''


def records(n: int) -> list[Example]:
    return [Example.create(f"Count to {i} in words.", "" if i % 3 else f"start at {i % 5}",
                           f"Here is the count up to {i}: " + " ".join(["one", "two", "three"] * (1 + i % 4)))
            for i in range(n)]


def subset_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "subset.jsonl"
    write_examples(records(9), path)
    return path


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]


def model_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


def assert_same_training(out: Path, reference: Path) -> None:
    """Loss curve and final weights of `out` equal the reference run's, to fp32 rounding of a different sum order."""
    assert [r["loss"] for r in metric_rows(out)] == pytest.approx([r["loss"] for r in metric_rows(reference)],
                                                                  rel=1e-5)
    ours, theirs = model_weights(out), model_weights(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-6, msg=key)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Linux /proc): torchrun starts each rank in a session of its own."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):  # a process that just exited
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))

    def tree(p: int) -> list[int]:
        return [p, *(d for c in children.get(p, []) for d in tree(c))]

    return tree(pid)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, in this process: the run every multi-process run must reproduce, per method (built once)."""
    root = tmp_path_factory.mktemp("references")
    built: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in built:
            out = root / method / "out"
            out.mkdir(parents=True)
            train_stage(subset_file(root / method), TINY, replace(CFG, method=method), 0, CPU, out,
                        StageRun(None, "train"))
            built[method] = out
        return built[method]

    return get


def write_job(folder: Path, cfg: TrainConfig, runtime: RuntimeConfig) -> Path:
    out = folder / "out"
    out.mkdir(parents=True)
    job_file = out / JOB_FILE
    job_file.write_text(json.dumps(TrainJob(str(subset_file(folder)), TINY, cfg, 0, runtime).to_dict()))
    (folder / "rank_check.py").write_text(RANK_CHECK)
    return job_file


# Bad worlds: one-line errors before anything loads.

def test_num_nodes_zero_is_a_one_line_error():
    register_configs()
    with pytest.raises(ConfigError, match=r"^runtime.num_nodes must be >= 1, got 0$"):
        to_config(compose_config(["runtime.num_nodes=0"]))


def test_a_sharding_config_on_one_process_fails_before_anything_loads(tmp_path):
    config = to_config(compose_config(["experiment=smoke", "train.accelerate_config=fsdp", "train.method=full",
                                       f"artifact_root={tmp_path}"]))
    with pytest.raises(ConfigError, match=r"train.accelerate_config=fsdp shards the model over processes, but "
                                          r"there is one .*use runtime.num_processes=N"):
        pipeline.run(config)
    assert not any(tmp_path.iterdir())  # no stage started


@pytest.mark.parametrize(("batch", "micro", "processes", "nodes"), [(8, 3, 1, 1), (8, 1, 3, 1), (12, 2, 2, 2)])
def test_a_world_that_does_not_divide_the_global_batch_is_refused(batch, micro, processes, nodes):
    world = processes * nodes
    with pytest.raises(ConfigError, match=rf"train.batch_size={batch} is not a multiple of train.micro_batch_size "
                                          rf"× processes = {micro} × {world} = {micro * world}"):
        check(TrainConfig(batch_size=batch, micro_batch_size=micro),
              RuntimeConfig(num_processes=processes, num_nodes=nodes))
    check(TrainConfig(batch_size=micro * world * 2, micro_batch_size=micro),
          RuntimeConfig(num_processes=processes, num_nodes=nodes))


def test_accelerate_configs_name_the_strategy_and_refuse_what_the_project_does_not_do(tmp_path):
    assert read_strategy("fsdp").name == "fsdp" and read_strategy("fsdp").reshard_after_forward
    assert read_strategy("ddp").name == "ddp"
    cases = {
        "distributed_type: DEEPSPEED\n": r"distributed_type='DEEPSPEED' is not supported",
        "distributed_type: FSDP\nfsdp_config:\n  fsdp_offload_params: true\n": r"fsdp_offload_params=True is not "
                                                                                r"supported",
        "distributed_type: FSDP\nfsdp_config:\n  fsdp_sync_module_states: true\n": r"fsdp_sync_module_states is "
                                                                                   r"not read",
        "distributed_type: MULTI_GPU\nmixed_precision: bf16\n": r"mixed_precision is set by train.mixed_precision",
    }
    for i, (text, error) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=error):
            read_strategy(str(path))


# Launch commands, one node and several, as each node runs them.

def test_rank_commands_on_one_node_and_on_several():
    job = ["-m", "train.rank", "--job", "j.json"]
    assert rank_command("train.rank", ["--job", "j.json"], 2)[1:] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *job]
    node1 = Nodes(num_nodes=2, node_rank=1, master_addr="gpu07", master_port=29400)
    assert rank_command("train.rank", ["--job", "j.json"], 2, nodes=node1, port=41000)[1:] == [
        "-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--rdzv_backend=static",
        "--rdzv_endpoint=gpu07:41000", "--nproc_per_node=2", *job]
    config = Path("conf/accelerate/fsdp.yaml")
    assert rank_command("train.rank", ["--job", "j.json"], 8, config, node1, 41000)[1:] == [
        "-m", "accelerate.commands.launch", "--config_file", "conf/accelerate/fsdp.yaml", "--num_processes", "16",
        "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "gpu07", "--main_process_port", "41000",
        *job]


@pytest.mark.parametrize(("nodelist", "host"), [("gpu07", "gpu07"), ("gpu[07-09,12]", "gpu07"),
                                                 ("a1,b2", "a1"), ("node-[003,010-011],login", "node-003")])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_nodes_come_from_the_settings_or_slurm():
    assert resolve_nodes(RuntimeConfig(), {}) is None
    two = RuntimeConfig(num_nodes=2)
    assert resolve_nodes(two, {"SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]"}) == Nodes(2, 1, "gpu07",
                                                                                                  29400)
    assert resolve_nodes(replace(two, node_rank=0, master_addr="10.0.0.1"), {}) == Nodes(2, 0, "10.0.0.1", 29400)
    with pytest.raises(ConfigError, match="needs runtime.node_rank"):
        resolve_nodes(two, {})
    with pytest.raises(ConfigError, match="needs runtime.master_addr"):
        resolve_nodes(replace(two, node_rank=1), {})


def test_slurm_launcher_runs_one_task_per_node_with_its_gpus_and_one_accelerate_launch_each():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    register_configs()
    overrides = ["hydra/launcher=slurm", "runtime.num_nodes=2", "runtime.num_processes=8"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 1, 8)
    assert launcher.cpus_per_gpu >= 1 and launcher.mem_per_gpu  # per GPU: the one task per node gets them all
    job = Launch("train.rank", ("--job", "/shared/train/k/train_config.json"), 8, "training ranks", None,
                 "/repo/conf/accelerate/fsdp.yaml", "/repo", port=41000)
    runtime = RuntimeConfig(num_nodes=launcher.nodes, num_processes=launcher.gpus_per_node)
    commands = [job.command(resolve_nodes(runtime, {"SLURM_NODEID": str(n), "SLURM_JOB_NODELIST": "gpu[07-08]"}))
                for n in range(2)]
    for node, command in enumerate(commands):
        assert command[1:] == [
            "-m", "accelerate.commands.launch", "--config_file", "/repo/conf/accelerate/fsdp.yaml",
            "--num_processes", "16", "--num_machines", "2", "--machine_rank", str(node), "--main_process_ip", "gpu07",
            "--main_process_port", "41000", "-m", "train.rank", "--job", "/shared/train/k/train_config.json"]


# Two ranks on a CPU: each strategy trains as one process does, and model/ holds the weights the ranks held.

@pytest.mark.slow
@pytest.mark.parametrize(("method", "config"), [("full", "ddp"), ("lora", "ddp"), ("full", "fsdp"), ("lora", "fsdp")])
def test_two_ranks_train_as_one_process_and_save_what_they_hold(tmp_path, reference, method, config):
    cfg = replace(CFG, method=method, accelerate_config=config)
    job_file = write_job(tmp_path, cfg, replace(CPU, num_processes=2))
    launch_ranks("rank_check", ["--job", str(job_file)], 2, "test ranks", threads=1, cwd=tmp_path)
    out = job_file.parent
    result = json.loads((out / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["strategy"] == config
    assert len(result["host_peak_rss_mb_per_rank"]) == 2 and all(m > 0 for m in result["host_peak_rss_mb_per_rank"])
    checked = json.loads((out / "check.json").read_text())
    assert checked["keys"] and not checked["missing"] and checked["n"] > 0 and checked["max_diff"] == 0.0
    assert_same_training(out, reference(method))


@pytest.mark.slow
def test_a_killed_fsdp_run_resumes_to_the_same_weights(tmp_path, reference):
    cfg = replace(CFG, method="full", accelerate_config="fsdp", save_steps=2)
    runtime = replace(CPU, num_processes=2)
    job_file = write_job(tmp_path, cfg, runtime)
    out = job_file.parent
    command = rank_command("rank_check", ["--job", str(job_file), "--slow"], 2)
    proc = subprocess.Popen(command, cwd=tmp_path, env=rank_env(1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    marker = out / "checkpoints" / "step_000002" / "_COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    for pid in process_tree(proc.pid):  # torchrun and both ranks, as a node failure would
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    checkpoint = marker.parent
    assert {p.name for p in checkpoint.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}  # one shard per rank
    assert {p.name for p in checkpoint.glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}

    metrics = train_stage(Path(json.loads(job_file.read_text())["subset_path"]), TINY, cfg, 0, runtime, out,
                          StageRun(None, "train"))
    assert metrics["resumed_after_step"] in (2, 4) and metrics["strategy"] == "fsdp"
    assert [r["step"] for r in metric_rows(out)] == list(range(1, metrics["n_steps"] + 1))
    assert_same_training(out, reference("full"))


@pytest.mark.slow
def test_two_nodes_of_one_process_train_as_one_node_of_two(tmp_path, reference):
    port = free_port()
    follower = subprocess.Popen([sys.executable, "-m", "superfilter.launch", "--num-nodes", "2", "--node-rank", "1",
                                 "--master-addr", "127.0.0.1", "--master-port", str(port)],
                                cwd=ROOT, env=rank_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runtime = replace(CPU, num_nodes=2, node_rank=0, master_addr="127.0.0.1", master_port=port)
    cfg = replace(CFG, method="full", accelerate_config="fsdp")
    out = tmp_path / "out"
    out.mkdir()
    try:
        metrics = train_stage(subset_file(tmp_path), TINY, cfg, 0, runtime, out, StageRun(None, "train"))
    finally:
        release_followers(runtime)
    assert follower.wait(timeout=120) == 0, follower.stderr.read().decode()[-3000:]
    assert metrics["world_size"] == 2 and metrics["strategy"] == "fsdp"
    assert_same_training(out, reference("full"))


@pytest.mark.slow
def test_the_users_fsdp_command_trains_with_fsdp_on_a_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "run.py", "experiment=smoke", "train.method=full", "train.accelerate_config=fsdp",
         "runtime.num_processes=2", "stages=[train]", f"artifact_root={tmp_path}/artifacts",
         f"hydra.run.dir={tmp_path}/hydra", "tracking.mode=disabled"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "FSDP2 (full shard per decoder layer) over 2 processes" in result.stdout + result.stderr
    from transformers import AutoModelForCausalLM

    (model_dir,) = (tmp_path / "artifacts" / "train").glob("*/model")
    model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True)
    assert not any(info.values()) and model.config.architectures == ["LlamaForCausalLM"]
