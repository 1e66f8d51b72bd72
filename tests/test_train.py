"""The train stage on a tiny LLaMA (CPU): labels, packing, learning, LoRA, kill-and-resume, two gloo processes."""

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
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from superfilter.contracts import MODEL_INFO_FILE
from superfilter.data import Example, write_examples
from superfilter.errors import ConfigError, DataError
from superfilter.models import ModelConfig, build_tiny_tokenizer, load_model, resolve_model_dir
from superfilter.prompts import generation_prompt, render
from superfilter.runtime import RuntimeConfig
from superfilter.tokenized import IGNORE, encode
from superfilter.tracking import StageRun
from train.batches import plan
from train.collate import collate, encode_all, pack_batch, pad_batch
from train.config import TrainConfig
from train.loss import token_loss_sum
from train.optim import lr_factor
from train.stage import own_process, train_stage

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig()  # tiny random LLaMA whose tokenizer adds BOS, like Gemma
CPU = RuntimeConfig(device="cpu")
NO_TRACKING = StageRun(None, "train")


def records(n: int) -> list[Example]:
    return [Example.create(f"Count to {i} in words.", "" if i % 3 else f"start at {i % 5}",
                           f"Here is the count up to {i}: " + " ".join(["one", "two", "three"] * (1 + i % 4)))
            for i in range(n)]


MULTI_TURN = Example.create("And the capital of Spain?", "", "Madrid.",
                            history=[("What is the capital of France?", "Paris.")])


def subset_file(tmp_path: Path, examples: list[Example]) -> Path:
    path = tmp_path / "subset.jsonl"
    write_examples(examples, path)
    return path


def stage(tmp_path: Path, examples: list[Example], cfg: TrainConfig, name: str = "out",
          runtime: RuntimeConfig = CPU) -> tuple[dict, Path]:
    out = tmp_path / name
    out.mkdir()
    return train_stage(subset_file(tmp_path, examples), TINY, cfg, 0, runtime, out, NO_TRACKING), out


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(adds_bos=True)


@pytest.fixture(scope="module")
def tiny_model():
    model, _ = load_model(TINY, "cpu")
    return model


def runs(enc) -> list[tuple[bool, list[int]]]:
    """Consecutive (trainable, token ids) runs of an encoded record."""
    out: list[tuple[bool, list[int]]] = []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        assert label in (IGNORE, token)
        if out and out[-1][0] == (label != IGNORE):
            out[-1][1].append(token)
        else:
            out.append((label != IGNORE, [token]))
    return out


def segment_runs(segments) -> list[tuple[bool, str]]:
    out: list[tuple[bool, str]] = []
    for s in segments:
        if out and out[-1][0] == s.trainable:
            out[-1] = (s.trainable, out[-1][1] + s.text)
        else:
            out.append((s.trainable, s.text))
    return out


@pytest.mark.parametrize("template", ["alpaca", "vicuna_v1.1", "chat"])
def test_labels_are_ignored_exactly_on_prompt_tokens(tokenizer, template):
    examples = [records(3)[1], records(3)[0]] + ([MULTI_TURN] if template != "alpaca" else [])
    for ex in examples:
        enc = encode(ex, template, tokenizer)
        decoded = [(trainable, tokenizer.decode(ids)) for trainable, ids in runs(enc)]
        expected = segment_runs(render(ex, template, tokenizer))
        if template != "chat":  # the tokenizer adds BOS; the chat template writes it itself
            expected[0] = (False, tokenizer.bos_token + expected[0][1])
        assert decoded == expected
        assert sum(trainable for trainable, _ in decoded) == len(ex.history) + 1  # every assistant turn trains
        # The prompt tokens are exactly what generation tokenises at evaluation.
        prompt = generation_prompt(ex.instruction, template, tokenizer, ex.history, ex.system, ex.input)
        n_prompt = enc.labels.index(next(x for x in enc.labels if x != IGNORE))
        if not ex.history:
            assert list(enc.input_ids[:n_prompt]) == tokenizer(prompt, add_special_tokens=template != "chat")[
                "input_ids"]


def test_length_policy_is_counted(tokenizer):
    short, long_reply = records(2)[1], Example.create("Say a lot.", "", "word " * 400)
    long_prompt = Example.create("Read this: " + "text " * 400, "", "ok")
    empty = Example.create("Say nothing.", "", "")
    kept, report = encode_all([short, long_reply, long_prompt, empty, MULTI_TURN], "alpaca", tokenizer, 128,
                              "truncate")
    assert [e.id for e in kept] == [short.id, long_reply.id]
    assert max(e.n_tokens for e in kept) == 128
    assert (report.n_truncated, report.n_dropped_prompt_too_long, report.n_dropped_empty_output,
            report.n_dropped_multi_turn) == (1, 1, 1, 1)
    kept, report = encode_all([short, long_reply, long_prompt], "alpaca", tokenizer, 128, "drop")
    assert [e.id for e in kept] == [short.id] and report.n_dropped_too_long == 2
    assert report.n_records == report.n_kept + report.n_dropped_too_long


@pytest.mark.parametrize("pad_id", [0, 7])
def test_packing_equals_padding_without_cross_attention(tokenizer, tiny_model, pad_id):
    encoded, _ = encode_all(records(5), "alpaca", tokenizer, 512, "truncate")
    with torch.no_grad():
        padded = token_loss_sum(tiny_model, pad_batch(encoded, pad_id))
        packed = token_loss_sum(tiny_model, pack_batch(encoded))
        alone = sum(token_loss_sum(tiny_model, pad_batch([e], pad_id)) for e in encoded)
    # A token attending across records, or a pad id leaking in, would change the loss.
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("packing", [True, False])
def test_rounding_the_length_up_leaves_the_loss_unchanged(tokenizer, tiny_model, packing):
    encoded, _ = encode_all(records(3), "alpaca", tokenizer, 512, "truncate")
    exact, rounded = collate(encoded, packing, 7), collate(encoded, packing, 7, multiple=64)
    assert rounded.input_ids.size(1) % 64 == 0 and rounded.input_ids.size(1) > exact.input_ids.size(1)
    assert (rounded.n_tokens, rounded.n_trainable) == (exact.n_tokens, exact.n_trainable)
    assert rounded.n_slots == rounded.input_ids.numel()
    assert torch.equal(rounded.keep, exact.keep)  # no target on the padding
    with torch.no_grad():
        torch.testing.assert_close(token_loss_sum(tiny_model, rounded), token_loss_sum(tiny_model, exact),
                                   rtol=1e-5, atol=1e-4)


def test_plan_sees_each_record_once_per_epoch():
    steps = plan(10, 4, 7, seed=3)
    assert [len(s.records) for s in steps] == [4, 4, 2, 4, 4, 2, 4]
    for epoch in (0, 1):
        seen = [i for s in steps if s.epoch == epoch for i in s.records]
        assert sorted(seen) == list(range(10))
    assert plan(10, 4, 7, seed=3) == steps and plan(10, 4, 7, seed=4) != steps


def test_lr_schedule_never_wastes_the_first_step():
    factors = [lr_factor(s, 1, 10, "cosine") for s in range(10)]
    assert factors[0] == 0.5 and factors[1] == 1.0 and 0 < factors[-1] < 0.05
    assert factors[1:] == sorted(factors[1:], reverse=True)
    assert [lr_factor(s, 0, 2, "linear") for s in range(2)] == [1.0, 0.5]


def test_full_finetuning_loss_falls_and_writes_the_artifact(tmp_path):
    cfg = TrainConfig(method="full", lr=3e-3, epochs=12, batch_size=4, micro_batch_size=2, warmup_ratio=0.0,
                      save_steps=0, packing=True)
    metrics, out = stage(tmp_path, records(4), cfg)
    rows = metric_rows(out)
    assert len(rows) == metrics["n_steps"] == 12
    assert rows[-1]["loss"] < 0.7 * rows[0]["loss"]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "n_examples", "examples_seen"} <= set(rows[0])
    assert rows[-1]["examples_seen"] == 48
    # Each row says how long the run has taken and has left (from tokens): nothing left after the last step.
    assert all(r["elapsed_s"] > 0 and r["tokens_per_s_mean"] > 0 for r in rows)
    assert rows[-1]["remaining_s"] == 0 and rows[0]["remaining_s"] > 0
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "model") is not None
    info = json.loads((out / "model" / MODEL_INFO_FILE).read_text())
    assert info["template"] == "alpaca" and info["base_model"] == "tiny"
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "model" / "tokenizer.json").exists()
    assert not (out / "adapter").exists() and not (out / "checkpoints").exists()
    assert (out / "skipped.jsonl").read_text() == ""
    assert train_stage(out / "unused.jsonl", TINY, cfg, 0, CPU, out, NO_TRACKING) == metrics  # finished: no rerun
    assert json.loads((out / "train_config.json").read_text())["train"]["lr"] == 3e-3


def test_lora_changes_adapters_only(tmp_path, tiny_model):
    cfg = TrainConfig(method="lora", lr=1e-2, epochs=2, batch_size=4, micro_batch_size=4, save_steps=0)
    _, out = stage(tmp_path, records(4), cfg)
    base = {k: v for k, v in tiny_model.state_dict().items()}
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at zero
    merged = load_file(out / "model" / "model.safetensors")
    assert set(merged) == set(base)
    targeted = [k for k in base if any(t in k for t in ("q_proj", "v_proj", "down_proj"))]
    untouched = [k for k in base if "embed" in k or "norm" in k or "lm_head" in k]
    assert targeted and untouched
    assert all(not torch.equal(merged[k], base[k]) for k in targeted)
    assert all(torch.equal(merged[k], base[k]) for k in untouched)
    # The frozen base itself is unchanged: reloading it gives the original weights.
    reloaded, _ = load_model(TINY, "cpu")
    assert all(torch.equal(v, base[k]) for k, v in reloaded.state_dict().items())


def test_lora_adapter_loads_elsewhere_with_plain_peft(tmp_path, monkeypatch):
    import shutil

    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    cfg = TrainConfig(method="lora", lr=1e-2, max_steps=2, batch_size=4, micro_batch_size=4, save_steps=0)
    _, out = stage(tmp_path, records(4), cfg)
    moved = shutil.copytree(out / "adapter", tmp_path / "elsewhere" / "adapter")
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert PeftConfig.from_pretrained("adapter").base_model_name_or_path == TINY.path  # the spec, not a cache folder
    spec = ModelConfig(**json.loads((moved / MODEL_INFO_FILE).read_text())["base_model_spec"])
    assert spec == TINY
    base = AutoModelForCausalLM.from_pretrained(resolve_model_dir(spec))
    merged = PeftModel.from_pretrained(base, "adapter").merge_and_unload().state_dict()
    ours = load_file(out / "model" / "model.safetensors")
    assert set(ours) <= set(merged) and all(torch.allclose(merged[k], v) for k, v in ours.items())


KILLABLE = """
import sys, time
from pathlib import Path
import train.rank as rank
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun
from train.config import TrainConfig
from train.stage import train_stage

step = rank.train_step
def slow_step(*args, **kwargs):
    time.sleep(0.2)  # room for the parent to kill us mid-run
    return step(*args, **kwargs)
rank.train_step = slow_step
cfg = TrainConfig.from_dict(__import__("json").loads(sys.argv[3]))
train_stage(Path(sys.argv[1]), ModelConfig(), cfg, 0, RuntimeConfig(device="cpu"), Path(sys.argv[2]),
                StageRun(None, "train"))
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    from dataclasses import asdict

    # LoRA with dropout: the checkpoint holds only adapters, and the dropout RNG must be restored too.
    cfg = TrainConfig(method="lora", lr=1e-2, max_steps=10, batch_size=2, micro_batch_size=1, save_steps=2,
                      keep_checkpoints=2)
    subset = subset_file(tmp_path, records(6))
    out = tmp_path / "killed"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(subset), str(out), json.dumps(asdict(cfg))],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "checkpoints" / "step_000004" / "_COMPLETE"
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists()
    saved = [k for k in FileSystemReader(marker.parent).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert saved and all("lora_" in k for k in saved)  # a LoRA checkpoint holds the adapters only
    logged_before = {r["step"] for r in metric_rows(out)}
    assert 4 <= max(logged_before) < 10

    metrics = train_stage(subset, TINY, cfg, 0, CPU, out, NO_TRACKING)
    assert metrics["resumed_after_step"] >= 4 and metrics["n_steps"] == 10
    assert [r["step"] for r in metric_rows(out)] == list(range(1, 11))

    # Resuming restores weights, optimizer and schedule: the result equals a run that was never interrupted.
    _, clean = stage(tmp_path, records(6), replace(cfg, save_steps=0), name="clean")
    resumed, uninterrupted = (load_file(d / "model" / "model.safetensors") for d in (out, clean))
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_gloo_processes_see_each_record_once_per_epoch(tmp_path):
    # 9 records, batch 4: the last step of each epoch has one record, so one rank trains on none (weight 0).
    cfg = TrainConfig(method="full", lr=1e-3, epochs=2, batch_size=4, micro_batch_size=1, save_steps=0)
    examples = records(9)
    metrics, out = stage(tmp_path, examples, cfg, runtime=replace(CPU, num_processes=2))
    assert metrics["world_size"] == 2
    seen: dict[int, list[str]] = {0: [], 1: []}
    for rank in (0, 1):
        for line in (out / "samples" / f"rank{rank}.jsonl").read_text().splitlines():
            row = json.loads(line)
            seen[row["epoch"]] += [i for chunk in row["ids"] for i in chunk]
    for epoch_ids in seen.values():
        assert sorted(epoch_ids) == sorted(e.id for e in examples)
    # Same updates as one process: the loss is normalised over the global batch, not per rank.
    _, single = stage(tmp_path, examples, cfg, name="single")
    two, one = metric_rows(out), metric_rows(single)
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)


def test_bad_inputs_fail_clearly(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        train_stage(empty, TINY, TrainConfig(), 0, CPU, tmp_path, NO_TRACKING)
    with pytest.raises(ConfigError, match="chat_template=false"):
        train_stage(subset_file(tmp_path, records(2)), replace(TINY, chat_template=False),
                    TrainConfig(template="chat"), 0, CPU, tmp_path, NO_TRACKING)
    with pytest.raises(DataError, match="multi-turn"):
        train_stage(subset_file(tmp_path, [MULTI_TURN]), TINY, TrainConfig(template="alpaca"), 0, CPU, tmp_path,
                    NO_TRACKING)
    with pytest.raises(DataError, match="max_length"):
        train_stage(subset_file(tmp_path, records(2)), TINY, TrainConfig(max_length=8), 0, CPU, tmp_path,
                    NO_TRACKING)
    with pytest.raises(ConfigError, match="train.method"):
        TrainConfig(method="qlora").validate()


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "conf" / "train").glob("*.yaml")))
def test_train_presets_compose(preset):
    from hydra import compose, initialize_config_dir

    from superfilter.config import register_configs, to_config

    register_configs()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        config = to_config(compose("config", overrides=[f"train={preset}"]))
    assert config.train.name == preset


@pytest.mark.slow
def test_training_in_a_process_of_its_own_gives_the_same_model_and_metrics(tmp_path, monkeypatch):
    """runtime.train_process=own (what `auto` picks for every real model): `python -m train.rank` in a fresh
    process, its memory handed back when it ends; the model, the loss curve and the result are this process's.
    The stage folder is relative, as `artifact_root=artifacts` makes it, and the run starts outside the project."""
    from safetensors.torch import load_file

    cfg = TrainConfig(method="lora", lr=1e-2, max_steps=3, batch_size=4, micro_batch_size=4, save_steps=0)
    same, out_same = stage(tmp_path, records(8), cfg, "same", replace(CPU, train_process="same", num_threads=1))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "own").mkdir()
    out_own = Path("own")
    own = train_stage(subset_file(tmp_path, records(8)), TINY, cfg, 0, replace(CPU, train_process="own",
                                                                               num_threads=1), out_own, NO_TRACKING)
    ours, theirs = (load_file(d / "model" / "model.safetensors") for d in (out_own, out_same))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r["loss"] for r in metric_rows(out_own)] == [r["loss"] for r in metric_rows(out_same)]
    assert own["loss_last"] == same["loss_last"] and own["n_steps"] == same["n_steps"] == 3
    assert own_process(CPU, ModelConfig(name="gemma", source="gguf")) and not own_process(CPU, TINY)
