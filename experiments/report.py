"""Collect a run or multirun folder's run summaries and stage artifacts into a markdown report beside the paper.

    python experiments/report.py multirun/<date>/<time> [--out DIR] [--reference MODEL]

Every run_summary.json below the folder is read, with the artifacts it points to (score tables, selections, training
logs, evaluation files). Sections appear only when their stages ran: weak-to-strong consistency (two or more
scorers on the same prepared records, Table 1), scoring cost (Table 4), the budget table (Tables 2/3), which stages
each job built or reused, the plots, and the commands that reproduce the folder. The logic is superfilter.report.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from superfilter.errors import EXIT_USER_ERROR, UserError
from superfilter.report import build_report

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a Hydra run or multirun folder (or any folder above them)")
    parser.add_argument("--out", type=Path, help="where report.md and the plots go (default: the folder)")
    parser.add_argument("--reference", help="the scorer the consistency section compares the others with")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        # Runs started in the repository wrote artifact paths relative to it.
        report = build_report(args.folder, args.out or args.folder, args.reference, home=REPO)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(report.read_text())
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
