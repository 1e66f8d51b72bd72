"""Commands that recompute a suite's numbers from files: `python -m eval.commands.<suite> FILE ...`."""
