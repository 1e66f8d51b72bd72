"""Hostile input through all three entry points (run.py, `superfilter score`, superfilter.score): one line that names
the file, line or field, exit status 2, no traceback, no output file."""

import gzip
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

import superfilter
from superfilter.cli import main
from superfilter.cli_pipeline import run_from_hydra
from superfilter.config import register_configs
from superfilter.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"instruction": "Name a colour.", "input": "", "output": "Blue is a colour."}
register_configs()


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def text_file(name: str, content: str | bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return build


def symlink_loop(folder: Path) -> Path:
    (folder / "a.jsonl").symlink_to(folder / "b.jsonl")
    (folder / "b.jsonl").symlink_to(folder / "a.jsonl")
    return folder / "a.jsonl"


def dangling(folder: Path) -> Path:
    (folder / "gone.jsonl").symlink_to(folder / "missing-target.jsonl")
    return folder / "gone.jsonl"


def fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.jsonl")
    return folder / "pipe.jsonl"


def folder(folder: Path) -> Path:
    (folder / "dir.jsonl").mkdir()
    return folder / "dir.jsonl"


def parquet_table(folder: Path) -> Path:
    path = folder / "good.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD]), path)
    return path


def corrupt_parquet(folder: Path) -> Path:
    path = parquet_table(folder)
    path.write_bytes(path.read_bytes()[:20])
    return path


GOOD_LINE = json.dumps(GOOD)
# (name, builder, fragments every entry point's message must hold); the item number leads each name.
CASES = [
    ("1-latin1", text_file("latin1.jsonl", GOOD_LINE.encode() + b"\n" + b'{"instruction": "caf\xe9", "output": "x"}\n'),
     ["latin1.jsonl:2:", "not UTF-8", "0xe9"]),
    ("1-utf16-bom", text_file("u16.jsonl", (GOOD_LINE + "\n").encode("utf-16")), ["u16.jsonl", "UTF-16"]),
    ("1-utf16-no-bom", text_file("u16le.json", ("[" + GOOD_LINE + "]").encode("utf-16-le")),
     ["u16le.json", "UTF-16"]),
    ("1-gzip", text_file("packed.json", gzip.compress(("[" + GOOD_LINE + "]").encode())), ["packed.json", "gzip"]),
    ("2-lone-surrogate", text_file("sur.jsonl", GOOD_LINE + '\n{"instruction": "a\\ud800", "output": "b"}\n'),
     ["sur.jsonl:2:", "'instruction'", "lone UTF-16 surrogate"]),
    ("2-surrogate-in-own-column", text_file("sur2.json", '[\n' + GOOD_LINE + ',\n{"instruction": "a", "output": "b",'
                                                         ' "meta": {"note": "\\udc00"}}]'),
     ["sur2.json:3:", "'meta.note'"]),
    ("3-deep-nesting", text_file("deep.jsonl", '{"instruction": "a", "output": "b", "x": ' + "[" * 100_000
                                 + "]" * 100_000 + "}\n"), ["deep.jsonl:1:", "nested too deeply"]),
    ("4-corrupt-parquet", corrupt_parquet, ["good.parquet", "not a readable Parquet file"]),
    ("4-empty-parquet", text_file("empty.parquet", b""), ["empty.parquet", "file is empty"]),
    ("7-missing", lambda d: d / "missing.jsonl", ["missing.jsonl", "no such file"]),
    ("7-directory", folder, ["dir.jsonl", "is a directory"]),
    ("7-symlink-loop", symlink_loop, ["a.jsonl", "symbolic link loop"]),
    ("7-dangling-link", dangling, ["gone.jsonl", "broken symbolic link"]),
    ("7-dev-null", lambda d: Path(os.devnull), [os.devnull, "character device"]),
    ("14-named-pipe", fifo, ["pipe.jsonl", "named pipe"]),
    ("15-two-arrays", text_file("two.json", f"[{GOOD_LINE}]\n[{GOOD_LINE}]\n"), ["two.json:2:", "second JSON array"]),
    ("15-trailing-garbage", text_file("tail.json", f"[{GOOD_LINE}]\ngarbage"), ["tail.json:2:", "after the array"]),
    ("msg-unterminated-string", text_file("open.jsonl", '{"instruction": "a, "output": "b"}\n'),
     ["open.jsonl:1:", "invalid JSON"]),
    ("msg-top-level-object", text_file("obj.json", '{\n "data": [\n  ' + GOOD_LINE + "\n ]\n}\n"),
     ["obj.json", "one JSON object", "'data'"]),
    ("23-system-not-a-string", text_file("sys.jsonl", jsonl({"system": 5, "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})),
     ["sys.jsonl:1:", "'system' must be a string"]),
]


def run_api(path: Path, root: Path, *args: str) -> tuple[int, str]:
    try:
        superfilter.score(path, model="tiny", artifact_root=root, max_length=64)
    except UserError as e:
        return 2, str(e)
    return 0, ""


def run_cli(path: Path, root: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["score", str(path), "--out", str(root / "out.jsonl"), "--model", "tiny", "--max-length", "64",
                 "--artifacts", str(root)])
    return code, capsys.readouterr().err


def pipeline_overrides(path: Path | str, root: Path, *extra: str) -> list[str]:
    return ["data=custom", f"data.path='{path}'", "model/weak=tiny", "stages=[score]", f"artifact_root='{root}'",
            "tracking.mode=disabled", "score.max_length=64", *extra]


def run_pipeline(overrides: list[str], capsys) -> tuple[int, str]:
    """run.py's path after Hydra composed the config: the same function `python run.py` calls."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        try:
            cfg = compose(config_name="config", overrides=overrides)
        except ConfigCompositionException as e:  # Hydra's own message (multi-line): run.py exits with 1
            return 1, str(e)
    logger = logging.getLogger("superfilter")
    cli_handlers = logger.handlers[:]  # the CLI's, left by earlier tests in this process: run.py has none
    logger.handlers.clear()
    capsys.readouterr()
    try:
        run_from_hydra(cfg)
    except SystemExit as e:
        return int(e.code), capsys.readouterr().err
    finally:
        logger.handlers[:] = cli_handlers
    return 0, capsys.readouterr().err


def assert_one_line(code: int, message: str, fragments: list[str]) -> None:
    assert code == 2, message
    assert "Traceback" not in message
    lines = message.strip().splitlines()
    if any(line.startswith("superfilter ") for line in lines):  # the command logs progress (INFO) to stderr too
        lines = [line for line in lines if ": error: " in line]
    assert len(lines) == 1, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("entry", ["run.py", "cli", "api"])
@pytest.mark.parametrize(("name", "build", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_file_fails_alike_everywhere(tmp_path, capsys, entry, name, build, fragments):
    data = tmp_path / "data"
    data.mkdir()
    path = build(data)
    root = tmp_path / "artifacts"
    if entry == "api":
        code, message = run_api(path, root)
    elif entry == "cli":
        code, message = run_cli(path, root, capsys)
        assert not (root / "out.jsonl").exists()
    else:
        code, message = run_pipeline(pipeline_overrides(path, root), capsys)
    assert_one_line(code, message, fragments)
    assert "at at" not in message
    assert not list(root.glob("score/*")), "nothing may be scored"


def test_json_errors_read_as_sentences(tmp_path):
    path = text_file("open.jsonl", '{"instruction": "a\n')(tmp_path)
    code, message = run_api(path, tmp_path / "artifacts")
    assert "Unterminated string starting at column 17" in message


# Options and paths


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.jsonl"
    path.write_text(jsonl(GOOD, {**GOOD, "output": "Red is another colour."}))
    return path


@pytest.mark.parametrize(("overrides", "cli", "api_options", "fragments"), [
    (["runtime.num_threads=-1"], ["--set", "num_threads=-1"], {"num_threads": -1}, ["runtime.num_threads", ">= 0"]),
    (["runtime.device=tpu"], ["--device", "tpu"], {"device": "tpu"}, ["runtime.device", "'tpu'"]),
    (["runtime.num_processes=0"], ["--set", "num_processes=0"], {"num_processes": 0}, ["runtime.num_processes"]),
    (["seed=-5"], ["--seed", "-5"], {"seed": -5}, ["seed must be >= 0"]),
    (["score.max_length=abc"], ["--set", "max_length=abc"], {"max_length": "abc"}, ["max_length"]),
    (["score.max_length=10.5"], ["--set", "max_length=10.5"], {"max_length": 10.5}, ["max_length"]),
], ids=["9-threads", "10-device", "9-processes", "seed", "12-int-text", "12-int-float"])
def test_bad_options_fail_alike_everywhere(tmp_path, capsys, good, overrides, cli, api_options, fragments):
    root = tmp_path / "artifacts"
    code, message = run_pipeline(pipeline_overrides(good, root, *overrides), capsys)
    if overrides[0].startswith("score."):  # Hydra types the override itself, with its own (multi-line) message
        assert code == 1 and "max_length" in message
    else:
        assert_one_line(code, message, fragments)
    capsys.readouterr()
    code = main(["filter", str(good), "--out", str(tmp_path / "out.jsonl"), "--model", "tiny", "--artifacts",
                 str(root), *cli])
    assert_one_line(code, capsys.readouterr().err, fragments)
    with pytest.raises(UserError) as e:
        superfilter.filter(good, model="tiny", artifact_root=root, **api_options)
    assert_one_line(2, str(e.value), fragments)
    assert not (tmp_path / "out.jsonl").exists() and not list(root.glob("score/*"))


@pytest.mark.parametrize(("argv", "fragments"), [
    (["score", "{good}", "--set", "seed=1"], ["unknown option seed"]),
    (["filter", "{good}", "--set", "seed=1"], ["use --seed"]),
    (["filter", "{good}", "--set", "count=2.5"], ["use --count"]),
    (["filter", "{good}", "--set", "keep_equal=maybe"], ["keep_equal must be true or false", "'maybe'"]),
    (["filter", "{good}", "--set", "fields=x"], ["use --fields"]),
    (["filter", "{good}", "--set", "format=dolly"], ["use --input-format"]),
    (["filter", "{good}", "--set", "boundary=exact", "--set", "boundary=reference"], ["boundary is given twice"]),
    (["filter", "{good}", "--count", "0"], ["--count", "must be >= 1"]),
    (["filter", "{good}", "--out", "{good}"], ["is the input file", "--force"]),
    (["filter", "{good}", "--out", "{tmp}"], ["is a directory"]),
    (["filter", "{good}", "--artifacts", "{good}"], ["artifact_root", "is a file"]),
    (["filter", "{good}", "--method", "random", "--ratio", "0.1"], ["selected 0 of 2 records", "--allow-empty"]),
    (["inspect", "{good}", "--top", "-1"], ["--top", "must be >= 0"]),
], ids=["11-set-seed-score", "11-set-seed", "12-count-float", "12-bool", "19-fields", "19-format", "11-twice",
        "21-count-0", "22-out-is-in", "out-is-dir", "8-root-file", "18-empty", "21-top"])
def test_command_line_mistakes(tmp_path, capsys, good, argv, fragments):
    values = {"good": good, "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    if argv[0] != "inspect":
        argv += ["--model", "tiny", "--max-length", "64"]
        argv += [] if "--out" in argv else ["--out", str(tmp_path / "out.jsonl")]
        argv += [] if "--artifacts" in argv else ["--artifacts", str(tmp_path / "artifacts")]
    before = good.read_bytes()
    capsys.readouterr()
    code = main(argv)
    assert_one_line(code, capsys.readouterr().err, fragments)
    assert good.read_bytes() == before and not (tmp_path / "out.jsonl").exists()


def test_empty_selection_is_allowed_when_asked_and_said_loudly(tmp_path, capsys, good):
    out = tmp_path / "out.jsonl"
    code = main(["filter", str(good), "--out", str(out), "--method", "random", "--ratio", "0.1", "--allow-empty",
                 "--artifacts", str(tmp_path / "artifacts")])
    err = capsys.readouterr().err
    assert code == 0 and out.read_text() == "" and "selected 0 of 2 records" in err
    with pytest.raises(UserError, match=r"selected 0 of 2 records: the budget rounds down to 0 \(ratio 0.1"):
        superfilter.select([GOOD, {**GOOD, "output": "Red."}], ratio=0.1, method="random")
    assert superfilter.select([GOOD, {**GOOD, "output": "Red."}], ratio=0.1, method="random", allow_empty=True) == []
    code, message = run_pipeline(pipeline_overrides(good, tmp_path / "artifacts", "filter=random",
                                                    "stages=[select]", "ratio=0.1"), capsys)
    assert_one_line(code, message, ["selected 0 of 2 records", "filter.allow_empty=true"])


def test_out_may_replace_the_input_with_force(tmp_path, capsys, good):
    code = main(["filter", str(good), "--out", str(good), "--method", "random", "--ratio", "0.5", "--force",
                 "--artifacts", str(tmp_path / "artifacts")])
    assert code == 0 and len(good.read_text().splitlines()) == 1


def test_api_arguments_of_the_wrong_type(tmp_path, good):
    records = [GOOD, {**GOOD, "output": "Red."}]
    for call, fragments in [
        (lambda: superfilter.select(records, ratio="abc", method="random"), ["ratio must be a number", "'abc'"]),
        (lambda: superfilter.select(records, method="random", count=2.5), ["count must be an integer"]),
        (lambda: superfilter.select(records, method="random", device="tpu"), ["runtime.device"]),
        (lambda: superfilter.score(records, model="tiny", fields="instruction=q", artifact_root=tmp_path),
         ["fields must be a mapping"]),
        (lambda: superfilter.filter(records, ratio="abc", method="random", artifact_root=tmp_path),
         ["ratio must be a number"]),
    ]:
        with pytest.raises(UserError) as e:
            call()
        assert_one_line(2, str(e.value), fragments)


def test_records_that_already_have_score_columns_are_refused(tmp_path, capsys, good):
    scored_before = tmp_path / "scored.jsonl"
    scored_before.write_text(jsonl(GOOD, {**GOOD, "output": "Red.", "ifd": 0.5, "skip_reason": ""}))
    with pytest.raises(UserError) as e:
        superfilter.score(scored_before, model="tiny", artifact_root=tmp_path)
    assert_one_line(2, str(e.value), ["scored.jsonl:2:", "ifd, skip_reason", "scoring adds"])
    code = main(["score", str(scored_before), "--out", str(tmp_path / "out.jsonl"), "--model", "tiny",
                 "--artifacts", str(tmp_path)])
    assert_one_line(code, capsys.readouterr().err, ["ifd, skip_reason"])
    import pandas as pd

    with pytest.raises(UserError, match=r"dataframe: .*n_turns"):
        superfilter.score(pd.DataFrame([{**GOOD, "n_turns": 1}]), model="tiny", artifact_root=tmp_path)


@pytest.mark.parametrize(("column", "values"), [("meta", [1, "one"]), ("big", [1, 2**70])])
def test_parquet_output_that_cannot_hold_a_column_fails_before_scoring(tmp_path, capsys, column, values):
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl(*({**GOOD, "output": f"Colour {i}.", column: v} for i, v in enumerate(values))))
    out = tmp_path / "out.parquet"
    code = main(["score", str(path), "--out", str(out), "--model", "tiny", "--artifacts", str(tmp_path / "a")])
    assert_one_line(code, capsys.readouterr().err, [f"column {column!r}", "Parquet", "JSON"])
    assert not out.exists() and not (tmp_path / "a").exists()


def test_in_memory_records_name_their_position(tmp_path):
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for records, fragments in [
        ([GOOD, {**GOOD, "output": "x\ud800"}], ["list[1]", "'output'", "lone UTF-16 surrogate"]),
        ([GOOD, {**GOOD, "extra": deep}], ["list[1]", "nested too deeply"]),
    ]:
        with pytest.raises(UserError) as e:
            superfilter.score(records, model="tiny", artifact_root=tmp_path)
        assert_one_line(2, str(e.value), fragments)


def test_unknown_override_stops_run_py(tmp_path, capsys, good):
    code, message = run_pipeline(pipeline_overrides(good, tmp_path, "+foo=1", "+data.bar=2"), capsys)
    assert_one_line(code, message, ["unknown config keys data.bar, foo"])


def test_a_dollar_brace_path_is_literal_or_explained(tmp_path, capsys):
    path = tmp_path / "my${x}.jsonl"
    path.write_text("not json\n")
    code, message = run_pipeline(pipeline_overrides(path, tmp_path / "a"), capsys)
    assert_one_line(code, message, ["data.path", "\\${"])
    escaped = str(path).replace("${", "\\${")
    code, message = run_pipeline(pipeline_overrides(escaped, tmp_path / "a"), capsys)
    assert_one_line(code, message, ["my${x}.jsonl:1:", "neither a JSON array nor JSONL"])
    with pytest.raises(UserError, match=r"my\$\{x\}\.jsonl:1: neither"):
        superfilter.score(path, model="tiny", artifact_root=tmp_path / "a")


# Real processes


def assert_process_fails(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_real_processes_exit_2_with_one_line(tmp_path):
    pipe = fifo(tmp_path)
    latin = text_file("latin1.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n')(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *pipeline_overrides(pipe, tmp_path / "a"),
                             f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert_process_fails(result, "named pipe")  # refused, not read: reading a pipe would hang
    result = subprocess.run([sys.executable, "-m", "superfilter", "score", str(latin), "--out",
                             str(tmp_path / "out.jsonl"), "--model", "tiny", "--artifacts", str(tmp_path / "a")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert_process_fails(result, "latin1.jsonl:1: not UTF-8")


def test_inspect_names_a_corrupt_parquet(tmp_path, capsys):
    path = corrupt_parquet(tmp_path)
    capsys.readouterr()
    assert_one_line(main(["inspect", str(path)]), capsys.readouterr().err, ["good.parquet", "not a readable Parquet"])


def test_valid_but_unusual_files_score_alike(tmp_path):
    """A UTF-8 BOM and raw U+2028 inside a string are valid JSON: the file and the same records in memory score."""
    records = [{"instruction": "Line\u2028separator?", "output": "Yes, inside a string."}, GOOD]
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    from_file = superfilter.score(path, model="tiny", artifact_root=tmp_path / "a", max_length=64)
    in_memory = superfilter.score(records, model="tiny", artifact_root=tmp_path / "a", max_length=64)
    assert [r["instruction"] for r in from_file] == [r["instruction"] for r in records]
    assert [r["ifd"] for r in from_file] == [r["ifd"] for r in in_memory]


def test_artifact_root_or_out_folder_that_is_a_file(tmp_path, capsys, good):
    code, message = run_pipeline(pipeline_overrides(good, good), capsys)
    assert_one_line(code, message, [f"artifact_root={good}", "is a file, not a folder"])
    with pytest.raises(UserError) as e:
        superfilter.score(good, model="tiny", artifact_root=good / "sub")
    assert_one_line(2, str(e.value), ["artifact_root=", "is a file, not a folder"])
    capsys.readouterr()
    code = main(["score", str(good), "--out", str(good / "out.jsonl"), "--model", "tiny",
                 "--artifacts", str(tmp_path / "a")])
    assert_one_line(code, capsys.readouterr().err, [f"--out {good / 'out.jsonl'}", "is a file, not a folder"])
    assert not (tmp_path / "a").exists()


def test_in_memory_duplicates_are_named_by_position(tmp_path, caplog):
    superfilter.score([GOOD, GOOD], model="tiny", artifact_root=tmp_path, max_length=64)
    assert "list: dropped 1 exact duplicates, e.g. [\"list[1]:" in caplog.text
    assert ".records-" not in caplog.text
