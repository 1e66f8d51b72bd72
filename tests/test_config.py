"""Every config composes into the typed schema; bad keys and values fail; stage keys track semantics only."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from superfilter import pipeline
from superfilter.config import Config, register_configs, to_config
from superfilter.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def make(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", options("experiment") + [
    f"{p.parent.name}/{p.stem}" for p in (CONF / "experiment").glob("*/*.yaml")])
def test_every_experiment_composes(experiment):
    cfg = make(f"experiment={experiment}")
    assert cfg.stages


@pytest.mark.parametrize(("group", "option"), [
    (g, o) for g in ("data", "model/weak", "model/strong", "filter", "train", "eval") for o in options(g)])
def test_every_group_option_composes(group, option):
    overrides = [f"{group}={option}"]
    if group == "data" and option == "custom":
        overrides.append("data.path=data/tiny.jsonl")
    make(*overrides)


def test_default_is_the_embedded_cpu_run():
    cfg = make()
    assert (cfg.data.name, cfg.model.weak.name, cfg.model.strong.name) == ("alpaca_1k", "smollm2_135m", "gemma3_270m")
    assert cfg.tracking.mode == "offline"


def test_unknown_keys_and_bad_values_fail():
    with pytest.raises(ConfigCompositionException, match="ratio_typo"):
        make("ratio_typo=0.1")
    with pytest.raises(ConfigCompositionException, match="ratio=abc"):
        make("ratio=abc")
    with pytest.raises(ConfigError, match="ratio"):
        make("ratio=1.5")
    with pytest.raises(ConfigError, match="stages"):
        make("stages=[score,frobnicate]")
    with pytest.raises(ConfigError, match="tracking.mode"):
        make("tracking.mode=cloud")


def key_of(cfg: Config, stage: str) -> dict:
    if stage == "score":
        return pipeline.score_params(cfg, cfg.model.weak)
    return {"select": pipeline.select_params, "train": pipeline.train_params}[stage](cfg)


def test_stage_keys_ignore_runtime_settings_and_track_semantic_ones():
    base = make()
    assert key_of(make("ratio=0.05"), "score") == key_of(base, "score")
    assert key_of(make("runtime.device=cpu", "runtime.num_processes=2", "score.batch_tokens=1234"), "score") \
        == key_of(base, "score")
    assert key_of(make("model.weak.attn_implementation=eager", "model.weak.name=renamed"), "score") \
        == key_of(base, "score")
    assert key_of(make("score.prompt=alpaca"), "score") != key_of(base, "score")
    assert key_of(make("model/weak=tiny"), "score") != key_of(base, "score")
    assert key_of(make("ratio=0.05"), "select") != key_of(base, "select")
    assert key_of(make("seed=1"), "select") != key_of(base, "select")
    assert key_of(make("model/strong=tiny"), "train") != key_of(base, "train")
    assert key_of(make("filter=full", "ratio=0.05"), "select") == key_of(make("filter=full"), "select")
