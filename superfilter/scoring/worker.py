"""One scoring process under torchrun: score this rank's shards of a job into the shared shard folder."""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from superfilter.artifacts import read_json
from superfilter.models import ModelConfig, load_model
from superfilter.scoring.config import ScoreConfig
from superfilter.scoring.engine import make_engine
from superfilter.scoring.shards import LAYOUT_FILE, ExampleFile, score_shards_to_dir

log = logging.getLogger("superfilter.scoring.worker")


def main(argv: list[str]) -> None:
    job = read_json(Path(argv[0]))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    if world != len(job["assignment"]):
        raise RuntimeError(f"launched with {world} processes, the job was split for {len(job['assignment'])}")
    # gloo on every device: no tensor crosses processes, the group only checks the world and waits at the end.
    dist.init_process_group("gloo", timeout=timedelta(hours=12))
    if job["device"] == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(job["threads"])
    examples = ExampleFile(Path(job["examples_path"]))
    shard_dir = Path(job["shard_dir"])
    layout = read_json(shard_dir / LAYOUT_FILE)["shards"]
    mine = job["assignment"][rank]
    log.info("scoring %d shards (%d records) on %s", len(mine), sum(len(layout[s]) for s in mine), device)
    if mine:
        engine = make_engine(*load_model(ModelConfig(**job["model"]), device))
        score_shards_to_dir(engine, examples, layout, mine, ScoreConfig(**job["score"]), shard_dir,
                            progress=rank == 0)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
