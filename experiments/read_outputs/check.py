"""Read a finished run's outputs with the tools a user reaches for, and say what each one shows.

    python experiments/read_outputs/check.py outputs/<date>/<time> [--out experiments/read_outputs/default_run.md]

RUN is the run's output folder (the one holding run_summary.json). Each check runs the tool itself, from the command
line where it has one: `wandb sync --dry-run` on the offline runs (and their names, groups, tags and lineage
artifacts read from the run files), `datasets.load_dataset` on the select folder, pandas on subset.jsonl,
`superfilter inspect` on scores.parquet and subset.jsonl, plain peft (the adapter on its base vs model/), and the
lm_eval command line on model/ with the task files the eval stage rendered, against the stage's own numbers.
A check that fails is reported as failed and the script exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from superfilter.contracts import ADAPTER_DIR, EVAL_DIR, MODEL_DIR, MODEL_INFO_FILE, SCORES_FILE, SUBSET_FILE
from superfilter.runs import read_run_summary
from superfilter.runtime import choose_dtype
from superfilter.tracking import offline_run

PROMPTS = ["Give three tips for staying healthy.", "What is the capital of France?",
           "Write a haiku about the sea."]


def shell(command: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
          stderr: bool = True) -> str:
    """The command's output (stdout, then stderr unless `stderr` is False); a failure raises with its stderr."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode:
        raise RuntimeError(f"`{' '.join(command)}` exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout + (done.stderr if stderr else "")


class Run:
    """The stage folders of one finished run."""

    def __init__(self, folder: Path) -> None:
        self.summary = read_run_summary(folder)
        self.stages = {name: stage.path for name, stage in self.summary.stages.items()}
        self.root = self.stages["prepare"].parent.parent


def check_wandb(run: Run) -> list[str]:
    out = shell(["wandb", "sync", "--dry-run"], cwd=run.root / "wandb")
    files = sorted((run.root / "wandb").rglob("offline-run-*/run-*.wandb"))
    lines = ["```", f"$ cd {run.root.name}/wandb && wandb sync --dry-run", *out.strip().splitlines()[-12:], "```", "",
             "| run name | job_type | group | tags | uses | logs | logged |", "|---|---|---|---|---|---|---|"]
    for file in files:
        r = offline_run(file)
        if not r["exited"]:
            raise RuntimeError(f"{file}: the run never finished")
        used = ", ".join(a["name"] for a in r["used"]) or "–"
        logged = ", ".join(a["name"] for a in r["logged"]) or "–"
        keys = sorted({k.split("/")[0] for k in r["history"] if not k.startswith("_")})
        lines.append(f"| {r['name']} | {r['job_type']} | {r['group']} | {', '.join(r['tags'])} | {used} | {logged} "
                     f"| {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''} |")
    return lines


def check_datasets(run: Run) -> list[str]:
    # deferred: datasets and pandas load only for this check
    import datasets
    import pandas as pd

    select = run.stages["select"]
    subset = datasets.load_dataset(str(select), split="train")
    frame = pd.read_json(select / SUBSET_FILE, lines=True)
    types = {name: str(feature.dtype if hasattr(feature, "dtype") else feature) for name, feature in
             subset.features.items()}
    return ["```python", f'datasets.load_dataset("{select.parent.name}/{select.name}", split="train")', "```",
            f"{subset.num_rows} rows; columns and types: "
            + ", ".join(f"`{k}`: {v}" for k, v in types.items()), "",
            "```python", f'pd.read_json("{select.parent.name}/{select.name}/{SUBSET_FILE}", lines=True)', "```",
            f"{len(frame)} rows × {len(frame.columns)} columns; `skip_reason.isna()`: "
            f"{int(frame.skip_reason.isna().sum())} of {len(frame)}; IFD of the chosen records: "
            f"{frame.ifd.min():.3f} – {frame.ifd.max():.3f}"]


def check_inspect(run: Run) -> list[str]:
    lines = []
    for path in (run.stages["score"] / SCORES_FILE, run.stages["select"] / SUBSET_FILE):
        out = shell([sys.executable, "-m", "superfilter", "inspect", str(path), "--top", "3"])
        lines += ["```", f"$ superfilter inspect {path.parent.parent.name}/{path.parent.name}/{path.name} --top 3",
                  *out.strip().splitlines()[:24], "```", ""]
    return lines


def check_peft(run: Run) -> list[str]:
    # deferred: torch, transformers and peft load only for this check
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train = run.stages["train"]
    adapter = PeftConfig.from_pretrained(str(train / ADAPTER_DIR))
    name = json.loads((train / ADAPTER_DIR / MODEL_INFO_FILE).read_text())["base_model_spec"]["name"]
    base_dir = shell([sys.executable, "-m", "superfilter", "models", name], stderr=False).strip().split("\t")[-1]
    tokenizer = AutoTokenizer.from_pretrained(str(train / MODEL_DIR))
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(train / MODEL_DIR), dtype=torch.float32)(**batch).logits
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, str(train / ADAPTER_DIR))(**batch).logits
    mask = batch["attention_mask"].bool()
    delta = (merged - tuned).abs()[mask].max().item()
    return ["```python",
            f"base = AutoModelForCausalLM.from_pretrained(\"<the folder `superfilter models {name}` prints>\")",
            f'PeftModel.from_pretrained(base, "{train.parent.name}/{train.name}/adapter")  # vs model/, fp32',
            "```", f"adapter_config.json's base model: `{adapter.base_model_name_or_path}`; "
            f"{len(PROMPTS)} prompts, {int(mask.sum())} positions: max |Δlogit| adapter-on-base vs model/ = "
            f"{delta:.2e}"]


def check_lm_eval(run: Run) -> list[str]:
    # deferred: torch loads only for the checks that need it
    import torch

    evaluation = run.stages["eval"]
    model = run.stages["train"] / MODEL_DIR
    entries = json.loads((evaluation / EVAL_DIR / "lm_eval.json").read_text())["tasks"]
    # The dtype the stage evaluated in (dtype=auto on this machine): bf16 and fp32 logits can order two answers apart.
    dtype = str(choose_dtype("auto", torch.device("cpu")).dtype).removeprefix("torch.")
    lines = ["| task | limit | stage's value | lm_eval CLI | equal |", "|---|---|---|---|---|"]
    for entry in entries:
        metric = entry["headline"]["metric"]
        with tempfile.TemporaryDirectory() as tmp:
            command = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model},dtype={dtype}",
                       "--include_path", str(evaluation / EVAL_DIR / "lm_eval_tasks"), "--tasks", entry["rerun_task"],
                       "--device", "cpu", "--batch_size", "1", "--output_path", tmp]
            command += ["--limit", str(entry["limit"])] if entry["limit"] else []
            command += ["--num_fewshot", str(entry["num_fewshot"])] if entry["num_fewshot"] is not None else []
            command += ["--apply_chat_template"] if entry["apply_chat_template"] else []
            command += ["--fewshot_as_multiturn"] if entry["fewshot_as_multiturn"] else []
            shell(command, env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
            result = json.loads(next(Path(tmp).rglob("results_*.json")).read_text())
            shown = " ".join(command).replace(tmp, "<tmp>")
        ours = entry["headline"]["value"]
        block = result.get("groups", {}).get(entry["rerun_task"]) or result["results"][entry["rerun_task"]]
        theirs = block[metric]
        lines.append(f"| {entry['rerun_task']} | {entry['limit']} | {metric} {ours:.4f} | {theirs:.4f} "
                     f"| {'yes' if abs(ours - theirs) < 1e-9 else 'no'} |")
        lines[:0] = [f"`{shown}`", ""]
    return lines


CHECKS: dict[str, Callable[[Run], list[str]]] = {
    "W&B": check_wandb, "datasets and pandas": check_datasets, "superfilter inspect": check_inspect,
    "peft": check_peft, "lm_eval command line": check_lm_eval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run's output folder (holding run_summary.json)")
    parser.add_argument("--out", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    run = Run(args.run)
    text, failed = [f"# What the tools show on `{args.run}`", ""], []
    for name, check in CHECKS.items():
        try:
            body = check(run)
        except Exception as error:  # noqa: BLE001 - every failure is reported, and the exit status says so
            failed.append(name)
            body = [f"**failed**: {type(error).__name__}: {error}"]
        text += [f"## {name}", "", *body, ""]
    print("\n".join(text))
    if args.out:
        args.out.write_text("\n".join(text))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
