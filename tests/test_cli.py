"""The `superfilter` command: filter end to end (in-process and as a real process), formats, inspect, errors."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_docs import code_blocks, doc_section

import superfilter
from superfilter.cli import main
from superfilter.scoring.tables import progress_bar

ROOT = Path(__file__).resolve().parents[1]
N_RECORDS = 8
MAX_LENGTH = "128"


def small_records() -> list[dict]:
    """The shortest Alpaca records of the tiny fixture, in file order."""
    rows = [json.loads(line) for line in (ROOT / "data" / "tiny.jsonl").read_text().splitlines() if line.strip()]
    flat = [r for r in rows if "output" in r]
    keep = sorted(flat, key=lambda r: len(r["instruction"]) + len(r.get("input", "")) + len(r["output"]))
    return [r for r in flat if r in keep[:N_RECORDS]]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in small_records()))
    return {"root": root, "path": path, "artifacts": root / "artifacts"}


def common(work: dict) -> list[str]:
    return ["--model", "tiny", "--max-length", MAX_LENGTH, "--artifacts", str(work["artifacts"])]


@pytest.mark.slow
def test_filter_end_to_end_in_process_then_as_a_process(work):
    out = work["root"] / "best.jsonl"
    assert main(["filter", str(work["path"]), "--out", str(out), "--ratio", "0.5", *common(work)]) == 0
    kept = read_jsonl(out)
    scored = superfilter.score(work["path"], model="tiny", max_length=int(MAX_LENGTH),
                               artifact_root=work["artifacts"])
    assert kept == superfilter.select(scored, ratio=0.5)
    assert 0 < len(kept) <= N_RECORDS // 2 and all(r["ifd"] < 1 for r in kept)

    again = work["root"] / "again.jsonl"
    result = subprocess.run([sys.executable, "-m", "superfilter", "filter", str(work["path"]), "--out", str(again),
                             "--ratio", "0.5", *common(work)], capture_output=True, text=True, cwd=work["root"],
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert again.read_bytes() == out.read_bytes()
    assert "score: cache hit" in result.stderr  # a second identical command computes nothing


def test_output_follows_the_input_or_format(work):
    json_in = work["root"] / "data.json"
    json_in.write_text(json.dumps(small_records(), indent=1))
    out = work["root"] / "best_out"
    assert main(["filter", str(json_in), "--out", str(out), "--ratio", "0.5", *common(work)]) == 0
    assert out.read_text().lstrip().startswith("[")  # a JSON array in, a JSON array out
    parquet = work["root"] / "best.parquet"
    assert main(["filter", str(json_in), "--out", str(parquet), "--ratio", "0.5", *common(work)]) == 0
    assert pq.read_table(parquet).to_pylist() == json.loads(out.read_text())
    sharegpt = work["root"] / "best_sharegpt.jsonl"
    assert main(["filter", str(json_in), "--out", str(sharegpt), "--ratio", "0.5", "--format", "sharegpt",
                 *common(work)]) == 0
    rows = read_jsonl(sharegpt)
    assert [m["from"] for m in rows[0]["conversations"]] == ["human", "gpt"] and "ifd" in rows[0]


def test_field_mapping_and_alpaca_output(work):
    mapped = work["root"] / "qa.jsonl"
    mapped.write_text("".join(json.dumps({"q": r["instruction"], "ctx": r.get("input", ""), "a": r["output"]}) + "\n"
                              for r in small_records()))
    out = work["root"] / "qa_best.json"
    assert main(["filter", str(mapped), "--out", str(out), "--ratio", "0.5", "--fields",
                 "instruction=q,input=ctx,output=a", "--format", "alpaca", *common(work)]) == 0
    rows = json.loads(out.read_text())
    assert rows and set(rows[0]) >= {"instruction", "input", "output", "ifd"} and "q" not in rows[0]
    originals = {r["instruction"]: r for r in small_records()}
    assert all(originals[r["instruction"]]["output"] == r["output"] for r in rows)


def test_score_then_inspect(work, capsys):
    out = work["root"] / "scored.parquet"
    assert main(["score", str(work["path"]), "--out", str(out), *common(work)]) == 0
    assert pq.read_table(out).num_rows == N_RECORDS
    capsys.readouterr()
    assert main(["inspect", str(out), "--top", "2"]) == 0
    report = capsys.readouterr().out
    assert f"{N_RECORDS} records" in report and "p50" in report and "highest IFD < 1" in report


@pytest.mark.parametrize("argv, message", [
    (["filter", "{data}", "--out", "{out}", "--bogus"], "unrecognized arguments: --bogus"),
    (["filter", "{missing}", "--out", "{out}"], "no such file"),
    (["filter", "{broken}", "--out", "{out}"], "broken.jsonl:2: invalid JSON"),
    (["filter", "{data}", "--out", "{out}", "--set", "nonsense=1"], "unknown option nonsense; valid options"),
    (["filter", "{data}", "--out", "{out}", "--method", "best"], "method must be one of"),
    (["filter", "{data}", "--out", "{out}", "--ratio", "2"], "ratio must be in (0, 1]"),
    (["filter", "{data}", "--out", "{out}", "--fields", "instruction"], "expected NAME=COLUMN"),
    (["inspect", "{data}"], "no 'ifd' column"),
])
def test_bad_options_and_files_exit_with_one_line(work, capsys, argv, message):
    broken = work["root"] / "broken.jsonl"
    broken.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n')
    paths = {"data": work["path"], "out": work["root"] / "never.jsonl", "missing": work["root"] / "missing.jsonl",
             "broken": broken}
    capsys.readouterr()
    code = main([a.format(**paths) for a in argv] + ["--artifacts", str(work["artifacts"])] * (argv[0] != "inspect"))
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err
    assert not paths["out"].exists()


def test_documented_commands_run(work, tmp_path, monkeypatch):
    (block,) = code_blocks(doc_section("Just filter my data"), "bash")
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("superfilter ")]
    assert commands and commands[0][:2] == ["superfilter", "filter"]
    (tmp_path / "my_data.jsonl").write_text(work["path"].read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUPERFILTER_ARTIFACTS", str(work["artifacts"]))
    for argv in commands:
        # The bundled model is swapped for the tiny one; everything else runs as written. 5-10% of the 8-record
        # file is an empty selection, which fails unless allowed.
        tiny = ["--model", "tiny", "--max-length", MAX_LENGTH] if argv[1] in ("filter", "score") else []
        tiny += ["--allow-empty"] if argv[1] == "filter" else []
        assert main(argv[1:] + tiny) == 0, argv
    outputs = [Path(a[a.index("--out") + 1]) for a in commands if "--out" in a]
    assert outputs and all(p.exists() for p in outputs)


def test_quiet_turns_off_the_libraries_progress_bars(work, monkeypatch):
    import huggingface_hub.utils
    import transformers

    from superfilter import cli

    calls = []
    monkeypatch.setattr(cli, "quiet_progress_bars", lambda: calls.append(1))
    missing = ["score", str(work["root"] / "missing.jsonl"), "--out", str(work["root"] / "out.jsonl")]
    assert main(missing) == 2 and calls == []
    assert main([*missing, "--quiet"]) == 2 and calls == [1]
    monkeypatch.undo()
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        monkeypatch.delenv(name, raising=False)  # restored after the test
    try:
        cli.quiet_progress_bars()
        assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert huggingface_hub.utils.are_progress_bars_disabled()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert progress_bar(3, enabled=True).disable  # the scoring bar as well
    finally:
        huggingface_hub.utils.enable_progress_bars()
        transformers.utils.logging.enable_progress_bar()


def test_models_prepares_each_in_its_own_process_and_prints_the_folder(capfd):
    assert main(["models", "tiny"]) == 0
    name, folder = capfd.readouterr().out.strip().split("\t")
    assert name == "tiny" and (Path(folder) / "config.json").is_file()
    assert main(["models", "tiny", "tiny"]) == 0  # two names: one child process each, same folder
    assert capfd.readouterr().out.strip().splitlines() == [f"tiny\t{folder}"] * 2
