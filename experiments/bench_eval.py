"""Time the eval stage of the embedded default (`eval=default`) on its strong model, per suite.

    python experiments/bench_eval.py [--rounds 2] [--suites pairwise,alpaca_eval,open_llm,lm_eval,reference_nll]

The default's strong model (bundled Gemma-3-270M) stands in for both finetuned models: evaluation cost depends on
the architecture, the prompts and the answer lengths, not on what LoRA learnt. Every round starts from empty
generation/annotation caches. Prints seconds per suite (median over rounds) and the stage total.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose_default_eval(suites: list[str]):
    from superfilter.config import compose_config, to_config

    return to_config(compose_config([f"eval.suites=[{','.join(suites)}]"]))


def stage_folder(root: Path, name: str, weights: Path) -> Path:
    """A train-stage-shaped folder (model/ → the strong model's weights, its template recorded)."""
    folder = root / "train" / name
    from superfilter.contracts import MODEL_DIR, MODEL_INFO_FILE

    (folder / MODEL_DIR).mkdir(parents=True)
    for item in weights.iterdir():
        if item.is_file():
            os.symlink(item, folder / MODEL_DIR / item.name)
    (folder / MODEL_DIR / MODEL_INFO_FILE).write_text(json.dumps({"template": "alpaca"}))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--suites", default="pairwise,alpaca_eval,open_llm,lm_eval,reference_nll")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "disabled")
    from eval.stage import eval_stage
    from superfilter.models import resolve_model_dir
    from superfilter.tracking import StageRun

    suites = args.suites.split(",")
    cfg = compose_default_eval(suites)
    weights = resolve_model_dir(cfg.model.strong)
    timings: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            model, reference = stage_folder(root, "model", weights), stage_folder(root, "reference", weights)
            cfg.eval.cache_dir = str(root / "cache")
            started = time.perf_counter()
            metrics = eval_stage(model, reference, cfg.eval, cfg.runtime, root / "eval" / "x.partial",
                                 StageRun(None, "eval"))
            timings.setdefault("stage total", []).append(time.perf_counter() - started)
            for phase, seconds in metrics["seconds_by_phase"].items():
                timings.setdefault(phase, []).append(seconds)
    print(f"eval=default on {cfg.model.strong.name}, {args.rounds} round(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    print("| phase | median s | rounds |\n|---|---|---|")
    for phase, values in timings.items():
        print(f"| {phase} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} |")


if __name__ == "__main__":
    main()
