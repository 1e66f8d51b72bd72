"""Loaders for every supported record shape, and the documented errors for malformed files."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from superfilter.data import DataConfig, Example, content_id, load_examples, read_examples, write_examples
from superfilter.errors import ConfigError, DataError


def load(path: Path, **kw):
    return load_examples(DataConfig(name="t", path=str(path), **kw))


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_alpaca_json_array(tmp_path):
    f = tmp_path / "a.json"
    f.write_text(json.dumps([
        {"instruction": "Add.", "input": "1+1", "output": "2"},
        {"instruction": "Greet.", "input": "", "output": "Hi"},
    ], indent=2))
    examples, report = load(f)
    assert [e.output for e in examples] == ["2", "Hi"]
    assert examples[0].prompt == "Add.\n1+1" and examples[1].prompt == "Greet."
    assert report.n_records == 2 and report.n_with_input == 1


def test_dolly_fields_and_field_mapping(tmp_path):
    dolly = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Q", "context": "C", "response": "R"}])
    (ex,), _ = load(dolly)
    assert (ex.instruction, ex.input, ex.output) == ("Q", "C", "R")
    custom = write_jsonl(tmp_path / "c.jsonl", [{"question": "Q?", "answer": "A."}])
    (ex,), _ = load(custom, fields={"instruction": "question", "output": "answer"})
    assert (ex.instruction, ex.input, ex.output) == ("Q?", "", "A.")


def test_sharegpt_and_messages_keep_history(tmp_path):
    f = write_jsonl(tmp_path / "s.jsonl", [
        {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "u1"},
                           {"from": "gpt", "value": "a1"}, {"from": "human", "value": "u2"},
                           {"from": "gpt", "value": "a2"}]},
        {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]},
    ])
    (first, second), report = load(f)
    assert (first.instruction, first.output, first.history, first.system) == ("u2", "a2", (("u1", "a1"),),
                                                                             "Be brief.")
    assert (second.instruction, second.output, second.history) == ("hello", "hi", ())
    assert report.n_multi_turn == 1


def test_llamafactory_history_field(tmp_path):
    f = write_jsonl(tmp_path / "h.jsonl", [
        {"instruction": "u2", "input": "", "output": "a2", "history": [["u1", "a1"]]}])
    (ex,), _ = load(f)
    assert ex.history == (("u1", "a1"),)


def test_parquet(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"instruction": "I", "input": "", "output": "O"}]), f)
    (ex,), _ = load(f)
    assert ex.output == "O"


def test_parquet_mixing_conversations_and_messages(tmp_path):
    f = tmp_path / "mixed.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"conversations": [{"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"}], "messages": None},
        {"conversations": None,
         "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
    ]), f)
    examples, _ = load(f)
    assert [(e.instruction, e.output) for e in examples] == [("q1", "a1"), ("q2", "a2")]


def test_ids_are_content_hashes_and_duplicates_are_reported(tmp_path):
    rec = {"instruction": "I", "input": "", "output": "O"}
    f = write_jsonl(tmp_path / "dup.jsonl", [rec, rec, {**rec, "output": "P"}])
    examples, report = load(f)
    assert len(examples) == 2 and report.n_duplicates == 1
    assert examples[0].id == content_id("I", "", "O") == Example.create("I", "", "O").id
    assert examples[0].id != examples[1].id


def test_empty_fields_are_counted(tmp_path):
    f = write_jsonl(tmp_path / "e.jsonl", [{"instruction": "I", "output": ""}, {"instruction": "", "output": "O"}])
    _, report = load(f)
    assert report.n_empty_output == 1 and report.n_empty_instruction == 1


def test_limit_and_round_trip(tmp_path):
    f = write_jsonl(tmp_path / "l.jsonl", [{"instruction": f"I{i}", "output": "O"} for i in range(5)])
    examples, _ = load(f, limit=3)
    assert len(examples) == 3
    write_examples(examples, tmp_path / "out.jsonl")
    assert read_examples(tmp_path / "out.jsonl") == examples


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', ".jsonl",
         r"x\.jsonl:2: invalid JSON"),
        ('[\n {"instruction": "a", "output": "b"},\n {"instruction": "c"}\n]', ".json",
         r"x\.json:3: missing field 'output'"),
        ('{"instruction": "a", "output": 3}\n', ".jsonl", r"x\.jsonl:1: field 'output' must be a string, got int"),
        ('[\n {"instruction": "a", "output": "b"}\n {"instruction": "c", "output": "d"}]', ".json",
         r"x\.json:3: invalid JSON"),
        ("", ".jsonl", r"x\.jsonl: file is empty"),
        ("[]", ".json", r"x\.json: no records"),
        ('{"conversations": [{"from": "gpt", "value": "hi"}]}\n', ".jsonl",
         r"x\.jsonl:1: .*assistant turn without a user"),
        ('["just a string"]', ".json", r"x\.json:1: record must be a JSON object"),
    ],
)
def test_malformed_files_name_file_line_and_field(tmp_path, content, suffix, message):
    f = tmp_path / f"x{suffix}"
    f.write_text(content)
    with pytest.raises(DataError, match=message):
        load(f)


def test_missing_file_and_bad_config(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match="data.path"):
        load_examples(DataConfig(name="x"))
    with pytest.raises(ConfigError, match="data.format"):
        load_examples(DataConfig(name="x", path="a.json", format="csv"))


def test_unreachable_hub_dataset_says_what_to_do():
    with pytest.raises(DataError, match=r"data\.path.*data=alpaca_5k"):
        load_examples(DataConfig(name="alpaca", hub_id="tatsu-lab/alpaca"))


def test_bundled_alpaca_5k():
    examples, report = load_examples(DataConfig(name="alpaca_5k", path="data/alpaca_5000.json"))
    assert (report.n_records, report.n_duplicates, report.n_with_input, report.n_empty_output) == (5000, 0, 1943, 2)
    assert len({e.id for e in examples}) == 5000


def test_utf8_bom_and_raw_line_separators_are_valid(tmp_path):
    records = [{"instruction": "Split\u2028here\u2029and\x85here?", "output": "No: JSON strings may hold them raw."},
               {"instruction": "b", "output": "c"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(records, ensure_ascii=False).encode())
    for name in ("bom.jsonl", "bom.json"):
        examples, _ = load(tmp_path / name)
        assert [ex.instruction for ex in examples] == [r["instruction"] for r in records]


def test_conversation_oddities_are_counted_and_warned(tmp_path, caplog):
    f = write_jsonl(tmp_path / "c.jsonl", [
        {"conversations": [{"from": "system", "value": "First."}, {"from": "human", "value": "u1"},
                           {"from": "gpt", "value": "a1"}, {"from": "system", "value": "Second."},
                           {"from": "human", "value": "dangling"}]},
        {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]},
    ])
    (first, _), report = load(f)
    assert (first.instruction, first.output, first.system) == ("u1", "a1", "Second.")
    assert (report.n_trailing_user_turn, report.n_repeated_system) == (1, 1)
    assert "1 conversations end in a user turn" in caplog.text
    assert "1 conversations have more than one system message" in caplog.text


def test_json_array_lines_are_counted_forward(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)] + [{"instruction": "q"}]
    (tmp_path / "a.json").write_text("[\n" + ",\n\n".join(json.dumps(r) for r in rows) + "\n]")
    with pytest.raises(DataError, match=r"a\.json:8: missing field 'output'"):
        load(tmp_path / "a.json")
