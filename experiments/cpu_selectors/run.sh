#!/usr/bin/env bash
# The whole study in one command, from the repository root: the four multiruns, then the report.
# Resumable: rerun it after a kill and every finished stage is a cache hit.
set -euo pipefail
python run.py -m experiment=cpu/selectors                                            # 10% by records
python run.py -m experiment=cpu/selectors filter.budget_tokens=13500                 # 10% by response tokens
python run.py -m experiment=cpu/selectors filter=random seed=43,44                   # random's seeds 43 and 44
python run.py -m experiment=cpu/selectors filter=random filter.budget_tokens=13500 seed=43,44
python experiments/cpu_selectors/report.py multirun/ --out experiments/cpu_selectors
