"""Any instruction-data source (Alpaca/Dolly/WizardLM JSON, ShareGPT/messages, Parquet, Hub) → `Example`s."""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
import stat
import sys
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from superfilter.contracts import PROJECT_ROOT
from superfilter.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("auto", "alpaca", "dolly", "sharegpt")
# Column names of each flat format: our field → the source's field.
FIELD_PRESETS: dict[str, dict[str, str]] = {
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output"},
    "dolly": {"instruction": "instruction", "input": "context", "output": "response"},
}
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "model", "chatgpt", "bard", "bing"}
SYSTEM_ROLES = {"system"}
COMMIT = re.compile(r"[0-9a-f]{40}")  # a full git commit hash: the only revision that never moves


@dataclass
class DataConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("streaming",)  # how the records are read, never which

    name: str = "tiny"
    path: str = ""  # a local JSON/JSONL/Parquet file; relative paths resolve against the cwd, then the project
    hub_id: str = ""  # a Hugging Face dataset id (or a local folder laid out like one), used when `path` is empty
    hub_split: str = "train"
    # The Hub dataset's commit, branch or tag; empty = the default branch. Resolved to a commit before anything is
    # read: the commit is part of the prepare key, so a dataset changed on the Hub is a new artifact.
    revision: str = ""
    config: str = ""  # the Hub dataset's configuration (load_dataset's `name`); empty = its default
    data_files: list[str] = field(default_factory=list)  # files or globs inside the Hub dataset; empty = all
    streaming: bool = False  # read the Hub dataset record by record: pools larger than memory
    format: str = "auto"  # auto | alpaca | dolly | sharegpt
    fields: dict[str, str] = field(default_factory=dict)  # our name → source column, e.g. {output: answer}
    limit: int = 0  # keep only the first N records (0 = all); part of the artifact key

    def unused_fields(self) -> tuple[str, ...]:
        """The Hub-only settings when a local file is read (kept out of its prepare key)."""
        return ("revision", "config", "data_files") if self.path else ()

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
        if self.streaming and self.path:
            raise ConfigError("data.streaming=true reads Hub datasets (data.hub_id); data.path files are read whole")


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


# Reading raw records with their line numbers

# What a file that is not JSON text starts with, and what to do about it.
BINARY_MAGIC = {
    b"\x1f\x8b": ("gzip-compressed data", "decompress it first (gunzip)"),
    b"PK\x03\x04": ("a zip archive", "extract the JSON/JSONL/Parquet file from it"),
    b"BZh": ("bzip2-compressed data", "decompress it first (bunzip2)"),
    b"\xfd7zXZ\x00": ("xz-compressed data", "decompress it first (unxz)"),
    b"\x28\xb5\x2f\xfd": ("zstd-compressed data", "decompress it first (unzstd)"),
    b"PAR1": ("a Parquet file", "name it .parquet"),
}
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
# A JSON string escape of a UTF-16 surrogate: paired ones (emoji written with ensure_ascii) are fine, a lone one
# decodes to a str that cannot be encoded as UTF-8; only records whose text holds such an escape are checked.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
FILE_KINDS = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
              (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def resolve_path(path: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or os.path.lexists(p):
        return p
    if (PROJECT_ROOT / p).exists():
        return PROJECT_ROOT / p
    return p


def check_source_file(path: Path) -> None:
    """Refuse anything but a readable regular file, saying what the path is instead (reading a pipe would hang)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"{path}: broken symbolic link (its target {os.readlink(path)} does not exist)") from None
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: symbolic link loop") from None
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a directory; give a JSON, JSONL or Parquet file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in FILE_KINDS if test(mode)), "not a regular file")
        raise DataError(f"{path}: is {kind}, not a regular file; give a JSON, JSONL or Parquet file")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: permission denied")


def file_container(path: Path) -> str:
    """json (an array), jsonl or parquet: how iter_raw_records reads the file."""
    if path.suffix.lower() == ".parquet":
        return "parquet"
    with open(path, "rb") as f:
        head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    return "json" if path.suffix.lower() != ".jsonl" and head.startswith(b"[") else "jsonl"


def decode_text(path: Path, data: bytes) -> str:
    """The file as text: UTF-8 (a BOM is dropped); anything else fails saying what the bytes look like."""
    for magic, (what, fix) in BINARY_MAGIC.items():
        if data.startswith(magic):
            raise DataError(f"{path}: this is {what}, not JSON or JSONL text; {fix}")
    head = data[:4096]
    if data.startswith(UTF32_BOMS):
        raise DataError(f"{path}: encoded as UTF-32; re-save it as UTF-8 (e.g. iconv -f UTF-32 -t UTF-8)")
    even, odd = head[0::2].count(0), head[1::2].count(0)
    if data.startswith(UTF16_BOMS) or max(even, odd) > len(head) // 4 > min(even, odd) * 4:  # ASCII as UTF-16
        raise DataError(f"{path}: encoded as UTF-16; re-save it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\x00" in head:
        raise DataError(f"{path}: holds NUL bytes: binary data, not JSON or JSONL text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {column}); it may be "
                        f"Latin-1 or Windows-1252: re-save it as UTF-8 (e.g. iconv -f WINDOWS-1252 -t UTF-8)") from None


def lone_surrogate_field(record: Any) -> str | None:
    """The path (a.b[2]) of the first string in record that holds a lone surrogate, if any."""
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return where or "(the record)"
        elif isinstance(value, Mapping):
            for key, item in value.items():
                stack.append((f"{where}.{key}" if where else str(key), item))
                stack.append((f"{where} (a key)" if where else "(a key)", key))
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def check_encodable(record: Any, where: str) -> None:
    """A lone surrogate ("\\ud800" is valid JSON) is not Unicode text: it could be neither hashed nor written."""
    field_path = lone_surrogate_field(record)
    if field_path is not None:
        raise DataError(f"{where}: field {field_path!r} holds a lone UTF-16 surrogate (an escape like \\ud800 "
                        "without its pair): not valid Unicode text; remove or fix it")


def _json_error(e: json.JSONDecodeError) -> str:
    # Some of json's messages end in "starting at"; the column then completes the sentence.
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


def _too_deep(path: Path, lineno: int) -> DataError:
    return DataError(f"{path}:{lineno}: JSON nested too deeply for Python's parser "
                     f"(more than about {sys.getrecursionlimit()} levels)")


def iter_raw_records(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, record) from a .json array, .jsonl, or .parquet file."""
    check_source_file(path)
    if path.suffix.lower() == ".parquet":
        yield from _iter_parquet(path)
        return
    text = decode_text(path, path.read_bytes())
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        yield from _iter_json_array(path, text)
    else:
        yield from _iter_jsonl(path, text)


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    # deferred: pyarrow loads only for Parquet files
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None
    for i, row in enumerate(rows):
        yield i + 1, row  # parquet has no lines: the row number stands in


def _iter_jsonl(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    # Split on newlines only: str.splitlines() also splits at U+2028/U+2029/U+0085, which JSON strings may hold raw.
    first = True
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if first:
                _explain_first_line(path, text)
            raise DataError(f"{path}:{lineno}: invalid JSON ({_json_error(e)})") from None
        except RecursionError:
            raise _too_deep(path, lineno) from None
        if SURROGATE_ESCAPE.search(line):
            check_encodable(record, f"{path}:{lineno}")
        first = False
        yield lineno, record


def _explain_first_line(path: Path, text: str) -> None:
    """A first line that is not JSON: say when the file is one JSON object rather than records."""
    if not text.lstrip().startswith("{"):
        raise DataError(f"{path}:1: neither a JSON array nor JSONL (one JSON object per line)")
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return
    if isinstance(whole, dict):
        lists = [k for k, v in whole.items() if isinstance(v, list)]
        hint = f"; its field {lists[0]!r} holds a list: save that list as the file" if lists else ""
        raise DataError(f"{path}: one JSON object; expected a JSON array of records or JSONL "
                        f"(one record per line){hint}")


def _iter_json_array(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    expect_value = True
    counted, lineno = 0, 1  # newlines are counted forward from the last record: counting from 0 is quadratic
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            raise DataError(f"{path}:{text.count(chr(10)) + 1}: invalid JSON (unterminated array)")
        if text[pos] == "]":
            _check_nothing_after(path, text, pos + 1)
            return
        if text[pos] == "," and not expect_value:
            pos += 1
            expect_value = True
            continue
        lineno += text.count("\n", counted, pos)
        counted = pos
        if not expect_value:
            raise DataError(f"{path}:{lineno}: invalid JSON (expected ',' or ']')")
        start = pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: invalid JSON ({_json_error(e)})") from None
        except RecursionError:
            raise _too_deep(path, lineno) from None
        if SURROGATE_ESCAPE.search(text, start, pos):
            check_encodable(record, f"{path}:{lineno}")
        expect_value = False
        yield lineno, record


def _check_nothing_after(path: Path, text: str, pos: int) -> None:
    rest = text[pos:]
    if rest.strip():
        offset = pos + len(rest) - len(rest.lstrip())
        lineno = text.count("\n", 0, offset) + 1
        what = "a second JSON array starts; merge the arrays into one" if text[offset] == "[" else \
            "unexpected content after the array's closing ']'"
        raise DataError(f"{path}:{lineno}: {what}")


# One raw record → Example


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


def parse_conversation(record: Mapping[str, Any], fields: Mapping[str, str], where: str,
                       counts: Counter[str] | None = None) -> Example:
    """The last assistant reply and the turns before it. A trailing user turn (no reply to score) and a repeated
    system message (the last one is kept) are counted in `counts` for the load report's warnings."""
    key = fields.get("conversations") or ("conversations" if record.get("conversations") is not None else "messages")
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of turns")
    system = _string(record, fields.get("system", "system"), where, required=False)
    n_system = bool(system)
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
            n_system += 1
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
    if counts is not None:
        counts["trailing_user_turn"] += pending_user is not None
        counts["repeated_system"] += n_system > 1
    (instruction, output), history = pairs[-1], pairs[:-1]
    return Example.create(instruction, "", output, history, system)


def parse_record(record: Any, fmt: str, fields: Mapping[str, str], where: str,
                 counts: Counter[str] | None = None) -> Example:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: record must be a JSON object, got {type(record).__name__}")
    kind = detect_format(record, fields) if fmt == "auto" else fmt
    if kind == "sharegpt":
        return parse_conversation(record, fields, where, counts)
    return parse_flat(record, {**FIELD_PRESETS[kind], **fields}, where)


def is_blank(text: str) -> bool:
    """Nothing visible: empty, or only whitespace and invisible format characters (zero-width space, joiners,
    BOM). The one rule for an empty response: prepare counts these and scoring skips them as empty_response."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


# Loading a whole source


@dataclass
class LoadReport:
    n_records: int = 0
    n_duplicates: int = 0
    n_empty_instruction: int = 0
    n_empty_output: int = 0
    n_with_input: int = 0
    n_multi_turn: int = 0
    n_trailing_user_turn: int = 0  # conversations ending in a user turn: that turn has no reply and is dropped
    n_repeated_system: int = 0  # conversations with several system messages: the last one is kept
    duplicate_examples: list[str] = field(default_factory=list)


def load_examples(cfg: DataConfig, label: str | None = None, revision: str = "") -> tuple[list[Example], LoadReport]:
    """Read the configured source, drop exact duplicates (reported), count empty fields. `label`: how to name a
    file the caller wrote from in-memory records, one per line (record i is `label[i]`, not a line of that file).
    revision: the commit a Hub source is read at (resolve_revision)."""
    report = LoadReport()
    return list(iter_examples(cfg, report, label, revision)), report


def iter_examples(cfg: DataConfig, report: LoadReport, label: str | None = None,
                  revision: str = "") -> Iterator[Example]:
    """load_examples one record at a time: a streamed Hub dataset never has to fit in memory. `report` is complete
    once the iterator is exhausted."""
    cfg.validate()
    if cfg.path:
        path = resolve_path(cfg.path)
        source = label or str(path)
        records: Iterable[tuple[int, Any]] = iter_raw_records(path)
    else:
        source = f"hub:{cfg.hub_id}"
        records = _iter_hub(cfg, revision)
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    for lineno, record in records:
        if cfg.limit and report.n_records >= cfg.limit:
            break
        where = f"{label}[{lineno - 1}]" if label else f"{source}:{lineno}"
        ex = parse_record(record, cfg.format, cfg.fields, where, counts)
        if ex.id in seen:
            report.n_duplicates += 1
            if len(report.duplicate_examples) < 5:
                name = where if label else f"line {lineno}"
                report.duplicate_examples.append(f"{name}: {ex.instruction[:60]!r}")
            continue
        seen.add(ex.id)
        report.n_records += 1
        report.n_empty_instruction += not ex.instruction.strip()
        report.n_empty_output += is_blank(ex.output)
        report.n_with_input += bool(ex.input.strip())
        report.n_multi_turn += bool(ex.history)
        yield ex
    if not report.n_records:
        raise DataError(f"{source}: no records")
    report.n_trailing_user_turn = counts["trailing_user_turn"]
    report.n_repeated_system = counts["repeated_system"]
    if report.n_duplicates:
        log.warning("%s: dropped %d exact duplicates, e.g. %s", source, report.n_duplicates,
                    report.duplicate_examples[:2])
    if report.n_empty_output:
        log.warning("%s: %d records have an empty or blank output (they will be skipped by scoring)",
                    source, report.n_empty_output)
    if report.n_trailing_user_turn:
        log.warning("%s: %d conversations end in a user turn with no reply; that turn is dropped",
                    source, report.n_trailing_user_turn)
    if report.n_repeated_system:
        log.warning("%s: %d conversations have more than one system message; the last one is kept",
                    source, report.n_repeated_system)


# Hub datasets, pinned to a commit


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def resolve_revision(cfg: DataConfig) -> str:
    """The commit a Hub source is read at: data.revision when it is a full commit hash; else the commit the branch
    or tag (default branch when empty) names now; offline, the commit of the cached copy `datasets` will read.
    A local folder in data.hub_id: `sha256:` and the digest of its files. Empty for data.path sources (their key
    holds the file's digest)."""
    if cfg.path:
        return ""
    folder = Path(cfg.hub_id).expanduser()
    if folder.is_dir():
        return f"sha256:{folder_digest(folder)}"
    if COMMIT.fullmatch(cfg.revision):
        return cfg.revision
    commit = None if hub_offline() else hub_commit(cfg.hub_id, cfg.revision)
    if commit is None:
        commit = cached_commit(cfg.hub_id, cfg.config)
        if commit is None:
            raise DataError(f"hub:{cfg.hub_id}: the Hub is unreachable and `datasets` has no cached copy; run once "
                            "online, or point data.path at a local copy (JSON/JSONL/Parquet)")
        if cfg.revision:
            log.warning("hub:%s: offline, data.revision=%s cannot be resolved; reading the cached commit %s",
                        cfg.hub_id, cfg.revision, commit)
        log.info("hub:%s: offline, reading the cached copy at commit %s", cfg.hub_id, commit)
    return commit


def hub_commit(repo_id: str, revision: str) -> str | None:
    """The commit `revision` (default branch when empty) names on the Hub now; None when the Hub does not answer."""
    # deferred: the Hub client loads only for Hub sources
    import huggingface_hub
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return huggingface_hub.HfApi().dataset_info(repo_id, revision=revision or None).sha
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise DataError(f"hub:{repo_id}: {str(e).splitlines()[0][:200]}") from None
    except (OfflineModeIsEnabled, OSError, *http_errors()) as e:  # OSError includes the Hub's HTTP errors
        log.warning("hub:%s: could not ask the Hub for the current commit (%s)", repo_id, type(e).__name__)
        return None


def http_errors() -> tuple[type[Exception], ...]:
    """The HTTP clients' base errors: huggingface_hub uses httpx or, in its newer releases, httpx2."""
    found = []
    for name in ("httpx", "httpx2"):
        if importlib.util.find_spec(name) is not None:
            found.append(importlib.import_module(name).HTTPError)
    return tuple(found)


def cached_commit(repo_id: str, config: str) -> str | None:
    """The commit of the cached copy that `datasets` reads offline: its most recently written cache folder
    (<cache>/<namespace>___<name>/<config>/<version>/<commit>), as datasets' own Cache builder picks it."""
    # deferred: datasets loads only for Hub sources
    from datasets import config as datasets_config
    from datasets.naming import camelcase_to_snakecase

    *namespace, name = repo_id.split("/")
    root = Path(datasets_config.HF_DATASETS_CACHE).expanduser() / "___".join([*namespace,
                                                                               camelcase_to_snakecase(name)])
    found = [p for p in root.glob(f"{config or '*'}/*/*") if p.is_dir() and COMMIT.fullmatch(p.name)]
    return max(found, key=lambda p: p.stat().st_mtime).name if found else None


def folder_digest(folder: Path) -> str:
    """sha256 over the relative path and content of every file in folder (hidden files and folders left out)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if not any(part.startswith(".") for part in relative.parts):
            h.update(f"{relative.as_posix()}\0{file_digest(path)}\0".encode())
    return h.hexdigest()


def _iter_hub(cfg: DataConfig, revision: str) -> Iterator[tuple[int, Any]]:
    commit = revision if COMMIT.fullmatch(revision) else None
    if Path(cfg.hub_id).expanduser().is_dir():
        # Its digest was taken just now: `datasets` tells a changed local file by its time alone and could hand
        # back an older copy from its cache, so a local folder gets a cache of its own for this read.
        with tempfile.TemporaryDirectory(prefix="superfilter-hub-") as cache:
            yield from _iter_dataset(cfg, None, cache)
    else:
        yield from _iter_dataset(cfg, commit, None)


def _iter_dataset(cfg: DataConfig, commit: str | None, cache_dir: str | None) -> Iterator[tuple[int, Any]]:
    # deferred: datasets loads only for Hub sources
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub_id, cfg.config or None, split=cfg.hub_split, revision=commit,
                                   data_files={cfg.hub_split: list(cfg.data_files)} if cfg.data_files else None,
                                   streaming=cfg.streaming, cache_dir=cache_dir)
    except Exception as e:  # any failure to reach or read the Hub becomes one actionable message
        raise DataError(
            f"could not load Hub dataset {cfg.hub_id!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            f"Point data.path at a local copy (JSON/JSONL/Parquet), or use data=alpaca_5k (bundled)."
        ) from e
    read = loaded_commit(ds)
    if commit and read and read != commit:
        raise DataError(f"hub:{cfg.hub_id}: asked for commit {commit} but `datasets` read its cached copy of {read}; "
                        f"set data.revision={read} to use that copy, or run online")
    for i, row in enumerate(ds):
        yield i + 1, row


def loaded_commit(ds: Any) -> str | None:
    """The commit of a Hub dataset `datasets` read from its cache (the cache folder's name); None when streamed."""
    files = getattr(ds, "cache_files", None) or []
    name = Path(files[0]["filename"]).parent.name if files else ""
    return name if COMMIT.fullmatch(name) else None


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
