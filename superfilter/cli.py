"""The `superfilter` command: filter, score and inspect instruction-data files, on the pipeline's engine and cache."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from superfilter.artifacts import atomic_path, check_root, read_json
from superfilter.contracts import DEFAULT_MODEL, EXAMPLES_FILE, STAGE_CONFIG_FILE
from superfilter.data import FORMATS, check_source_file, file_container, parse_record, read_examples
from superfilter.errors import EXIT_USER_ERROR, DataError, UserError

log = logging.getLogger("superfilter")

CONTAINERS = {".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}
OUTPUT_FORMATS = ("json", "jsonl", "parquet", "alpaca", "sharegpt")
PREVIEW_CHARS = 70
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message is what a user needs to fix the command.
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# Arguments.


def key_values(text: str) -> dict[str, str]:
    """`instruction=question,output=answer` → {"instruction": "question", "output": "answer"}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise argparse.ArgumentTypeError(f"expected NAME=COLUMN[,NAME=COLUMN...], got {text!r}")
    return {k.strip(): v.strip() for k, v in pairs}


def option_value(text: str) -> tuple[str, Any]:
    """`KEY=VALUE` with VALUE read as YAML (0.2 → float, true → bool, text → str)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        return key.strip(), value


def count_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="JSON, JSONL or Parquet: Alpaca, Dolly, ShareGPT/messages records")
    p.add_argument("--out", "-o", required=True, metavar="OUT", help="where to write the records")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="scoring model: a conf/model name (smollm2_135m, gpt2, tiny, ...), a local folder or a Hub id "
                        f"(default {DEFAULT_MODEL})")
    p.add_argument("--format", choices=OUTPUT_FORMATS,
                   help="output: json|jsonl|parquet keep your records as they are; alpaca|sharegpt rewrite them in "
                        "that schema (default: OUT's extension, else the input's format)")
    p.add_argument("--input-format", choices=FORMATS, default="auto", help="the input's schema (default: detected)")
    p.add_argument("--fields", type=key_values, default={}, metavar="NAME=COLUMN,...",
                   help="your column names, e.g. instruction=question,output=answer")
    p.add_argument("--prompt", help="scoring prompt: none (Superfiltering) | alpaca (Cherry) | chat")
    p.add_argument("--ifd-form", help="ppl_ratio (Superfiltering) | loss_ratio (Cherry)")
    p.add_argument("--turns", help="multi-turn records: last | each")
    p.add_argument("--max-length", type=int, help="tokens per scoring pass (default 1024)")
    p.add_argument("--batch-tokens", type=int,
                   help="padded tokens per forward pass (default: auto, 1024 on CPU, 16384 on GPU)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", dest="options", type=option_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of superfilter.score/select, e.g. --set boundary=exact (repeatable)")
    p.add_argument("--artifacts", metavar="DIR",
                   help="cache root (default $SUPERFILTER_ARTIFACTS, else ~/.cache/superfilter/artifacts)")
    p.add_argument("--force", action="store_true", help="allow OUT to be IN (IN is replaced by the output)")
    p.add_argument("--quiet", "-q", action="store_true", help="warnings and errors only")


def build_parser() -> Parser:
    parser = Parser(prog="superfilter", description="Score instruction data by IFD with a small model and keep the "
                                                    "best (Superfiltering, ACL 2024).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    filt = commands.add_parser("filter", help="score IN and write the best --ratio of it to OUT",
                               description="Score IN with --model, keep the best --ratio by --method, write to OUT.")
    add_data_arguments(filt)
    filt.add_argument("--ratio", type=float, default=0.1, help="share of the records to keep (default 0.1)")
    filt.add_argument("--method", default="superfilter",
                      help="superfilter (IFD < 1, highest first; default) | superfilter_d | self_ifd | perplexity | "
                           "length | random | kmeans | full")
    filt.add_argument("--count", type=count_at_least(1), help="keep exactly this many records instead of --ratio")
    filt.add_argument("--budget-tokens", type=count_at_least(1), metavar="N",
                      help="instead of --ratio: the records in --method's order while their tokens (of --model's "
                           "tokenizer) total at most N")
    filt.add_argument("--budget-tokens-of", choices=("response", "example"),
                      help="what --budget-tokens counts: response (default) | example (prompt and response)")
    filt.add_argument("--seed", type=int, default=42)
    filt.add_argument("--allow-empty", action="store_true",
                      help="write an empty OUT (with a warning) when nothing is selected, instead of failing")
    sc = commands.add_parser("score", help="write IN with score columns added to OUT",
                             description="Add IFD and perplexity columns to every record of IN; write to OUT.")
    add_data_arguments(sc)
    ins = commands.add_parser("inspect", help="summarise a scored file",
                              description="Counts, skip reasons, IFD quantiles, top and bottom examples.")
    ins.add_argument("scores", metavar="SCORES",
                     help="the output of `superfilter score`, a subset.jsonl, or a score stage's scores.parquet "
                          "(its records are read from the prepare stage it names)")
    ins.add_argument("--top", type=count_at_least(0), default=5, help="examples shown at each end (default 5)")
    ins.add_argument("--fields", type=key_values, default={}, metavar="NAME=COLUMN,...")
    mod = commands.add_parser("models", help="prepare models once and print their local folders",
                              description="Convert bundled GGUF models (or build tiny ones) into the model cache now, "
                                          "one process per model, and print each local folder; Hub models print "
                                          "their id (from_pretrained fetches them).")
    mod.add_argument("names", nargs="+", metavar="NAME", help="conf/model names, e.g. smollm2_135m gemma3_270m")
    return parser


# Options with their own flag: `--set` may not set them too (two values for one option, one silently lost).
OWN_FLAGS = {"model": "--model", "format": "--input-format", "fields": "--fields", "artifact_root": "--artifacts",
             "prompt": "--prompt", "ifd_form": "--ifd-form", "turns": "--turns", "max_length": "--max-length",
             "batch_tokens": "--batch-tokens", "device": "--device", "ratio": "--ratio", "method": "--method",
             "count": "--count", "seed": "--seed", "allow_empty": "--allow-empty",
             "budget_tokens": "--budget-tokens", "budget_tokens_of": "--budget-tokens-of"}


def api_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of superfilter.score/select/filter that the command line set."""
    options: dict[str, Any] = {}
    for key, value in args.options:
        flag = OWN_FLAGS.get(key)
        if flag is not None and hasattr(args, flag.removeprefix("--").replace("-", "_")):
            raise UserError(f"--set {key}=...: use {flag} instead")
        if key in options:
            raise UserError(f"--set {key} is given twice")
        options[key] = value
    for name in ("prompt", "ifd_form", "turns", "max_length", "batch_tokens", "device", "count", "budget_tokens",
                 "budget_tokens_of"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if getattr(args, "allow_empty", False):
        options["allow_empty"] = True
    return {**options, "fields": args.fields, "format": args.input_format, "artifact_root": args.artifacts}


# Files out.


def output_layout(fmt: str | None, out: Path, source: Path) -> tuple[str, str]:
    """(schema, container): --format, else OUT's extension, else the input's format."""
    container = CONTAINERS.get(out.suffix.lower())
    if fmt in ("alpaca", "sharegpt"):
        return fmt, container or "json"
    return "records", fmt or container or file_container(source)


def rewrite(record: dict[str, Any], schema: str, fmt: str, fields: dict[str, str]) -> dict[str, Any]:
    """A record in the Alpaca or ShareGPT schema, its score columns kept."""
    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter.api import ADDED_COLUMNS

    ex = parse_record(record, fmt, fields, "output record")
    if schema == "alpaca":
        out: dict[str, Any] = {"instruction": ex.instruction, "input": ex.input, "output": ex.output}
        if ex.history:
            out["history"] = [list(turn) for turn in ex.history]
    else:
        turns = [*ex.history, (ex.prompt, ex.output)]
        out = {"conversations": [m for u, a in turns for m in ({"from": "human", "value": u},
                                                                {"from": "gpt", "value": a})]}
    if ex.system:
        out["system"] = ex.system
    return {**out, **{c: record[c] for c in ADDED_COLUMNS if c in record}}


def json_safe(value: Any) -> Any:
    """NaN (a skipped record's scores) as null: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_records(records: list[dict[str, Any]], path: Path, container: str) -> None:
    """Write to a temporary sibling, then rename: an interrupted run never leaves half a file at OUT."""
    with atomic_path(path) as tmp:
        if container == "parquet":
            # deferred: numpy/pandas/pyarrow load only for the command that reads tables
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pylist(records)
            i = table.schema.get_field_index("skip_reason")
            if i >= 0 and pa.types.is_null(table.schema.field(i).type):  # nothing skipped: strings, all null
                table = table.set_column(i, "skip_reason", table.column(i).cast(pa.string()))
            pq.write_table(table, tmp)
        else:
            rows = [{k: json_safe(v) for k, v in r.items()} for r in records]
            with open(tmp, "w", encoding="utf-8") as f:
                if container == "json":
                    json.dump(rows, f, ensure_ascii=False, indent=2, default=str)
                    f.write("\n")
                else:
                    f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)


def write_output(records: list[dict[str, Any]], args: argparse.Namespace) -> None:
    out = Path(args.out).expanduser()
    schema, layout = output_layout(args.format, out, Path(args.input).expanduser())
    if schema != "records":
        records = [rewrite(r, schema, args.input_format, args.fields) for r in records]
    write_records(records, out, layout)


def check_paths(args: argparse.Namespace) -> Path:
    """IN readable, OUT writable and not IN (unless --force), IN's records storable in OUT's format: all checked
    before any scoring, so that a mistake costs nothing and leaves no file behind."""
    source = Path(args.input).expanduser()
    check_source_file(source)
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name")
    check_root(out.parent, f"--out {out}")
    if out.exists() and os.path.samefile(out, source) and not args.force:
        raise UserError(f"--out {out} is the input file: the output would replace your data; write elsewhere, "
                        "or pass --force to replace it")
    schema, layout = output_layout(args.format, out, source)
    if layout == "parquet" and schema == "records" and file_container(source) != "parquet":
        # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
        from superfilter.api import read_records

        check_parquet_columns(read_records(source).rows, out)
    return source


def check_parquet_columns(rows: list[dict[str, Any]], out: Path) -> None:
    """Parquet needs one type per column and integers within int64; JSON has neither rule."""
    # deferred: numpy/pandas/pyarrow load only for the command that reads tables
    import pyarrow as pa

    columns = list(dict.fromkeys(k for row in rows for k in row))
    for column in columns:
        try:
            pa.array([row.get(column) for row in rows])
        except (pa.ArrowException, OverflowError) as e:
            raise UserError(f"--out {out}: column {column!r} cannot be stored in Parquet "
                            f"({str(e).splitlines()[0][:160]}); write JSON or JSONL instead") from None


# Commands.


def run_filter(args: argparse.Namespace) -> None:
    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter import api

    source = check_paths(args)
    kept = api.filter(source, ratio=args.ratio, method=args.method, model=args.model, seed=args.seed,
                      **api_options(args))
    write_output(kept, args)
    budget = (f"budget_tokens={args.budget_tokens}" if args.budget_tokens else
              f"count={args.count}" if args.count else f"ratio={args.ratio}")
    log.info("kept %d records (%s, %s) → %s", len(kept), args.method, budget, args.out)


def run_score(args: argparse.Namespace) -> None:
    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter import api

    source = check_paths(args)
    scored = api.score(source, model=args.model, **api_options(args))
    write_output(scored, args)
    skipped = sum(1 for r in scored if r.get("skip_reason"))
    log.info("scored %d records (%d skipped) → %s", len(scored), skipped, args.out)


def run_inspect(args: argparse.Namespace) -> None:
    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter import api

    path = Path(args.scores)
    print(summary(with_examples(api.read_records(path).rows, path), str(args.scores), args.top, args.fields))


def with_examples(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """A score stage's scores.parquet holds ids, not text: its records joined from the prepare stage its
    config.json names (that folder, else the one with its key under the same artifact root)."""
    config_file = path.parent / STAGE_CONFIG_FILE
    if not rows or "id" not in rows[0] or "instruction" in rows[0] or not config_file.is_file():
        return rows
    upstream = read_json(config_file).get("upstream", {}).get("prepare")
    if not upstream:
        return rows
    candidates = (Path(upstream["path"]) / EXAMPLES_FILE,
                  path.parent.parent.parent / "prepare" / upstream["key"][:12] / EXAMPLES_FILE)
    examples_file = next((p for p in candidates if p.is_file()), None)
    if examples_file is None:
        log.warning("%s: its records (%s) are gone; showing ids", path, candidates[0])
        return rows
    by_id = {ex.id: ex.to_dict() for ex in read_examples(examples_file)}
    return [{**by_id.get(row["id"], {}), **row} for row in rows]


def summary(rows: list[dict[str, Any]], name: str, top: int, fields: dict[str, str]) -> str:
    """Counts, skip reasons, IFD quantiles and the examples at both ends, as the score stage's metrics count them."""
    # deferred: numpy/pandas/pyarrow load only for the command that reads tables
    import numpy as np
    import pandas as pd

    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter.api import ADDED_COLUMNS
    from superfilter.scoring import ScoreConfig, score_metrics

    if not rows or not any("ifd" in r for r in rows):
        raise DataError(f"{name}: no 'ifd' column; run `superfilter score IN --out OUT` first")
    table = pd.DataFrame({c: [r.get(c) for r in rows] for c in ADDED_COLUMNS if c != "skip_reason"}, dtype=float)
    table["skip_reason"] = [str(r.get("skip_reason") or "") for r in rows]
    m = score_metrics(table, ScoreConfig())
    lines = [f"{name}: {m['n_records']} records, {m['n_scored']} scored, {m['n_skipped']} skipped "
             f"({m['skip_fraction']:.1%})"]
    if m["skip_reasons"]:
        lines.append("skip reasons: " + ", ".join(f"{k} {v}" for k, v in m["skip_reasons"].items()))
    if m["ifd_quantiles"]:
        lines.append("IFD  " + "  ".join(f"{k} {v:.4f}" for k, v in m["ifd_quantiles"].items()))
        lines.append(f"IFD mean {m['ifd_mean']:.4f}; IFD >= 1 (dropped by superfilter): {m['share_ifd_ge_1']:.1%}; "
                     f"mean response tokens {m['mean_response_tokens']:.1f}")
    ifd = table["ifd"].to_numpy()
    usable = np.isfinite(ifd) & (table["skip_reason"] == "").to_numpy()
    below = np.flatnonzero(usable & (ifd < 1))
    order = below[np.argsort(-ifd[below], kind="stable")]
    ends = [("highest IFD < 1 (kept first)", order[:top]), ("lowest IFD", order[::-1][:top])]
    above = np.flatnonzero(usable & (ifd >= 1))
    if len(above):
        ends.append(("highest IFD >= 1 (dropped)", above[np.argsort(-ifd[above], kind="stable")][:top]))
    for title, positions in ends:
        if len(positions):
            lines.append(f"\n{title}:\n     IFD  tokens  instruction")
            lines += [f"  {ifd[i]:.4f}  {_int(table['n_response_tokens'].iloc[i]):>6}  "
                      f"{preview(rows[i], fields)}" for i in positions]
    return "\n".join(lines)


def _int(value: float) -> str:
    return str(int(value)) if math.isfinite(value) else "-"


def preview(row: dict[str, Any], fields: dict[str, str]) -> str:

    try:
        text = parse_record(row, "auto", fields, "").prompt
    except DataError:  # a scores.parquet whose records are gone holds ids, not text
        text = f"id {row.get('id', '?')}"
    text = " ".join(text.split())
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS - 1] + "…"


def run_models(args: argparse.Namespace) -> None:
    """Several names: each in its own process. A GGUF conversion peaks ~2.4 GB above the interpreter (Gemma-3-270M)
    and a process does not hand back all it freed, so one process per model keeps the peak to one conversion."""
    # deferred: the API, scoring and models load torch (seconds); `superfilter --help` stays instant
    from superfilter.models import model_from_name, prepare_model

    specs = [model_from_name(name) for name in args.names]  # an unknown name fails before any work
    if len(specs) == 1:
        folder = prepare_model(specs[0])
        print(f"{args.names[0]}\t{folder if folder is not None else specs[0].path + ' (Hugging Face Hub)'}")
        return
    for name in args.names:
        if subprocess.run([sys.executable, "-m", "superfilter", "models", name], check=False).returncode:
            raise UserError(f"preparing model {name} failed (see above)")


COMMANDS = {"filter": run_filter, "score": run_score, "inspect": run_inspect, "models": run_models}


def configure_logging(quiet: bool) -> None:
    logger = logging.getLogger("superfilter")
    handler = next((h for h in logger.handlers if getattr(h, "superfilter_cli", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.superfilter_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    else:  # called again in one process (tests, notebooks): write to today's stderr, not a replaced one
        handler.stream = sys.stderr  # not setStream: it flushes the old stream, which may be closed
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def quiet_progress_bars() -> None:
    """--quiet: no progress bars from the libraries below (Hub downloads, weight loading, GGUF conversion)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read by huggingface_hub and transformers at import
    os.environ["TQDM_DISABLE"] = "1"  # tqdm's default for bars that do not pass disable=, read at import
    if "huggingface_hub" in sys.modules:  # already imported in this process (tests, notebooks)
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status (0, or 2 with a one-line message for anything the user can fix)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a one-line usage error from Parser.error
        return e.code if isinstance(e.code, int) else EXIT_USER_ERROR
    configure_logging(getattr(args, "quiet", False))
    if getattr(args, "quiet", False):
        quiet_progress_bars()
    try:
        COMMANDS[args.command](args)
    except UserError as e:
        print(f"superfilter {args.command}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # unreadable input, unwritable output
        print(f"superfilter {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"superfilter {args.command}: interrupted; the same command resumes from the finished shards",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
