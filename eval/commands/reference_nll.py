"""Paired comparison of two evaluations' per-item reference NLL (eval/reference_nll/<set>.jsonl of the suite).

    python -m eval.commands.reference_nll <A>/eval/reference_nll/<set>.jsonl <B>/eval/reference_nll/<set>.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.suites.reference_nll import paired
from superfilter.data import iter_raw_records
from superfilter.errors import EXIT_USER_ERROR, DataError

FIELDS = ("id", "nll_mean")


def read_items(path: Path) -> list[dict[str, Any]]:
    """The per-item rows of one file; a missing file, bad JSON or a row without id/nll_mean names file and line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected eval/reference_nll/<set>.jsonl of an evaluation)")
    rows = []
    for number, row in iter_raw_records(path):
        missing = [f for f in FIELDS if not isinstance(row, dict) or f not in row]
        if missing:
            raise DataError(f"{path}:{number}: no {' or '.join(missing)} field: not a reference_nll per-item file")
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no items")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.commands.reference_nll", description=__doc__.splitlines()[0])
    parser.add_argument("ours", type=Path, help="eval/reference_nll/<set>.jsonl of model A")
    parser.add_argument("theirs", type=Path, help="the same set's file of model B")
    args = parser.parse_args(argv)
    try:
        ours, theirs = read_items(args.ours), read_items(args.theirs)
    except DataError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    result = paired(ours, theirs)
    if result["n"] == 0:
        print(f"{parser.prog}: error: the two files share no item id with finite NLLs", file=sys.stderr)
        return EXIT_USER_ERROR
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
