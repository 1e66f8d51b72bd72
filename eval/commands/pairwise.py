"""Recompute W/T/L and the winning score from review logs in the authors' format (Answer1 = the evaluated model).

    python -m eval.commands.pairwise <*_wrap_reviews_*.json ...> [--plot wtl.png] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.metrics.pairwise import format_table, plot_wtl, pooled, read_review_log, tally_reviews
from superfilter.errors import EXIT_USER_ERROR, DataError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.commands.pairwise", description=__doc__.splitlines()[0])
    parser.add_argument("reviews", nargs="+", type=Path, help="review logs (*_wrap_reviews_*.json)")
    parser.add_argument("--tie-margin", type=float, default=None,
                        help="scores closer than this tie (default: the log's Meta_Info.tie_margin, else 0)")
    parser.add_argument("--plot", type=Path, default=None, help="write the stacked W/T/L chart here (.png)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    tallies = []
    for path in args.reviews:
        try:
            name, reviews, meta = read_review_log(path)
        except DataError as e:
            print(f"{parser.prog}: error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        margin = args.tie_margin if args.tie_margin is not None else float(meta.get("tie_margin", 0.0))
        tallies.append(tally_reviews(name, reviews, margin))
    total = pooled(tallies)
    if args.json:
        print(json.dumps({"sets": [t.to_dict() for t in tallies], "overall": total.to_dict()}, indent=2))
    else:
        print(format_table([*tallies, total]))
    if total.unparseable:
        print(f"warning: {total.unparseable} prompt(s) had an unparseable review and are not counted: "
              f"{', '.join(total.unparseable_ids[:20])}", file=sys.stderr)
    if args.plot:
        plot_wtl(tallies, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
