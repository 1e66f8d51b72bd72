"""The GPU acceptance run also runs, with small shapes, on a CPU: every check reports a number and none fails."""

import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("parity gpt2-124m", "scoring llama2-7b", "bf16 vs fp32 llama2-7b", "attention llama2-7b",
          "LoRA llama2-7b", "generation llama2-7b", "smoke pipeline")


@pytest.mark.slow
def test_gpu_check_runs_small_on_cpu() -> None:
    result = subprocess.run([sys.executable, "experiments/gpu_check/check.py", "--device", "cpu", "--small"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=1800)
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
