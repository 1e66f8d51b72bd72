"""The Arena-Hard leaderboard from arena-hard-auto judgment files (ours or theirs): score, bootstrap CI, n.

    python -m eval.commands.arena_hard model_judgment/<judge>/<model>.jsonl [...] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.judge.arena_files import read_judgments
from eval.metrics.arena_hard import BASELINE, BOOTSTRAP_ROUNDS, format_table, standings
from superfilter.errors import EXIT_USER_ERROR, UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.commands.arena_hard", description=__doc__.splitlines()[0])
    parser.add_argument("judgments", nargs="+", type=Path, help="model_judgment/<judge>/<model>.jsonl files")
    parser.add_argument("--rounds", type=int, default=BOOTSTRAP_ROUNDS, help="bootstrap rounds for the CI")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        records = [r for path in args.judgments for _, r in read_judgments(path)]
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    baselines = sorted({str(r.get("baseline", BASELINE)) for r in records})
    rows = standings(records, args.rounds, args.seed)
    if args.json:
        print(json.dumps({"baseline": baselines, "models": [s.to_dict() for s in rows]}, indent=2))
    else:
        print(format_table(rows, ", ".join(baselines)))
    left_out = sum(s.unparseable for s in rows)
    if left_out:
        print(f"warning: {left_out} judgment(s) with a missing game or an unreadable verdict are not counted",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
