"""Rendered lm-eval tasks pin the settings the stage ran them with: `lm_eval --include_path <folder> --tasks <name>`,
with no other flag, generates the same text."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lm_eval.tasks._yaml_loader import load_yaml

from eval import harness
from eval.config import EvalConfig
from eval.stage import eval_stage
from eval.suites.lm_eval import LmEvalConfig, LmEvalTask
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

TASKS = Path(__file__).resolve().parents[1] / "eval" / "lm_eval_tasks"


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=harness.TaskLoader)


def test_a_generation_task_is_pinned_and_stays_an_lm_eval_task(tmp_path):
    for name in ("gsm8k_local.yaml", "utils.py"):
        shutil.copy(TASKS / name, tmp_path)
    shipped = load(tmp_path / "gsm8k_local.yaml")
    assert harness.pin_task(tmp_path, "gsm8k_local", {"max_gen_toks": 8}, 256, 1) == "gsm8k_local"
    text = (tmp_path / "gsm8k_local.yaml").read_text()
    assert text.startswith("# GSM8K as lm-eval's") and "*id" not in text
    read_by_lm_eval = load_yaml(tmp_path / "gsm8k_local.yaml")  # lm-eval's own reader
    assert callable(read_by_lm_eval["custom_dataset"])  # the !function tag survived
    pinned = load(tmp_path / "gsm8k_local.yaml")
    assert pinned["generation_kwargs"] == {**shipped["generation_kwargs"], "max_gen_toks": 8}
    assert pinned["num_fewshot"] == 1 and pinned["filter_list"] == shipped["filter_list"]
    assert pinned["metadata"]["version"] == shipped["metadata"]["version"]

    assert harness.pin_task(tmp_path, "gsm8k_local", {"max_gen_toks": 8}, 256, 1) == "gsm8k_local"  # same settings
    assert harness.pin_task(tmp_path, "gsm8k_local", {}, 256, None) == "gsm8k_local_1"  # another entry's
    variant = load(tmp_path / "gsm8k_local_1.yaml")
    assert variant["task"] == "gsm8k_local_1" and variant["num_fewshot"] == shipped["num_fewshot"]
    assert variant["generation_kwargs"]["max_gen_toks"] == 256  # lm-eval's default, written down

    shutil.copy(TASKS / "truthfulqa_mc2_local.yaml", tmp_path)
    assert harness.pin_task(tmp_path, "truthfulqa_mc2_local", {}, 256, 3) == "truthfulqa_mc2_local"
    assert "generation_kwargs" not in load(tmp_path / "truthfulqa_mc2_local.yaml")
    assert harness.pin_task(tmp_path, "gsm8k", {}, 256, None) is None  # lm-eval's own task: nothing rendered
    (tmp_path / "group.yaml").write_text("group: group\ntask:\n- truthfulqa_mc2_local\n")
    assert harness.pin_task(tmp_path, "group", {}, 256, None) == "group"
    assert harness.pin_task(tmp_path, "group", {}, 256, 2) == "group"  # rerun with --num_fewshot 2


def samples(folder: Path) -> list[str]:
    (path,) = folder.rglob("samples_*.jsonl")
    return [json.loads(line)["resps"][0][0] for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_the_cli_regenerates_the_stage_text_from_the_folder_alone(tiny_train_folder, tmp_path):
    cfg = EvalConfig(suites=["lm_eval"], reference="none")
    cfg.lm_eval = LmEvalConfig(tasks=[LmEvalTask("gsm8k_local", num_fewshot=1, limit=2,
                                                 gen_kwargs={"max_gen_toks": 6})])
    out = tmp_path / "eval"
    eval_stage(tiny_train_folder, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))
    (entry,) = json.loads((out / "eval" / "lm_eval.json").read_text())["tasks"]
    assert entry["rerun_task"] == "gsm8k_local"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    base = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
            f"pretrained={tiny_train_folder / 'model'}", "--tasks", "gsm8k_local", "--limit", "2", "--device", "cpu",
            "--batch_size", "1", "--log_samples", "--seed", "0,1234,1234,1234"]
    shipped = shutil.copytree(out / "eval" / "lm_eval_tasks", tmp_path / "shipped")
    shutil.copy(TASKS / "gsm8k_local.yaml", shipped)  # the YAML as shipped, the stage's settings as flags
    runs = {"pinned": ["--include_path", str(out / "eval" / "lm_eval_tasks")],
            "stage": ["--include_path", str(shipped), "--num_fewshot", "1", "--gen_kwargs", "max_gen_toks=6"]}
    texts = {}
    for name, extra in runs.items():
        done = subprocess.run([*base, *extra, "--output_path", str(tmp_path / name)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        texts[name] = samples(tmp_path / name)
    assert texts["pinned"] == texts["stage"] and texts["pinned"]  # a sample per document and filter
