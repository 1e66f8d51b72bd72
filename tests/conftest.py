"""Test environment: offline, no wandb, small thread counts; shared fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dtype=auto in fp32 whatever the CPU: the tests compare against fp32 references; test_dtype covers the bf16 rule.
os.environ.setdefault("SUPERFILTER_CPU_BF16", "0")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core host OpenMP workers spin-wait on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_train_folder(tmp_path_factory) -> Path:
    """What the train stage leaves for one tiny model: <root>/train/model/{model/, config.json}."""
    import json

    from superfilter.models import build_tiny_model

    folder = tmp_path_factory.mktemp("artifacts") / "train" / "model"
    build_tiny_model("llama", folder / "model", seed=1)
    (folder / "model" / "superfilter_train.json").write_text(json.dumps({"template": "alpaca"}))
    (folder / "config.json").write_text(json.dumps({"stage": "train", "key": "k" * 64}))
    return folder
