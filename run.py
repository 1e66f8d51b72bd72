"""Entry point: `python run.py [overrides]` composes conf/ and runs the pipeline (see README)."""

import hydra
from omegaconf import DictConfig

from superfilter.cli_pipeline import run_from_hydra
from superfilter.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_from_hydra(cfg)


if __name__ == "__main__":
    main()
