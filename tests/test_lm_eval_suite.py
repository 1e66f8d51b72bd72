"""The lm_eval suite on tiny models: local tasks, open_llm as a preset of it, the lm_eval CLI rerun, bad requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eval.config import EvalConfig
from eval.open_llm_tasks import run_open_llm
from eval.stage import eval_stage
from eval.suites import lm_eval as suite
from eval.suites.lm_eval import LmEvalConfig, LmEvalTask
from eval.suites.open_llm import OpenLLMConfig
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig, build_tiny_model, load_model
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

PROJECT = Path(__file__).resolve().parents[1]
TASKS_SRC = PROJECT / "eval" / "lm_eval_tasks"


def _cfg(*tasks: LmEvalTask, **options) -> EvalConfig:
    cfg = EvalConfig(suites=["lm_eval"], reference="none")
    cfg.lm_eval = LmEvalConfig(tasks=list(tasks), **options)
    return cfg


def _stage(model_dir: Path, cfg: EvalConfig, out: Path) -> dict:
    return eval_stage(model_dir, None, cfg, RuntimeConfig(device="cpu"), out, StageRun(None, "eval"))


@pytest.mark.slow
def test_local_tasks_keep_lm_eval_metric_names_and_record_settings(tiny_train_folder, tmp_path):
    short = {"max_gen_toks": 12}
    cfg = _cfg(LmEvalTask("gsm8k", num_fewshot=2, limit=2, gen_kwargs=short),
               LmEvalTask("hendrycks_math500_local", limit=2, gen_kwargs=short),
               LmEvalTask("humaneval_local", limit=2, gen_kwargs=short),
               allow_code_execution=True)
    out = tmp_path / "eval" / "a.partial"
    metrics = _stage(tiny_train_folder, cfg, out)
    result = json.loads((out / "eval" / "lm_eval.json").read_text())
    gsm8k, math500, humaneval = result["tasks"]
    # Offline, the Hub task runs as its local copy; lm-eval's metric and filter names are kept.
    assert (gsm8k["ran"], gsm8k["source"]) == ("gsm8k_local", "local")
    assert {"exact_match,strict-match", "exact_match_stderr,strict-match", "exact_match,flexible-extract"} \
        <= set(gsm8k["results"]["gsm8k_local"])
    assert gsm8k["n_shot"]["gsm8k_local"] == 2 and gsm8k["limit"] == 2 and gsm8k["gen_kwargs"] == short
    assert math500["headline"]["metric"] == "exact_match,none" and humaneval["headline"]["metric"] == "pass@1,none"
    assert all(e["headline"]["n"] == 2 and e["headline"]["stderr"] is not None for e in result["tasks"])
    assert result["device"] == "cpu" and result["lm_eval_version"][0].isdigit() and result["weights"] == "merged"
    assert metrics["lm_eval"]["gsm8k"] == gsm8k["headline"]
    summary = (out / "eval" / "summary.md").read_text()
    assert "| gsm8k | gsm8k_local | local | 2 | 2 | exact_match,strict-match |" in summary
    # The rendered tasks name their data relative to their folder: no absolute path, no stage folder name.
    folder = out / "eval" / "lm_eval_tasks"
    for yaml_file in folder.glob("*.yaml"):
        text = yaml_file.read_text()
        assert str(out) not in text and "data/" in text and "/data/" not in text, yaml_file.name


@pytest.mark.slow
def test_open_llm_is_the_lm_eval_suite_with_fixed_entries(tiny_train_folder, tmp_path):
    """Same numbers three ways: the open_llm suite, lm_eval entries with the leaderboard's shots, and a stock
    lm-eval HFLM over the same task files (the path the open_llm suite took before it was built on lm_eval)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tokenizer = load_model(ModelConfig(source="local", path=str(tiny_train_folder / "model")), "cpu")
    data = PROJECT / "data" / "eval"
    local = OpenLLMConfig(source="local", data_dir=str(data))
    open_llm = run_open_llm(model, tokenizer, local.tasks, local.source, local.mmlu_subjects, local.share_prefix, data,
                            limit=3, device="cpu", batch_size=1, out_dir=tmp_path / "open_llm")
    cfg = _cfg(LmEvalTask("hellaswag", num_fewshot=10), LmEvalTask("truthfulqa_mc2", num_fewshot=0),
               LmEvalTask("mmlu_local", num_fewshot=5), source="local", limit=3)
    lm_eval = _stage(tiny_train_folder, cfg, tmp_path / "eval" / "b.partial")["lm_eval"]
    entries = {e["task"]: e for e in json.loads(
        (tmp_path / "eval" / "b.partial" / "eval" / "lm_eval.json").read_text())["tasks"]}
    stock = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu")
    manager = TaskManager(include_path=str(tmp_path / "open_llm" / "lm_eval_tasks"), include_defaults=False)
    for name, task, shots, key in (("hellaswag", "hellaswag_local", 10, "acc_norm,none"),
                                   ("truthfulqa_mc2", "truthfulqa_mc2_local", 0, "acc,none")):
        direct = simple_evaluate(model=stock, tasks=[task], num_fewshot=shots, limit=3, task_manager=manager,
                                 random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                                 fewshot_random_seed=1234)["results"][task][key]
        ours = entries[name]["results"][task][key]
        assert open_llm["benchmarks"][name]["value"] == pytest.approx(direct, abs=1e-6)
        assert ours == open_llm["benchmarks"][name]["value"]
    assert lm_eval["mmlu_local"]["value"] == pytest.approx(open_llm["benchmarks"]["mmlu"]["value"], abs=1e-9)


@pytest.mark.slow
def test_the_lm_eval_cli_reruns_a_finished_artifact(tiny_train_folder, tmp_path):
    from superfilter.artifacts import run_stage

    cfg = _cfg(LmEvalTask("truthfulqa_mc2_local", limit=4), LmEvalTask("mmlu_local_management", limit=4),
               LmEvalTask("gsm8k_local", num_fewshot=1, limit=2, gen_kwargs={"max_gen_toks": 8}))
    artifact = run_stage(tmp_path / "artifacts", "eval", 1, {"test": 1}, [],
                         lambda out: _stage(tiny_train_folder, cfg, out))
    assert not list((tmp_path / "artifacts" / "eval").glob("*.partial"))
    stage = json.loads((artifact.path / "eval" / "lm_eval.json").read_text())
    cli_out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    for entry in stage["tasks"]:
        command = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                   f"pretrained={tiny_train_folder / 'model'}",
                   "--include_path", str(artifact.path / "eval" / "lm_eval_tasks"),
                   "--tasks", entry["ran"], "--limit", str(entry["limit"]), "--device", "cpu", "--batch_size", "1",
                   "--output_path", str(cli_out / entry["ran"]), "--seed", "0,1234,1234,1234"]
        if entry["num_fewshot"] is not None:
            command += ["--num_fewshot", str(entry["num_fewshot"])]
        if entry["gen_kwargs"]:
            command += ["--gen_kwargs", ",".join(f"{k}={v}" for k, v in entry["gen_kwargs"].items())]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        (saved,) = (cli_out / entry["ran"]).rglob("results_*.json")
        cli = json.loads(saved.read_text())["results"][entry["ran"]]
        key = entry["headline"]["metric"]
        assert cli[key] == pytest.approx(entry["headline"]["value"], abs=1e-6), entry["ran"]


@pytest.mark.slow
def test_weights_adapter_runs_base_plus_lora_like_the_merged_model(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    base_dir = build_tiny_model("llama", tmp_path / "base", seed=7)
    folder = tmp_path / "train" / "lora-run"
    base, tokenizer = load_model(ModelConfig(source="local", path=str(base_dir)), "cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(folder / "adapter")
    peft_model.merge_and_unload().save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    (folder / "model" / "superfilter_train.json").write_text(json.dumps({"template": "alpaca"}))
    spec = {"name": "base", "source": "local", "path": str(base_dir)}  # what the train stage records
    (folder / "adapter" / "superfilter_train.json").write_text(json.dumps({"base_model_spec": spec}))
    values = {}
    for weights in ("merged", "adapter"):
        cfg = _cfg(LmEvalTask("truthfulqa_mc2_local", limit=3), weights=weights)
        values[weights] = _stage(folder, cfg, tmp_path / weights)["lm_eval"]["truthfulqa_mc2_local"]["value"]
    assert values["adapter"] == pytest.approx(values["merged"], rel=1e-4)


def test_code_tasks_need_the_flag_and_the_refusal_is_one_line(tiny_train_folder, tmp_path):
    for name in ("humaneval", "mbpp_plus", "humaneval_local"):
        with pytest.raises(ConfigError) as failure:
            _stage(tiny_train_folder, _cfg(LmEvalTask(name)), tmp_path / "out")
        assert "\n" not in str(failure.value) and "eval.lm_eval.allow_code_execution=true" in str(failure.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("entry", "message"), [
    (LmEvalTask(""), "task is empty"),
    (LmEvalTask("gsm8k_local", fewshot_as_multiturn=True), "apply_chat_template=true"),
    (LmEvalTask("gsm8k_local", limit=-1), "limit"),
])
def test_bad_entries_fail_at_config_time(entry, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(entry).validate()
    with pytest.raises(ConfigError, match="eval.lm_eval.tasks is empty"):
        _cfg().validate()


def test_a_hub_only_task_offline_names_the_local_ones():
    cfg = LmEvalConfig(tasks=[LmEvalTask("gsm8k"), LmEvalTask("medqa_4options")])
    with pytest.raises(ConfigError, match=r"tasks\[1\].task=medqa_4options: the Hub is unreachable and it has no "
                                          r"local copy; use a local task \(.*gsm8k_local"):
        suite.plan(cfg, hub=False)
    assert [(ran, source) for _, ran, source in suite.plan(cfg, hub=True)] == [("gsm8k", "hub"),
                                                                               ("medqa_4options", "hub")]
    local = LmEvalConfig(tasks=[LmEvalTask("gsm8k")], source="local")
    assert [(ran, source) for _, ran, source in suite.plan(local, hub=True)] == [("gsm8k_local", "local")]
    hub_only = LmEvalConfig(tasks=[LmEvalTask("gsm8k_local"), LmEvalTask("gsm8k")], source="hub")
    with pytest.raises(ConfigError, match="source=hub but the Hub is unreachable \\(tasks gsm8k\\); set "
                                          "eval.lm_eval.source=auto"):
        suite.plan(hub_only, hub=False)


def test_entries_running_the_same_task_get_distinct_labels():
    assert suite.entry_labels(["gsm8k", "mmlu", "gsm8k"]) == ["gsm8k#0", "mmlu", "gsm8k#2"]


@pytest.mark.slow
def test_an_unknown_task_fails_before_any_model_loads_with_the_closest_names(tmp_path):
    cfg = _cfg(LmEvalTask("gsm8k_local"), LmEvalTask("gsm8kk"))
    with pytest.raises(ConfigError) as failure:
        _stage(tmp_path / "no-model-here", cfg, tmp_path / "out")
    message = str(failure.value)
    assert "\n" not in message and "tasks[1].task=gsm8kk" in message and "closest: gsm8k" in message


def test_missing_local_data_fails_naming_the_data_dir(tmp_path):
    from superfilter.errors import DataError

    cfg = _cfg(LmEvalTask("gsm8k_local"), data_dir=str(tmp_path))
    with pytest.raises(DataError, match="eval.lm_eval.data_dir"):
        _stage(tmp_path / "no-model-here", cfg, tmp_path / "out")


def _utils():
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_task_utils", TASKS_SRC / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_humaneval_scoring_runs_the_tests_in_a_subprocess(monkeypatch):
    import gzip

    utils = _utils()
    with gzip.open(PROJECT / "data" / "eval" / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        doc = json.loads(f.readline())
    body = doc.get("canonical_solution") or ""
    assert body, "the slice keeps the reference solutions"
    assert utils.humaneval_results(doc, [body]) == {"pass@1": 1.0}
    assert utils.humaneval_results(doc, ["    return None\n"]) == {"pass@1": 0.0}
    monkeypatch.setattr(utils, "HUMANEVAL_TIMEOUT_S", 0.5)
    assert utils.humaneval_results(doc, ["    while True:\n        pass\n"]) == {"pass@1": 0.0}


def test_math_answers_are_compared_after_lm_evals_normalisation():
    utils = _utils()
    doc = {"problem": "p", "solution": "so $x = \\boxed{\\frac{1}{2}}$"}
    assert utils.math_results(doc, ["The answer is $\\frac12$"]) == {"exact_match": 1}
    assert utils.math_results(doc, ["The answer is $0.5$"]) == {"exact_match": 1}  # the normaliser knows 0.5
    assert utils.math_results(doc, ["The answer is $\\frac{2}{4}$"]) == {"exact_match": 0}  # not symbolic
    assert utils.math_results(doc, ["$\\frac{1}{3}$"]) == {"exact_match": 0}


def test_math_verify_compares_answers_as_mathematical_objects(monkeypatch):
    pytest.importorskip("math_verify", reason="the math extra (math-verify) is not installed")
    utils = _utils()
    doc = {"problem": "p", "solution": "so $x = \\boxed{\\frac{1}{2}}$", "answer": "\\frac{1}{2}"}
    assert utils.math_verify_results(doc, ["The answer is $\\frac{2}{4}$"]) == {"math_verify": 1.0, "exact_match": 0}
    assert utils.math_verify_results(doc, ["$0.5$"]) == {"math_verify": 1.0, "exact_match": 1}
    assert utils.math_verify_results(doc, ["$\\frac{1}{3}$"]) == {"math_verify": 0.0, "exact_match": 0}
    import importlib.util as found

    real = found.find_spec
    monkeypatch.setattr(found, "find_spec", lambda name, *a: None if name == "math_verify" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install 'superfilter\\[math\\]'"):
        _cfg(LmEvalTask("math500_verify_local")).validate()


@pytest.mark.slow
def test_math500_verify_local_runs_in_the_stage(tiny_train_folder, tmp_path):
    pytest.importorskip("math_verify", reason="the math extra (math-verify) is not installed")
    cfg = _cfg(LmEvalTask("math500_verify_local", limit=2, gen_kwargs={"max_gen_toks": 8}))
    result = _stage(tiny_train_folder, cfg, tmp_path / "eval" / "m.partial")["lm_eval"]["math500_verify_local"]
    assert result["metric"] == "math_verify,none" and result["n"] == 2


def test_chat_messages_render_in_the_training_template_exactly_as_training_does():
    from eval.harness import render_chat
    from superfilter.prompts import VICUNA_SYSTEM, generation_prompt

    tokenizer = type("Tokenizer", (), {"eos_token": "</s>"})()
    shots = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    question = [{"role": "user", "content": "Q2"}]
    assert render_chat(question, True, "vicuna_v1.1", tokenizer) == f"{VICUNA_SYSTEM} USER: Q2 ASSISTANT:"
    assert render_chat([{"role": "system", "content": "Be brief."}, *shots, *question], True, "vicuna_v1.1",
                       tokenizer) == "Be brief. USER: Q1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"
    # A final assistant message (lm-eval's gen_prefix) is continued, with the template's separator and no EOS.
    assert render_chat([*question, {"role": "assistant", "content": "The answer is"}], False, "vicuna_v1.1",
                       tokenizer) == f"{VICUNA_SYSTEM} USER: Q2 ASSISTANT: The answer is"
    assert render_chat(question, True, "alpaca", tokenizer) == generation_prompt("Q2", "alpaca", tokenizer)
    with pytest.raises(ConfigError, match="multi-turn"):  # fewshot_as_multiturn needs a multi-turn template
        render_chat([*shots, *question], True, "alpaca", tokenizer)
    with pytest.raises(ConfigError, match="cannot be rendered in the vicuna_v1.1 template"):
        render_chat([{"role": "assistant", "content": "A"}], True, "vicuna_v1.1", tokenizer)


@pytest.mark.slow
def test_apply_chat_template_renders_lm_eval_prompts_in_the_training_template(tiny_train_folder, tmp_path,
                                                                              monkeypatch):
    from eval import harness

    rendered = []
    real = harness.render_chat
    monkeypatch.setattr(harness, "render_chat", lambda *args: rendered.append(real(*args)) or rendered[-1])
    cfg = _cfg(LmEvalTask("gsm8k_local", num_fewshot=1, limit=1, apply_chat_template=True,
                          gen_kwargs={"max_gen_toks": 4}))
    out = tmp_path / "eval" / "t.partial"
    _stage(tiny_train_folder, cfg, out)
    (entry,) = json.loads((out / "eval" / "lm_eval.json").read_text())["tasks"]
    assert entry["prompt_format"] == "alpaca"  # what the tiny model was trained with
    assert rendered and all(r.startswith("Below is an instruction") and r.endswith("### Response:") for r in rendered)
    assert "Question:" in rendered[-1]


def test_the_code_execution_gate_is_open_exactly_while_allowed_lm_eval_runs(monkeypatch):
    import lm_eval

    from eval import harness

    seen = []
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: seen.append(
        (os.environ.get(harness.CODE_EVAL_GATE), kwargs["confirm_run_unsafe_code"])) or {})
    monkeypatch.setenv(harness.CODE_EVAL_GATE, "1")  # set by the user's shell: not an opt-in
    harness.evaluate(None, ["humaneval"], None)
    assert os.environ[harness.CODE_EVAL_GATE] == "1"  # restored afterwards
    monkeypatch.delenv(harness.CODE_EVAL_GATE)
    harness.evaluate(None, ["humaneval"], None, allow_code_execution=True)
    assert harness.CODE_EVAL_GATE not in os.environ
    assert seen == [(None, False), ("1", True)]


class GatedCodeEval:
    """Stands in for HF evaluate's Hub-hosted `code_eval` metric (unreachable offline), with its gate: it refuses to
    run anything unless HF_ALLOW_CODE_EVAL=1, then runs each candidate with its test in a subprocess."""

    def compute(self, references, predictions, k):
        if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
            raise ValueError("code_eval: set HF_ALLOW_CODE_EVAL=1 to run untrusted code")
        passed = []
        for test, candidates in zip(references, predictions, strict=True):
            done = subprocess.run([sys.executable, "-c", f"{candidates[0]}\n{test}\n"], capture_output=True,
                                  timeout=10, env={"PATH": os.environ.get("PATH", "")})
            passed.append(done.returncode == 0)
        return {f"pass@{k[0]}": sum(passed) / len(passed)}, {}


@pytest.mark.slow
def test_lm_evals_own_humaneval_runs_once_execution_is_allowed(tiny_train_folder, tmp_path, monkeypatch):
    """lm-eval's `humaneval` task (its YAML and utils, which load code_eval when the task loads) runs in the stage:
    the project opens HF_ALLOW_CODE_EVAL for it. Data: the shipped HumanEval slice, served as the Hub dataset."""
    import gzip

    import datasets
    import evaluate

    with gzip.open(PROJECT / "data" / "eval" / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda path=None, name=None, **kw: datasets.DatasetDict(
        {"test": datasets.Dataset.from_list(rows)}) if path == "openai/openai_humaneval" else real(path, name, **kw))
    monkeypatch.setattr(evaluate, "load", lambda name, *a, **kw: GatedCodeEval())
    monkeypatch.setattr("eval.harness.hub_reachable", lambda timeout_s=3.0: True)
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    cfg = _cfg(LmEvalTask("humaneval", limit=2, gen_kwargs={"max_gen_toks": 8}), allow_code_execution=True)
    result = _stage(tiny_train_folder, cfg, tmp_path / "eval" / "h.partial")["lm_eval"]["humaneval"]
    assert result["metric"] == "pass@1,create_test" and result["value"] == 0.0 and result["n"] == 2
    assert "HF_ALLOW_CODE_EVAL" not in os.environ


def _preset_tasks() -> dict[str, list[str]]:
    """Every lm-eval task named by a conf preset (eval groups and experiments): file → task names."""
    import yaml

    found: dict[str, list[str]] = {}
    presets = [*(PROJECT / "conf" / "eval").glob("*.yaml"), *(PROJECT / "conf" / "experiment").rglob("*.yaml")]
    for path in sorted(presets):
        data = yaml.safe_load(path.read_text()) or {}
        section = (data.get("eval") or {}).get("lm_eval") or data.get("lm_eval") or {}
        tasks = [entry["task"] for entry in section.get("tasks") or []]
        if tasks:
            found[str(path.relative_to(PROJECT))] = tasks
    return found


def test_the_presets_name_lm_eval_tasks():
    expected = {"conf/eval/lm_eval.yaml", "conf/experiment/bench/math.yaml", "conf/experiment/bench/medical.yaml"}
    assert expected <= set(_preset_tasks())


@pytest.mark.slow
def test_every_lm_eval_task_a_preset_names_exists_in_the_installed_lm_eval():
    """pyproject pins lm-eval to a release with all of them; the open_llm suite's Hub tasks are checked too."""
    from eval.harness import HUB_TASKS, known_tasks, version
    from eval.open_llm_tasks import BENCHMARKS

    known = set(known_tasks())
    named = {**_preset_tasks(), "eval/open_llm_tasks.py": [b.hub_task for b in BENCHMARKS.values()]}
    missing = {path: [t for t in tasks if not (suite.is_local(t) or t in HUB_TASKS or t in known)]
               for path, tasks in named.items()}
    assert {path: tasks for path, tasks in missing.items() if tasks} == {}, f"lm-eval {version()}"
