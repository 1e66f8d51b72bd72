"""Per generator: win rate, standard error, n, draws, average length and LC win rate from alpaca_eval annotations.

    python -m eval.commands.alpaca_eval ANNOTATIONS.json [...] [--df-gamed CSV] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.metrics.alpaca_eval import DF_GAMED, format_table, load_annotations, summarize
from superfilter.errors import EXIT_USER_ERROR, UserError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.commands.alpaca_eval", description=__doc__.splitlines()[0])
    parser.add_argument("annotations", nargs="+", type=Path, help="annotations.json files, one generator each")
    parser.add_argument("--df-gamed", default=None, help=f"a local {DF_GAMED} for the length-controlled rate")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        rows = [summarize(load_annotations(path), args.df_gamed) for path in args.annotations]
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        for r in rows:
            if r["length_controlled_winrate"] is None:
                print(f"{r['generator']}: length-controlled win rate {r['length_controlled_unavailable']}",
                      file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
