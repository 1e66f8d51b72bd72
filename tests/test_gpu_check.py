"""The GPU acceptance run also runs, with small shapes, on a CPU: every check reports a number and none fails; the
wheels it brings are what the GPU machines lack and fit what a run carries; a dry run renders its commands."""

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("parity gpt2-124m", "scoring llama2-7b", "bf16 vs fp32 llama2-7b", "attention llama2-7b",
          "LoRA llama2-7b", "generation llama2-7b", "smoke pipeline", "FSDP full llama2-7b", "DDP LoRA llama2-7b",
          "multi-process scoring gpt2-124m", "train stage FSDP", "train stage DDP LoRA")


@pytest.mark.slow
def test_gpu_check_runs_small_on_cpu() -> None:
    # Two CPU processes (gloo) stand in for two GPUs in the multi-GPU rows.
    result = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--device", "cpu", "--small",
                             "--processes", "2"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    for check in CHECKS:
        assert any(line.startswith(f"| {check} ") for line in table), (check, result.stdout[-3000:])
    assert not any("FAILED" in line for line in table)
    assert "all checks passed" in result.stdout


def test_gpu_check_refuses_a_missing_gpu_in_one_line() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: the refusal cannot be observed")
    result = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--skip", "scoring", "attention",
                             "lora", "generation", "smoke"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and "no CUDA device" in result.stdout


def load_check():
    """experiments/gpu_check/check.py as a module (it is a script, not part of a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", PROJECT_ROOT / "experiments/gpu_check/check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# What the GPU machines come with (Python 3.12): check.py must bring everything else, and nothing of this.
GPU_IMAGE = {"torch", "transformers", "accelerate", "peft", "numpy", "pandas", "pyarrow", "scipy", "scikit-learn",
             "matplotlib", "tqdm", "httpx", "pyyaml"}


def norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_wheels_bring_what_the_gpu_image_lacks_within_what_a_run_carries() -> None:
    check = load_check()
    pins = [pin for pin, _ in check.requirements()]
    names = {norm(pin.split("==")[0]) for pin in pins}
    assert all("==" in pin for pin in pins) and not names & GPU_IMAGE
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "lm-eval", "datasets"} <= names
    # The manifest (written by --prepare-wheels) holds one cp312 or pure-Python wheel per pin, nothing else.
    wheels = check.manifest()
    assert {norm(f.split("-")[0]) for f in wheels} == names
    assert all(f.endswith("-none-any.whl") or "-cp312-cp312-manylinux" in f for f in wheels)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True).stdout
    files = [PROJECT_ROOT / f for f in tracked.decode().split("\0") if f]
    source = sum(f.stat().st_size for f in files if f.is_file())
    assert source + sum(wheels.values()) < check.CARRY_LIMIT, (source / 2**20, sum(wheels.values()) / 2**20)


def test_the_wheels_are_fetched_without_their_dependencies_for_python_3_12() -> None:
    commands = load_check().wheel_commands(Path("wheels"))
    downloads = [c for c in commands if "download" in c]
    assert downloads and all({"--only-binary=:all:", "--no-deps", "--python-version=3.12"} <= set(c)
                             for c in downloads)
    built = [c[-1] for c in commands if "wheel" in c]  # PyPI has only source for these: built as pure Python
    assert built == ["antlr4-python3-runtime==4.9.3", "rouge-score==0.1.2", "sqlitedict==2.1.0", "word2number==1.1"]


def test_a_dry_run_renders_the_multi_gpu_commands_without_running_them() -> None:
    result = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--dry-run", "--processes", "8"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "multi-GPU checks on 8 processes: fsdp, ddp_lora, multi_scoring, train_stage" in lines
    torchrun = [line for line in lines if "torch.distributed.run" in line]
    assert len(torchrun) == 2 and all("--standalone --nproc_per_node=8 -m experiments.gpu_check.multi_gpu" in line
                                      and "--width 4096 --layers 32" in line for line in torchrun)
    assert any("train.accelerate_config=fsdp runtime.num_processes=8 train.batch_size=16 stages=[train]" in line
               for line in lines)
    one = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--dry-run", "--processes", "1"],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert "multi-GPU checks: none" in one.stdout
