"""lm-evaluation-harness plumbing shared by the lm_eval and open_llm suites: local tasks, the model, one evaluation."""

from __future__ import annotations

import contextlib
import copy
import gzip
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from eval.lm import forward_tail
from superfilter.artifacts import write_jsonl
from superfilter.data import Example
from superfilter.errors import ConfigError, DataError
from superfilter.prompts import generation_prompt, render

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
TASKS_FOLDER = "lm_eval_tasks"  # rendered into <stage>/eval/: the YAMLs, utils.py and data/ they read
CONTINUATION_CHUNK = 16
# lm-eval's own seeds (its CLI defaults), so a rerun with its CLI draws the same few-shot examples.
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
# Tasks that execute model-written code: lm-eval runs them only with confirm_run_unsafe_code.
CODE_TASK_PREFIXES = ("humaneval", "mbpp", "ds1000", "livecodebench", "bigcodebench")
# HF evaluate's `code_eval` metric (lm-eval's humaneval/mbpp) executes programs only when this variable is "1".
CODE_EVAL_GATE = "HF_ALLOW_CODE_EVAL"


def is_code_task(name: str) -> bool:
    return name.startswith(CODE_TASK_PREFIXES)


def _read_jsonl(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """JSON lines (.jsonl or .jsonl.gz), each checked for the fields the task reads."""
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not JSON: {e}") from e
            missing = [k for k in fields if not isinstance(record.get(k), str)]
            if missing:
                raise DataError(f"{path}:{number}: missing string field(s) {missing}")
            records.append({k: record[k] for k in fields})
    return records


@dataclass(frozen=True)
class LocalTask:
    """A task YAML in eval/lm_eval_tasks/ over files under eval.lm_eval.data_dir, and the Hub tasks it replaces."""

    name: str
    files: dict[str, tuple[str, tuple[str, ...]]]  # written data/<file> → (source under data_dir, fields kept)
    stands_for: tuple[str, ...] = ()  # lm-eval task names it runs in place of when the Hub is unreachable

    def missing(self, data_dir: Path) -> list[Path]:
        return [data_dir / source for source, _ in self.files.values() if not (data_dir / source).is_file()]

    def write(self, data_dir: Path, out_dir: Path) -> None:
        for written, (source, fields) in self.files.items():
            write_jsonl(out_dir / "data" / written, _read_jsonl(data_dir / source, fields))
        shutil.copy(TASK_DIR / f"{self.name}.yaml", out_dir / f"{self.name}.yaml")


LOCAL_TASKS = {t.name: t for t in (
    LocalTask("gsm8k_local", {"gsm8k_train.jsonl": ("gsm8k/train.jsonl", ("question", "answer")),
                              "gsm8k_test.jsonl": ("gsm8k/test.jsonl", ("question", "answer"))}, ("gsm8k",)),
    LocalTask("hendrycks_math500_local", {"math500_test.jsonl": ("math500/test.jsonl", ("problem", "solution"))},
              ("hendrycks_math500",)),
    LocalTask("math500_verify_local", {"math500_test.jsonl": ("math500/test.jsonl", ("problem", "solution"))}),
    LocalTask("humaneval_local", {"humaneval_test.jsonl": (
        "humaneval/HumanEval.jsonl.gz", ("task_id", "prompt", "test", "entry_point"))}, ("humaneval",)),
)}
# Task YAMLs of ours over Hub datasets (no lm-eval task exists): rendered into the artifact like the local ones.
HUB_TASKS = ("fiqa_sa",)


def render_hub_tasks(names: Sequence[str], out_dir: Path) -> None:
    start_task_folder(out_dir)
    for name in names:
        shutil.copy(TASK_DIR / f"{name}.yaml", out_dir / f"{name}.yaml")


def start_task_folder(out_dir: Path) -> Path:
    """<out_dir>/lm_eval_tasks with the helpers every local YAML names (`!function utils.*`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASK_DIR / "utils.py", out_dir / "utils.py")
    return out_dir


def render_local_tasks(names: Sequence[str], data_dir: Path, out_dir: Path) -> None:
    """Copy each local task's YAML and its data (normalised JSON lines) into out_dir; paths stay relative to it."""
    start_task_folder(out_dir)
    for name in names:
        task = LOCAL_TASKS[name]
        missing = task.missing(data_dir)
        if missing:
            raise DataError(f"{name}: no {', '.join(map(str, missing))} (set eval.lm_eval.data_dir to a folder "
                            "with the releases' layout, e.g. gsm8k/test.jsonl)")
        task.write(data_dir, out_dir)


class FunctionTag(str):
    """A `!function utils.x` value of a task YAML, kept as written when the YAML is read and written back."""


class TaskLoader(yaml.SafeLoader):
    pass


class TaskDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # a task file spells every value out, as it was written
        return True


TaskLoader.add_constructor("!function", lambda loader, node: FunctionTag(loader.construct_scalar(node)))
TaskDumper.add_representer(FunctionTag, lambda dumper, value: dumper.represent_scalar("!function", str(value)))
PINNED_BY = "the superfilter eval stage"
PINNED_KEYS = ("generation_kwargs", "num_fewshot")


def pin_task(folder: Path, task: str, gen_kwargs: dict[str, Any], max_gen_toks: int,
             num_fewshot: int | None) -> str | None:
    """Write the settings one run of `task` used into its rendered YAML (generation_kwargs with the entry's own and
    the model's max_gen_toks; num_fewshot when the entry set it), so `lm_eval --include_path <folder> --tasks
    <name>` generates the same text. The name to rerun: the task's, or `<task>_<n>` when another entry already
    pinned the task with other settings; None when the task has no YAML in the folder (an lm-eval task). A group is
    not rewritten: its rerun gives `--num_fewshot` the entry's shots, which lm-eval applies to each of its tasks."""
    path = folder / f"{task}.yaml"
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    header = "".join(line + "\n" for line in itertools.takewhile(lambda x: x.startswith("#"), text.splitlines()))
    config = yaml.load(text, Loader=TaskLoader)
    if "group" in config:  # its tasks' files are shared by every entry: `--num_fewshot N` sets all their shots
        return task
    meta = config.get("metadata") or {}
    pinned = meta.get("pinned_by") == PINNED_BY
    shipped = meta["as_shipped"] if pinned else copy.deepcopy({k: config[k] for k in PINNED_KEYS if k in config})
    settings = dict(shipped)
    if config.get("output_type") == "generate_until":
        settings["generation_kwargs"] = {**shipped.get("generation_kwargs", {}), **gen_kwargs}
        settings["generation_kwargs"].setdefault("max_gen_toks", max_gen_toks)
    if num_fewshot is not None:
        settings["num_fewshot"] = num_fewshot
    if pinned:
        if all(config.get(k) == v for k, v in settings.items()):
            return task
        n = 1
        while (folder / f"{task}_{n}.yaml").exists():
            n += 1
        task, path = f"{task}_{n}", folder / f"{task}_{n}.yaml"
        config["task"] = task
    config.update(settings)
    config["metadata"] = {**meta, "pinned_by": PINNED_BY, "as_shipped": shipped}
    path.write_text(header + yaml.dump(config, Dumper=TaskDumper, sort_keys=False, allow_unicode=True),
                    encoding="utf-8")
    return task


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether Hub datasets can be fetched: never when an offline flag is set, else a quick HEAD request."""
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    # deferred: the HTTP client loads only when a request is made
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        return httpx.head(f"{endpoint}/api/datasets/allenai/ai2_arc", timeout=timeout_s).status_code < 500
    except httpx.HTTPError:
        return False


def prefix_sharing_lm(model: Any, tokenizer: Any, device: str, batch_size: int) -> Any:
    """lm-eval's HFLM, but each distinct context is run once.

    Multiple-choice tasks score several continuations of one context (HellaSwag's 4 endings, TruthfulQA's ~10
    answers, MMLU's 4 letters). Here the context runs once, its keys/values are reused for every continuation, and
    only positions that score a token go through the LM head (Gemma's is 262k wide). Tokenization, truncation
    and the (log-probability, is-greedy) answers are lm-eval's; requests that need truncation use lm-eval's path.
    """
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    import torch
    from lm_eval.models.huggingface import HFLM

    class PrefixSharingHFLM(HFLM):
        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
            results: list[Any] = [None] * len(requests)
            groups: dict[tuple[int, ...], list[int]] = {}
            plain: list[int] = []
            for i, (_, context, continuation) in enumerate(requests):
                fits = context and continuation and len(context) + len(continuation) <= self.max_length + 1
                (groups.setdefault(tuple(context), []) if fits else plain).append(i)
            if plain:
                answers = super()._loglikelihood_tokens([requests[i] for i in plain], disable_tqdm, override_bs)
                for i, answer in zip(plain, answers, strict=True):
                    results[i] = answer
            for context, members in tqdm(groups.items(), disable=disable_tqdm, desc="contexts"):
                answers = self._score_continuations(list(context), [requests[i][2] for i in members])
                for i, answer in zip(members, answers, strict=True):
                    results[i] = answer
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            return results

        def _score_continuations(self, context: list[int], continuations: list[list[int]]) -> list[tuple]:
            with torch.no_grad():
                first, past = forward_tail(self.model, [context])  # predicts every continuation's first token
                first = first[0, -1]
                answers: list[tuple[float, bool]] = []
                # One pass per chunk of continuations reads the weights once; the chunk bounds the memory of its
                # log-probabilities (chunk × longest continuation × vocabulary floats).
                for start in range(0, len(continuations), CONTINUATION_CHUNK):
                    chunk = continuations[start : start + CONTINUATION_CHUNK]
                    width = max(len(c) for c in chunk) - 1
                    rest = None
                    if width:
                        # Right-padded: under causal attention a real token never sees the padding after it.
                        cache = copy.deepcopy(past)
                        cache.batch_repeat_interleave(len(chunk))
                        ids = [c[:-1] + [c[-1]] * (width - len(c) + 1) for c in chunk]
                        rest, _ = forward_tail(self.model, ids, cache, width)
                    for j, cont in enumerate(chunk):
                        scored = [first] + [rest[j, t] for t in range(len(cont) - 1)]
                        logprob = sum(float(lp[tok]) for lp, tok in zip(scored, cont, strict=True))
                        greedy = all(int(lp.argmax()) == tok for lp, tok in zip(scored, cont, strict=True))
                        answers.append((logprob, greedy))
                return answers

    return PrefixSharingHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)


def make_lm(model: Any, tokenizer: Any, device: str, batch_size: int, share_prefix: bool = True,
            template: str = "chat") -> Any:
    """lm-eval's model over the in-memory model; `template` is what apply_chat_template renders prompts with: the
    tokenizer's own chat template ("chat") or the model's training template (alpaca, vicuna_v1.1)."""
    # deferred: lm-eval takes seconds to import; loaded only when a benchmark runs
    from lm_eval.models.huggingface import HFLM

    if share_prefix:
        lm = prefix_sharing_lm(model, tokenizer, device, batch_size)
    else:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    if template != "chat":
        # lm-eval calls these two on the instance: rendering, and the template it records in its results.
        lm.apply_chat_template = lambda history, add_generation_prompt=True: render_chat(
            history, add_generation_prompt, template, tokenizer)
        lm.chat_template = lambda chat_template=False: f"superfilter training template {template}"
    return lm


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool, template: str, tokenizer: Any) -> str:
    """lm-eval's chat messages (an optional system message, alternating user/assistant turns) in a training template
    of superfilter.prompts, exactly as training renders them; a final assistant message is continued, not closed."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else list(messages)
    reply = turns.pop()["content"] if turns and turns[-1]["role"] == "assistant" else None
    roles = [m["role"] for m in turns]
    if not turns or roles != ["user", "assistant"] * (len(turns) // 2) + ["user"]:
        raise ConfigError(f"lm-eval chat messages in roles {roles} cannot be rendered in the {template} template")
    history = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    user = turns[-1]["content"]
    if reply is None or add_generation_prompt:
        return generation_prompt(user, template, tokenizer, history=history, system=system)
    text = "".join(s.text for s in render(Example.create(user, "", reply, history, system), template, tokenizer))
    eos = getattr(tokenizer, "eos_token", None) or ""
    return text[: -len(eos)] if eos and text.endswith(eos) else text


@contextlib.contextmanager
def code_execution(allowed: bool) -> Iterator[None]:
    """HF_ALLOW_CODE_EVAL=1 while lm-eval runs, when and only when execution was allowed; restored afterwards."""
    before = os.environ.get(CODE_EVAL_GATE)
    if allowed:
        os.environ[CODE_EVAL_GATE] = "1"
    else:
        os.environ.pop(CODE_EVAL_GATE, None)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CODE_EVAL_GATE, None)
        else:
            os.environ[CODE_EVAL_GATE] = before


def evaluate(lm: Any, tasks: list[str], manager: Any, num_fewshot: int | None = None, limit: int = 0,
             apply_chat_template: bool = False, fewshot_as_multiturn: bool = False,
             gen_kwargs: dict[str, Any] | None = None, allow_code_execution: bool = False,
             log_samples: bool = False) -> dict[str, Any]:
    """One lm-eval `simple_evaluate` call with the project's fixed seeds and code-execution gate; log_samples keeps
    result["samples"] (per document: its metrics, prompts and answers)."""
    # deferred: lm-eval takes seconds to import; loaded only when a benchmark runs
    from lm_eval import simple_evaluate

    # lm-eval's humaneval/mbpp run HF evaluate's code_eval, which executes nothing unless the gate is open; the
    # task files import it when loaded, inside this call.
    with code_execution(allow_code_execution):
        return simple_evaluate(
            model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit or None, task_manager=manager,
            log_samples=log_samples, bootstrap_iters=1000, apply_chat_template=apply_chat_template,
            fewshot_as_multiturn=fewshot_as_multiturn, gen_kwargs=dict(gen_kwargs) if gen_kwargs else None,
            confirm_run_unsafe_code=allow_code_execution, **SEEDS)


def version(package: str = "lm_eval") -> str:
    try:
        return installed(package.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def known_tasks(include_path: Path | None = None) -> list[str]:
    """Every task, group and tag name lm-eval knows (indexing its task folders takes a few seconds)."""
    # deferred: lm-eval takes seconds to import; loaded only when a benchmark runs
    from lm_eval.tasks import TaskManager

    return list(TaskManager(include_path=str(include_path) if include_path else None).all_tasks)
