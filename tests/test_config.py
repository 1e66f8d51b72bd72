"""Every config composes into the typed schema; bad keys and values fail; stage keys track semantics only."""

from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from superfilter import pipeline, stages
from superfilter.config import Config, compose_config, register_configs, to_config
from superfilter.errors import ConfigError
from superfilter.models import ModelConfig, model_from_name
from superfilter.presets import conf_dir, model_preset, options
from superfilter.settings import as_dict

CONF = Path(__file__).resolve().parents[1] / "conf"
register_configs()


def make(*overrides: str) -> Config:
    return to_config(compose_config(overrides))


def test_the_checkout_composes_its_own_conf():
    assert conf_dir() == CONF


@pytest.mark.parametrize("experiment", [*options("experiment"), *(
    f"{p.parent.name}/{p.stem}" for p in (CONF / "experiment").glob("*/*.yaml"))])
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


def test_one_file_per_model_serves_both_roles():
    names = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
    assert names and not (CONF / "model" / "weak").exists() and not (CONF / "model" / "strong").exists()
    assert list(options("model/weak")) == list(options("model/strong")) == names
    both = make("model/weak=llama2_7b", "model/strong=llama2_7b").model
    assert both.weak == both.strong == model_from_name("llama2_7b")
    assert both.weak.path == "meta-llama/Llama-2-7b-hf"
    assert model_preset("no_such_model") is None


# data and model: catalogues of sources, whose dataclass defaults are the test fixtures (data=tiny, model/*=tiny).
DEFAULTED = [f.name for f in fields(Config) if f.name not in ("data", "model")]
# The dataclass holds the paper's evaluation; the default run (eval=default) cuts it to a CPU.
DEFAULT_PRESET = {"eval": "eval=paper"}


@pytest.mark.parametrize("group", DEFAULTED)
def test_dataclass_defaults_are_the_presets_run_py_composes(group):
    overrides = [DEFAULT_PRESET[group]] if group in DEFAULT_PRESET else []
    composed = OmegaConf.to_container(compose_config(overrides), resolve=False)[group]
    assert composed == as_dict(Config())[group]


def test_model_dataclass_default_is_the_tiny_preset():
    assert model_from_name("tiny") == ModelConfig()


def test_presets_compose_inside_a_running_hydra_app():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        outer = compose(config_name="config", overrides=["ratio=0.2"])
        assert model_from_name("gpt2").path == "gpt2"
        assert compose(config_name="config", overrides=["ratio=0.3"]).ratio == 0.3  # the outer app still works
    assert outer.ratio == 0.2


def test_default_is_the_embedded_cpu_run():
    cfg = make()
    assert (cfg.data.name, cfg.model.weak.name, cfg.model.strong.name) == ("alpaca_600", "smollm2_135m", "gemma3_270m")
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
        return stages.score_params(cfg, cfg.model.weak)
    return {"select": stages.select_params, "train": pipeline.train_params}[stage](cfg)


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


def test_labels_and_runtime_fields_leave_keys_at_every_level():
    eval_key = stages.key_params(make().eval)
    assert stages.key_params(make("eval.judge.model.name=renamed").eval) == eval_key
    assert stages.key_params(make("eval.judge.model.attn_implementation=eager").eval) == eval_key
    assert stages.key_params(make("eval.judge.concurrency=2", "eval.judge.backoff_s=3").eval) == eval_key
    assert stages.key_params(make("eval.judge.model.path=other").eval) != eval_key
    assert "name" not in stages.key_params(make().model.weak)


def test_embed_model_enters_the_select_key_only_when_the_weak_model_embeds():
    minilm = ("filter=superfilter_d", "filter.embedder=minilm")
    assert key_of(make(*minilm), "select") == key_of(make(*minilm, "model/weak=tiny"), "select")
    assert "embed_model" not in key_of(make(*minilm), "select")["filter"]
    weak = ("filter=superfilter_d", "filter.embedder=weak")
    assert key_of(make(*weak), "select") != key_of(make(*weak, "model/weak=tiny"), "select")
    assert key_of(make(*weak), "select") == key_of(make(*weak, "model.weak.name=renamed"), "select")


def sweep_params(experiment: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


def test_paper_sweeps_hold_every_row_of_their_table():
    table2 = sweep_params("paper/table2_main")
    assert set(table2["filter"].split(",")) == {"superfilter", "full"}  # the 100% rows
    assert set(table2["data"].split(",")) == {"alpaca", "alpaca_gpt4"}
    table3 = sweep_params("paper/table3_ablation")
    assert set(table3["filter"].split(",")) == {"random", "kmeans", "perplexity", "superfilter", "self_ifd"}
    text = (CONF / "experiment" / "paper" / "table3_ablation.yaml").read_text()
    # The GPT-2-large and GPT-Neo rows: one documented command into the same sweep folder.
    assert "filter=superfilter model/weak=gpt2_large,gpt_neo_1.3b" in text
    assert "dir: multirun/table3_ablation" in text and "subdir: ${hydra.job.override_dirname}" in text
