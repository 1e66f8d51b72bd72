"""IFD scoring: every column against a per-example HF computation, batching, boundaries, skips, resume, processes."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from superfilter.data import DataConfig, Example, load_examples, write_examples
from superfilter.errors import UserError
from superfilter.launch import free_port, rank_env, release_followers
from superfilter.models import ModelConfig, build_tiny_model, load_model
from superfilter.prompts import scoring_prompt
from superfilter.runtime import RuntimeConfig
from superfilter.scoring import (
    HISTOGRAM_FILE,
    SCORE_COLUMNS,
    SKIP_REASONS,
    TURN_COLUMNS,
    ScoreConfig,
    balance_shards,
    make_engine,
    marker_path,
    plan_records,
    score_examples,
    score_metrics,
    score_stage,
    token_budget_batches,
)
from superfilter.scoring.engine import Engine, head_logits, head_nll
from superfilter.scoring.launcher import WORKER_JOB_FILE
from superfilter.tracking import StageRun

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = PROJECT_ROOT / "data" / "tiny.jsonl"
FLOATS = ["loss_direct", "loss_conditioned", "ppl_direct", "ppl_conditioned", "ifd"]
SHORT = 64  # a max_length that truncates many fixture records


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(arch, root / arch) for arch in ("llama", "gpt2")}


@pytest.fixture(scope="module")
def loaded(model_dirs: dict[str, Path]) -> dict[str, tuple]:
    return {arch: load_model(local_spec(folder), "cpu") for arch, folder in model_dirs.items()}


def local_spec(folder: Path) -> ModelConfig:
    return ModelConfig(name="tiny", source="local", path=str(folder))


def fixture_examples() -> list[Example]:
    return load_examples(DataConfig(path=str(TINY_DATA)))[0]


def edge_examples(tokenizer) -> list[Example]:
    """Records that must be skipped (or, for boundaries, tokenised differently) at max_length SHORT."""
    return [
        Example.create("Say nothing at all.", "", ""),  # empty_response
        Example.create(" ".join(["word"] * 200), "", "Fine."),  # prompt_too_long
        Example.create("Name a letter.", "", "a"),  # one token: response_too_short without BOS
        Example.create("Write the body of add.", "", "    return a + b"),  # the boundary tokens merge
        Example.create(prompt_filling(tokenizer, SHORT), "", "Too late."),  # response_truncated
    ]


def prompt_filling(tokenizer, n_tokens: int) -> str:
    """An instruction whose scoring prompt ("{instruction}\\n") is exactly n_tokens long, BOS included."""
    for n in range(1, 4 * n_tokens):
        for tail in ("", "!", "!?"):  # fine steps where one more word adds several tokens
            instruction = " ".join(["word"] * n) + tail
            if len(tokenizer.encode(instruction + "\n")) == n_tokens:
                return instruction
    raise AssertionError("no filler of that length")


# The independent computation: one record at a time, HF's own `labels` loss.


def hf_loss(model, ids: list[int], n_masked: int) -> float:
    if not ids:  # an empty response without BOS: nothing to run
        return math.nan
    input_ids = torch.tensor([ids])
    labels = input_ids.clone()
    labels[0, :n_masked] = -100
    with torch.no_grad():
        return model(input_ids=input_ids, labels=labels).loss.item()


def reference_turn(model, tokenizer, prompt: str, prefix: str, output: str, max_length: int) -> dict:
    """The authors' script: encode with truncation, mask len(encode(text[:text.rfind(output)])) labels."""
    whole = prompt + output
    n_prompt_truncated = len(tokenizer.encode(prompt, truncation=True, max_length=max_length))
    if prefix:
        direct_text = prefix + output
        n_direct_masked = len(tokenizer.encode(direct_text[:direct_text.rfind(output)]))
        direct_max = max_length - n_prompt_truncated + n_direct_masked
    else:
        direct_text, n_direct_masked = output, 0
        direct_max = max_length - n_prompt_truncated + 1
    direct_ids = tokenizer.encode(direct_text, truncation=True, max_length=direct_max)
    conditioned_ids = tokenizer.encode(whole, truncation=True, max_length=max_length)
    n_prompt = len(tokenizer.encode(whole[:whole.rfind(output)]))
    return {"n_prompt_tokens": n_prompt, "n_response_tokens": max(0, len(conditioned_ids) - n_prompt),
            "loss_direct": hf_loss(model, direct_ids, n_direct_masked),
            "loss_conditioned": hf_loss(model, conditioned_ids, n_prompt)}


def exact_turn(model, tokenizer, prompt: str, prefix: str, output: str, max_length: int) -> dict:
    """Prompt and response tokenised separately and concatenated; the same truncation lengths."""
    prompt_ids = tokenizer(prompt)["input_ids"]  # with the tokenizer's BOS, if any
    output_ids = tokenizer(output, add_special_tokens=False)["input_ids"]
    direct_lead = tokenizer(prefix)["input_ids"]
    conditioned_ids = (prompt_ids + output_ids)[:max_length]
    direct_max = max_length - min(len(prompt_ids), max_length) + max(len(direct_lead), 1)
    direct_ids = (direct_lead + output_ids)[:direct_max]
    return {"n_prompt_tokens": len(prompt_ids), "n_response_tokens": max(0, len(conditioned_ids) - len(prompt_ids)),
            "loss_direct": hf_loss(model, direct_ids, len(direct_lead)),
            "loss_conditioned": hf_loss(model, conditioned_ids, len(prompt_ids))}


def expected_turn(example: Example, model, tokenizer, cfg: ScoreConfig) -> dict:
    prompt, prefix = scoring_prompt(example, cfg.prompt, tokenizer)
    compute = reference_turn if cfg.boundary == "reference" else exact_turn
    row = compute(model, tokenizer, prompt, prefix, example.output, cfg.max_length)
    losses = (row["loss_direct"], row["loss_conditioned"])
    # HF's mean over zero labels is NaN: exactly the records the engine must skip, plus empty responses.
    row["scorable"] = bool(example.output) and all(math.isfinite(v) for v in losses)
    row["ppl_direct"], row["ppl_conditioned"] = math.exp(losses[0]), math.exp(losses[1])
    ratio = row["ppl_conditioned"] / row["ppl_direct"] if cfg.ifd_form == "ppl_ratio" else losses[1] / losses[0]
    row["ifd"] = ratio
    return row


def assert_matches_reference(scores: pd.DataFrame, examples: list[Example], model, tokenizer,
                             cfg: ScoreConfig) -> None:
    assert list(scores["id"]) == [ex.id for ex in examples]
    for ex, (_, got) in zip(examples, scores.iterrows(), strict=True):
        want = expected_turn(ex, model, tokenizer, cfg)
        assert got["n_prompt_tokens"] == want["n_prompt_tokens"], ex.id
        if not want["scorable"]:
            assert got["skip_reason"] in SKIP_REASONS, ex.id
            assert all(math.isnan(got[c]) for c in FLOATS), ex.id
            continue
        assert got["skip_reason"] == "", ex.id
        assert got["n_response_tokens"] == want["n_response_tokens"], ex.id
        for column in FLOATS:
            assert got[column] == pytest.approx(want[column], rel=1e-5, abs=1e-6), (ex.id, column)


# Exactness.


@pytest.mark.parametrize(("arch", "boundary", "max_length"), [
    ("llama", "reference", SHORT), ("llama", "exact", SHORT), ("gpt2", "reference", SHORT), ("gpt2", "exact", SHORT),
    ("gpt2", "reference", 256), ("llama", "exact", 256),
])
def test_every_column_equals_per_example_hf_loss(loaded, arch: str, boundary: str, max_length: int) -> None:
    model, tokenizer = loaded[arch]
    examples = fixture_examples() + edge_examples(tokenizer)
    cfg = ScoreConfig(boundary=boundary, max_length=max_length, batch_tokens=512)
    scores = score_examples(examples, model, tokenizer, cfg)
    assert list(scores.columns) == list(SCORE_COLUMNS)
    assert_matches_reference(scores, examples, model, tokenizer, cfg)
    assert (scores["skip_reason"] == "").sum() >= 30  # most records are really compared, not skipped


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("boundary", ["reference", "exact"])
def test_alpaca_prompt_and_loss_ratio_equal_reference(loaded, arch: str, boundary: str) -> None:
    model, tokenizer = loaded[arch]
    examples = [ex for ex in fixture_examples() if not ex.history][:20]
    cfg = ScoreConfig(prompt="alpaca", ifd_form="loss_ratio", boundary=boundary, max_length=256)
    scores = score_examples(examples, model, tokenizer, cfg)
    assert_matches_reference(scores, examples, model, tokenizer, cfg)
    assert (scores["skip_reason"] == "").sum() >= 15


def test_batch_of_one_equals_batch_of_eight(loaded) -> None:
    model, tokenizer = loaded["gpt2"]
    examples = fixture_examples()
    lengths = [len(p.conditioned.ids) for rec in plan_records(examples, ScoreConfig(), tokenizer,
                                                              make_engine(model, tokenizer).tokenization)
               for p in rec]
    wide = 8 * max(lengths)
    assert max(len(b) for b in token_budget_batches(lengths, wide)) >= 8
    one = score_examples(examples, model, tokenizer, ScoreConfig(batch_tokens=1))
    eight = score_examples(examples, model, tokenizer, ScoreConfig(batch_tokens=wide))
    pd.testing.assert_frame_equal(one, eight, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias, cap", [(False, None), (True, None), (False, 30.0)])
def test_head_nll_in_reused_buffers_is_cross_entropy_bit_for_bit(bias: bool, cap: float | None) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).to(torch.bfloat16)
    model = type("Model", (), {"config": type("Config", (), {"final_logit_softcapping": cap})(),
                               "get_output_embeddings": lambda self: head})()
    engine = Engine(model, None, torch.device("cpu"), None)
    pointers = []
    for rows in (7, 3, 12):  # grows, reuses a prefix, grows again
        hidden = torch.randn(rows, 16, dtype=torch.bfloat16)
        targets = torch.randint(0, 50, (rows,))
        with torch.inference_mode():
            expected = torch.nn.functional.cross_entropy(head_logits(model, hidden).float(), targets,
                                                         reduction="none")
            assert torch.equal(head_nll(engine, hidden, targets), expected)
        pointers.append(engine.buffers.take("log_probs", rows, head.weight, torch.float32).data_ptr())
    assert pointers[0] == pointers[1]  # the smaller chunk reused the first buffer


def test_boundaries_agree_exactly_where_tokens_agree(loaded) -> None:
    model, tokenizer = loaded["gpt2"]
    engine = make_engine(model, tokenizer)
    examples = fixture_examples() + edge_examples(tokenizer)
    plans = {b: plan_records(examples, ScoreConfig(boundary=b), tokenizer, engine.tokenization)
             for b in ("reference", "exact")}
    scores = {b: score_examples(examples, model, tokenizer, ScoreConfig(boundary=b)) for b in plans}
    same = [plans["reference"][i] == plans["exact"][i] for i in range(len(examples))]
    assert sum(same) >= len(examples) - 3
    assert not same[-2]  # "\n" + "    return": the authors' re-tokenised boundary differs from the exact one
    pd.testing.assert_frame_equal(scores["reference"][same], scores["exact"][same], rtol=1e-6, atol=1e-7)


def test_turns_each_reports_mean_and_max_over_replies(loaded) -> None:
    model, tokenizer = loaded["llama"]
    examples = fixture_examples()
    cfg = ScoreConfig(turns="each", max_length=256)
    scores = score_examples(examples, model, tokenizer, cfg)
    assert list(scores.columns) == [*SCORE_COLUMNS, *TURN_COLUMNS]
    for ex, (_, got) in zip(examples, scores.iterrows(), strict=True):
        parts = [Example(ex.id, u, "", a, ex.history[:i]) for i, (u, a) in enumerate(ex.history)] + [ex]
        wants = [expected_turn(p, model, tokenizer, cfg) for p in parts]
        scored = [w for w in wants if w["scorable"]]
        assert got["n_turns"] == len(parts) and got["n_turns_scored"] == len(scored)
        if not scored:
            assert got["skip_reason"] in SKIP_REASONS and math.isnan(got["ifd"])
            continue
        assert got["ifd"] == pytest.approx(np.mean([w["ifd"] for w in scored]), rel=1e-5)
        assert got["ifd_max"] == pytest.approx(max(w["ifd"] for w in scored), rel=1e-5)
        assert got["loss_conditioned"] == pytest.approx(np.mean([w["loss_conditioned"] for w in scored]), rel=1e-5)
        assert got["n_response_tokens"] == sum(w["n_response_tokens"] for w in scored)
    assert (scores["n_turns"] > 1).sum() == 2


def test_chat_prompt_keeps_a_single_bos_in_both_passes(loaded) -> None:
    model, tokenizer = loaded["llama"]  # its chat template writes "<s>" itself, and its tokenizer adds BOS too
    example = fixture_examples()[-1]
    engine = make_engine(model, tokenizer)
    plan = plan_records([example], ScoreConfig(prompt="chat", boundary="exact", max_length=1024), tokenizer,
                        engine.tokenization)[0][-1]
    messages = [{"role": r, "content": c} for u, a in example.history for r, c in (("user", u), ("assistant", a))]
    messages.append({"role": "user", "content": example.instruction})
    templated = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(templated, add_special_tokens=False)["input_ids"]
    output_ids = tokenizer(example.output, add_special_tokens=False)["input_ids"]
    assert plan.conditioned.ids == tuple(prompt_ids + output_ids)
    assert prompt_ids[0] == tokenizer.bos_token_id != prompt_ids[1]
    assert plan.direct.ids == (tokenizer.bos_token_id, *output_ids) and plan.direct.start == 1


# Skips.


def test_bad_records_get_their_documented_skip_reason(loaded) -> None:
    expected = {"llama": ["empty_response", "prompt_too_long", "", "", "response_truncated"],
                "gpt2": ["empty_response", "prompt_too_long", "response_too_short", "", "response_truncated"]}
    for arch, reasons in expected.items():
        model, tokenizer = loaded[arch]
        scores = score_examples(edge_examples(tokenizer), model, tokenizer, ScoreConfig(max_length=SHORT))
        assert list(scores["skip_reason"]) == reasons, arch
        assert scores.loc[scores["skip_reason"] != "", "ifd"].isna().all()


def test_nonfinite_losses_are_skipped_not_scored(loaded) -> None:
    model, tokenizer = loaded["gpt2"]
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.transformer.ln_f.weight.fill_(float("nan"))
    scores = score_examples(fixture_examples()[:5], broken, tokenizer)
    assert (scores["skip_reason"] == "nonfinite_loss").all()
    assert scores["ifd"].isna().all()


BLANK_OUTPUTS = [" ", "\n\t ", "\u200b", "\u200b\u200d\ufeff", "\u00a0\u2060 "]


def test_blank_outputs_are_empty_responses_for_prepare_and_scorer(loaded, tmp_path: Path) -> None:
    model, tokenizer = loaded["gpt2"]
    records = [{"instruction": f"Say something {i}.", "input": "", "output": out}
               for i, out in enumerate([*BLANK_OUTPUTS, "Fine.", "a\u200b"])]
    path = tmp_path / "blank.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    examples, report = load_examples(DataConfig(path=str(path)))
    scores = score_examples(examples, model, tokenizer, ScoreConfig(max_length=SHORT))
    assert list(scores["skip_reason"][:len(BLANK_OUTPUTS)]) == ["empty_response"] * len(BLANK_OUTPUTS)
    assert (scores["skip_reason"][len(BLANK_OUTPUTS):] == "").all()
    assert report.n_empty_output == (scores["skip_reason"] == "empty_response").sum()


def test_all_skipped_stage_fails_in_one_line_after_writing_the_table(model_dirs, tmp_path: Path) -> None:
    write_examples([Example.create(f"Say nothing {i}.", "", out) for i, out in enumerate(["", " ", "\u200b"])],
                   tmp_path / "examples.jsonl")
    out = tmp_path / "score"
    with pytest.raises(UserError, match=r"none of the 3 records could be scored: 3 empty_response") as error:
        score_stage(tmp_path / "examples.jsonl", local_spec(model_dirs["gpt2"]), ScoreConfig(max_skip_fraction=1.0),
                    RuntimeConfig(device="cpu"), out, StageRun(None, "score"))
    assert "\n" not in str(error.value)
    assert (pd.read_parquet(out / "scores.parquet")["skip_reason"] == "empty_response").all()
    metrics = score_metrics(pd.read_parquet(out / "scores.parquet"), ScoreConfig())
    assert metrics["n_scored"] == 0 and metrics["ifd_quantiles"] == {} and metrics["ifd_mean"] is None


def test_stage_writes_artifacts_and_fails_above_max_skip_fraction(loaded, model_dirs, tmp_path: Path) -> None:
    model, tokenizer = loaded["gpt2"]
    examples = fixture_examples() + edge_examples(tokenizer)
    write_examples(examples, tmp_path / "examples.jsonl")
    cfg = ScoreConfig(max_length=SHORT, shard_size=16)
    out = tmp_path / "score"
    metrics = score_stage(tmp_path / "examples.jsonl", local_spec(model_dirs["gpt2"]), cfg,
                          RuntimeConfig(device="cpu"), out, StageRun(None, "score"))
    scores = pd.read_parquet(out / "scores.parquet")
    assert list(scores.columns) == list(SCORE_COLUMNS)
    pd.testing.assert_frame_equal(scores, score_examples(examples, model, tokenizer, cfg), rtol=1e-6, atol=1e-7)
    assert (out / HISTOGRAM_FILE).stat().st_size > 0
    reasons = scores.loc[scores["skip_reason"] != "", "skip_reason"].value_counts().to_dict()
    assert metrics["n_records"] == len(examples) and metrics["n_skipped"] == sum(reasons.values())
    assert metrics["skip_reasons"] == reasons and set(reasons) == set(SKIP_REASONS) - {"nonfinite_loss"}
    assert set(metrics["ifd_quantiles"]) == {"min", "p05", "p25", "p50", "p75", "p95", "max"}
    assert 0.0 <= metrics["share_ifd_ge_1"] <= 1.0 and metrics["records_per_s"] > 0
    assert metrics["dtype"] == "float32" and metrics["dtype_reason"]  # conftest keeps auto in fp32 on any CPU
    strict = ScoreConfig(max_length=SHORT, shard_size=16, max_skip_fraction=0.01)
    with pytest.raises(UserError, match="max_skip_fraction"):
        score_stage(tmp_path / "examples.jsonl", local_spec(model_dirs["gpt2"]), strict,
                    RuntimeConfig(device="cpu"), out, StageRun(None, "score"))


# Resume and processes.

KILLABLE = """
import sys, time
from pathlib import Path
import superfilter.scoring as scoring
import superfilter.scoring.engine as engine
from superfilter.models import ModelConfig
from superfilter.runtime import RuntimeConfig
from superfilter.tracking import StageRun

batch_nll = engine.batch_nll
def slow_batch_nll(*args, **kwargs):
    time.sleep(0.05)  # slow enough that the parent's SIGKILL lands mid-shard
    return batch_nll(*args, **kwargs)
engine.batch_nll = slow_batch_nll
scoring.score_stage(Path(sys.argv[1]), ModelConfig(source="local", path=sys.argv[3]),
                    scoring.ScoreConfig(max_length=64, shard_size=4, batch_tokens=128),
                    RuntimeConfig(device="cpu"), Path(sys.argv[2]), StageRun(None, "score"))
"""


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_identical_scores(model_dirs, tmp_path: Path) -> None:
    write_examples(fixture_examples(), tmp_path / "examples.jsonl")
    cfg = ScoreConfig(max_length=64, shard_size=4, batch_tokens=128)
    spec, runtime = local_spec(model_dirs["gpt2"]), RuntimeConfig(device="cpu")
    out = tmp_path / "killed"
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(tmp_path / "examples.jsonl"), str(out),
                              str(model_dirs["gpt2"])], env=env)
    deadline = time.monotonic() + 120
    while len(list((out / "shards").glob("*.done"))) < 3:
        assert child.poll() is None and time.monotonic() < deadline, "the child ended before it could be killed"
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.done")}
    assert 3 <= len(finished) < math.ceil(len(fixture_examples()) / 4)

    resumed = score_stage(tmp_path / "examples.jsonl", spec, cfg, runtime, out, StageRun(None, "score"))
    assert resumed["records_scored_this_run"] == len(fixture_examples()) - 4 * len(finished)
    for name, mtime in finished.items():  # finished shards were not redone
        assert (out / "shards" / name).stat().st_mtime_ns == mtime
    fresh = tmp_path / "fresh"
    score_stage(tmp_path / "examples.jsonl", spec, cfg, runtime, fresh, StageRun(None, "score"))
    after_kill, clean = pd.read_parquet(out / "scores.parquet"), pd.read_parquet(fresh / "scores.parquet")
    assert after_kill["id"].is_unique and list(after_kill["id"]) == [ex.id for ex in fixture_examples()]
    pd.testing.assert_frame_equal(after_kill, clean, rtol=1e-6, atol=1e-7)


def test_rerun_of_a_finished_folder_scores_nothing(model_dirs, tmp_path: Path) -> None:
    examples = fixture_examples()[:10]
    write_examples(examples, tmp_path / "examples.jsonl")
    args = (tmp_path / "examples.jsonl", local_spec(model_dirs["llama"]), ScoreConfig(shard_size=4),
            RuntimeConfig(device="cpu"), tmp_path / "out", StageRun(None, "score"))
    first = score_stage(*args)
    markers = {s: marker_path(tmp_path / "out" / "shards", s).stat().st_mtime_ns for s in range(3)}
    again = score_stage(*args)
    assert first["records_scored_this_run"] == 10 and again["records_scored_this_run"] == 0
    assert markers == {s: marker_path(tmp_path / "out" / "shards", s).stat().st_mtime_ns for s in range(3)}


def test_balance_shards_spreads_cost() -> None:
    assignment = balance_shards([0, 1, 2, 3, 4], [9.0, 7.0, 5.0, 3.0, 1.0], 2)
    assert sorted(s for a in assignment for s in a) == [0, 1, 2, 3, 4]
    assert assignment == [[0, 3, 4], [1, 2]]


@pytest.mark.slow
def test_two_cpu_processes_equal_one(model_dirs, tmp_path: Path) -> None:
    examples = fixture_examples()
    write_examples(examples, tmp_path / "examples.jsonl")
    spec, cfg = local_spec(model_dirs["gpt2"]), ScoreConfig(max_length=128, shard_size=8)
    one = tmp_path / "one"
    two = tmp_path / "two"
    score_stage(tmp_path / "examples.jsonl", spec, cfg, RuntimeConfig(device="cpu"), one, StageRun(None, "score"))
    metrics = score_stage(tmp_path / "examples.jsonl", spec, cfg, RuntimeConfig(device="cpu", num_processes=2), two,
                          StageRun(None, "score"))
    assert metrics["n_processes"] == 2 and metrics["records_scored_this_run"] == len(examples)
    pd.testing.assert_frame_equal(pd.read_parquet(one / "scores.parquet"), pd.read_parquet(two / "scores.parquet"),
                                  rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_nodes_score_like_one_process_and_a_lost_nodes_shards_are_rescored(model_dirs, tmp_path: Path) -> None:
    examples = fixture_examples()
    write_examples(examples, tmp_path / "examples.jsonl")
    spec, cfg = local_spec(model_dirs["gpt2"]), ScoreConfig(max_length=128, shard_size=8)
    one, two = tmp_path / "one", tmp_path / "two"
    score_stage(tmp_path / "examples.jsonl", spec, cfg, RuntimeConfig(device="cpu"), one, StageRun(None, "score"))
    port = free_port()
    # Node 1, as `python -m superfilter.launch` runs on a second host: it starts its ranks of node 0's launches.
    follower = subprocess.Popen([sys.executable, "-m", "superfilter.launch", "--num-nodes", "2", "--node-rank", "1",
                                 "--master-addr", "127.0.0.1", "--master-port", str(port)],
                                cwd=PROJECT_ROOT, env=rank_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    nodes = RuntimeConfig(device="cpu", num_nodes=2, node_rank=0, master_addr="127.0.0.1", master_port=port)
    try:
        metrics = score_stage(tmp_path / "examples.jsonl", spec, cfg, nodes, two, StageRun(None, "score"))
    finally:
        release_followers(nodes)
    assert follower.wait(timeout=120) == 0, follower.stderr.read().decode()[-3000:]
    assert metrics["n_processes"] == 2 and metrics["records_scored_this_run"] == len(examples)
    expected = pd.read_parquet(one / "scores.parquet")
    pd.testing.assert_frame_equal(expected, pd.read_parquet(two / "scores.parquet"), rtol=1e-6, atol=1e-7)

    # Node 1 dies: its shards never get their markers. A rerun (here on one process) scores exactly those again.
    node1_shards = json.loads((two / "shards" / WORKER_JOB_FILE).read_text())["assignment"][1]
    layout = json.loads((two / "shards" / "layout.json").read_text())["shards"]
    assert node1_shards
    for shard in node1_shards:
        marker_path(two / "shards", shard).unlink()
    rerun = score_stage(tmp_path / "examples.jsonl", spec, cfg, RuntimeConfig(device="cpu"), two,
                        StageRun(None, "score"))
    assert rerun["records_scored_this_run"] == sum(len(layout[s]) for s in node1_shards)
    pd.testing.assert_frame_equal(expected, pd.read_parquet(two / "scores.parquet"), rtol=1e-6, atol=1e-7)
