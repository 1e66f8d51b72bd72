"""Any instruction-data source (Alpaca/Dolly/WizardLM JSON, ShareGPT/messages, Parquet, Hub) → `Example`s."""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from superfilter.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("auto", "alpaca", "dolly", "sharegpt")
# Column names of each flat format: our field → the source's field.
FIELD_PRESETS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
}
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "model", "chatgpt", "bard", "bing"}
SYSTEM_ROLES = {"system"}


@dataclass
class DataConfig:
    name: str = "tiny"
    path: str = ""  # a local JSON/JSONL/Parquet file; relative paths resolve against the cwd, then the project
    hub_id: str = ""  # a Hugging Face dataset id, used when `path` is empty
    hub_split: str = "train"
    format: str = "auto"  # auto | alpaca | dolly | sharegpt
    fields: dict[str, str] = field(default_factory=dict)  # our name → source column, e.g. {output: answer}
    limit: int = 0  # keep only the first N records (0 = all); part of the artifact key

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"data.format must be one of {FORMATS}, got {self.format!r}")
        if not self.path and not self.hub_id:
            raise ConfigError(f"data={self.name}: set data.path=<file> or data.hub_id=<dataset id>")
        bad = set(self.fields) - {"instruction", "input", "output", "system", "history", "conversations"}
        if bad:
            raise ConfigError(f"data.fields: unknown target fields {sorted(bad)}")
        if self.limit < 0:
            raise ConfigError(f"data.limit must be >= 0, got {self.limit}")


@dataclass(frozen=True)
class Example:
    """One training record. Multi-turn records keep earlier (user, assistant) turns in `history`;
    `instruction`/`output` are always the last turn, the one Superfiltering scores by default."""

    id: str
    instruction: str
    input: str
    output: str
    history: tuple[tuple[str, str], ...] = ()
    system: str = ""

    @classmethod
    def create(
        cls, instruction: str, input: str, output: str,
        history: Iterable[tuple[str, str]] = (), system: str = "",
    ) -> Example:
        hist = tuple((str(u), str(a)) for u, a in history)
        return cls(content_id(instruction, input, output, hist, system), instruction, input, output, hist, system)

    @property
    def prompt(self) -> str:
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["history"] = [list(t) for t in self.history]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Example:
        return cls(
            d["id"], d["instruction"], d.get("input", ""), d["output"],
            tuple((u, a) for u, a in d.get("history", ())), d.get("system", ""),
        )


def content_id(instruction: str, input: str, output: str, history: tuple = (), system: str = "") -> str:
    """Stable id: the same content gets the same id on every machine and in every order."""
    payload = json.dumps([instruction, input, output, [list(t) for t in history], system], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- reading raw records with their line numbers


def resolve_path(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    if (PROJECT_ROOT / p).exists():
        return PROJECT_ROOT / p
    return p


def iter_raw_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) from a .json array, .jsonl, or .parquet file."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield i + 1, row  # parquet has no lines: the row number stands in
        return
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if suffix == ".jsonl" or not text.lstrip().startswith("["):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        return
    yield from _iter_json_array(path, text)


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    expect_value = True
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            raise DataError(f"{path}:{text.count(chr(10)) + 1}: invalid JSON (unterminated array)")
        if text[pos] == "]":
            return
        if text[pos] == "," and not expect_value:
            pos += 1
            expect_value = True
            continue
        lineno = text.count("\n", 0, pos) + 1
        if not expect_value:
            raise DataError(f"{path}:{lineno}: invalid JSON (expected ',' or ']')")
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
        expect_value = False
        yield lineno, record


# ---------------------------------------------------------------- one raw record → Example


def detect_format(record: Mapping[str, Any], fields: Mapping[str, str]) -> str:
    # A column that is null in this row (mixed Parquet files) does not count as present.
    if fields.get("conversations") or record.get("conversations") is not None or record.get("messages") is not None:
        return "sharegpt"
    if "response" in record and "output" not in record:
        return "dolly"
    return "alpaca"


def _string(record: Mapping[str, Any], key: str, where: str, required: bool) -> str:
    if key not in record or record[key] is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def parse_flat(record: Mapping[str, Any], columns: Mapping[str, str], where: str) -> Example:
    history_raw = record.get(columns.get("history", "history")) or []
    if not isinstance(history_raw, list) or not all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in history_raw
    ):
        raise DataError(f"{where}: field 'history' must be a list of [user, assistant] string pairs")
    return Example.create(
        instruction=_string(record, columns["instruction"], where, required=True),
        input=_string(record, columns.get("input", "input"), where, required=False),
        output=_string(record, columns["output"], where, required=True),
        history=[tuple(t) for t in history_raw],
        system=_string(record, columns.get("system", "system"), where, required=False),
    )


def parse_conversation(record: Mapping[str, Any], fields: Mapping[str, str], where: str) -> Example:
    key = fields.get("conversations") or ("conversations" if record.get("conversations") is not None else "messages")
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns")
    system = record.get("system", "") if isinstance(record.get("system", ""), str) else ""
    pairs: list[tuple[str, str]] = []
    pending_user: str | None = None
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise DataError(f"{where}: {key}[{i}] must be an object")
        role = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if not isinstance(role, str):
            raise DataError(f"{where}: {key}[{i}]: missing field 'from'/'role'")
        if not isinstance(text, str):
            raise DataError(f"{where}: {key}[{i}]: field 'value'/'content' must be a string")
        role = role.lower()
        if role in SYSTEM_ROLES:
            system = text
        elif role in USER_ROLES:
            if pending_user is not None:
                raise DataError(f"{where}: {key}[{i}]: two user turns in a row")
            pending_user = text
        elif role in ASSISTANT_ROLES:
            if pending_user is None:
                raise DataError(f"{where}: {key}[{i}]: assistant turn without a user turn before it")
            pairs.append((pending_user, text))
            pending_user = None
        else:
            raise DataError(f"{where}: {key}[{i}]: unknown role {role!r}")
    if not pairs:
        raise DataError(f"{where}: {key} has no assistant reply")
    (instruction, output), history = pairs[-1], pairs[:-1]
    return Example.create(instruction, "", output, history, system)


def parse_record(record: Any, fmt: str, fields: Mapping[str, str], where: str) -> Example:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: record must be a JSON object, got {type(record).__name__}")
    kind = detect_format(record, fields) if fmt == "auto" else fmt
    if kind == "sharegpt":
        return parse_conversation(record, fields, where)
    return parse_flat(record, {**FIELD_PRESETS[kind], **fields}, where)


def is_blank(text: str) -> bool:
    """Nothing visible: empty, or only whitespace and invisible format characters (zero-width space, joiners,
    BOM). The one rule for an empty response: prepare counts these and scoring skips them as empty_response."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


# ---------------------------------------------------------------- loading a whole source


@dataclass
class LoadReport:
    n_records: int = 0
    n_duplicates: int = 0
    n_empty_instruction: int = 0
    n_empty_output: int = 0
    n_with_input: int = 0
    n_multi_turn: int = 0
    duplicate_examples: list[str] = field(default_factory=list)


def load_examples(cfg: DataConfig) -> tuple[list[Example], LoadReport]:
    """Read the configured source, drop exact duplicates (reported), count empty fields."""
    cfg.validate()
    if cfg.path:
        path = resolve_path(cfg.path)
        source = str(path)
        records: Iterable[tuple[int, Any]] = iter_raw_records(path)
    else:
        source = f"hub:{cfg.hub_id}"
        records = _iter_hub(cfg)
    examples: list[Example] = []
    seen: set[str] = set()
    report = LoadReport()
    for lineno, record in records:
        if cfg.limit and len(examples) >= cfg.limit:
            break
        ex = parse_record(record, cfg.format, cfg.fields, f"{source}:{lineno}")
        if ex.id in seen:
            report.n_duplicates += 1
            if len(report.duplicate_examples) < 5:
                report.duplicate_examples.append(f"line {lineno}: {ex.instruction[:60]!r}")
            continue
        seen.add(ex.id)
        examples.append(ex)
        report.n_empty_instruction += not ex.instruction.strip()
        report.n_empty_output += is_blank(ex.output)
        report.n_with_input += bool(ex.input.strip())
        report.n_multi_turn += bool(ex.history)
    if not examples:
        raise DataError(f"{source}: no records")
    report.n_records = len(examples)
    if report.n_duplicates:
        log.warning("%s: dropped %d exact duplicates, e.g. %s", source, report.n_duplicates,
                    report.duplicate_examples[:2])
    if report.n_empty_output:
        log.warning("%s: %d records have an empty or blank output (they will be skipped by scoring)",
                    source, report.n_empty_output)
    return examples, report


def _iter_hub(cfg: DataConfig) -> Iterator[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub_id, split=cfg.hub_split)
    except Exception as e:  # any failure to reach or read the Hub becomes one actionable message
        raise DataError(
            f"could not load Hub dataset {cfg.hub_id!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"Point data.path at a local copy (JSON/JSONL/Parquet), or use data=alpaca_5k (bundled)."
        ) from e
    for i, row in enumerate(ds):
        yield i + 1, row


def write_examples(examples: Iterable[Example], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")


def read_examples(path: Path) -> list[Example]:
    with open(path, encoding="utf-8") as f:
        return [Example.from_dict(json.loads(line)) for line in f if line.strip()]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
