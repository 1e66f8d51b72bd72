"""dtype=auto: bf16 only where the hardware computes in bf16; the resolved dtype enters the keys; explicit names."""

import pytest
import torch

from superfilter import pipeline, runtime, stages
from superfilter.config import Config
from superfilter.errors import ConfigError
from superfilter.runtime import CPU_BF16_ENV, choose_dtype, cpu_flags
from train.config import resolve_mixed_precision

CPU = torch.device("cpu")
AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX512_BF16_ONLY = frozenset({"avx512f", "avx512_bf16"})
NO_BF16 = frozenset({"avx2", "fma"})


@pytest.fixture(autouse=True)
def hardware_decides(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)  # conftest pins fp32 for the other tests


def test_cpu_auto_follows_the_bf16_units() -> None:
    assert choose_dtype("auto", CPU, AMX).dtype == torch.bfloat16
    assert "amx_bf16" in choose_dtype("auto", CPU, AMX).reason
    assert choose_dtype("auto", CPU, NO_BF16).dtype == torch.float32
    assert choose_dtype("auto", CPU, AVX512_BF16_ONLY).dtype == torch.bfloat16


def test_the_environment_can_keep_cpus_in_fp32(monkeypatch) -> None:
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert choose_dtype("auto", CPU, AMX).dtype == torch.float32
    assert choose_dtype("bfloat16", CPU, AMX).dtype == torch.bfloat16


def test_explicit_names_win_and_bad_names_fail() -> None:
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        assert choose_dtype(name, CPU, AMX).dtype == dtype
        assert choose_dtype(name, CPU, AMX).name == name
    with pytest.raises(ConfigError, match="fp64"):
        choose_dtype("fp64", CPU)


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_cuda_auto(monkeypatch, bf16: bool, expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Some GPU")
    choice = choose_dtype("auto", torch.device("cuda"))
    assert choice.dtype == expected and "Some GPU" in choice.reason


def test_cpu_flags_come_from_cpuinfo(monkeypatch, tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    monkeypatch.setattr(runtime, "CPUINFO", info)
    cpu_flags.cache_clear()
    try:
        assert {"avx512_bf16", "amx_bf16", "amx_tile"} <= cpu_flags()
        assert choose_dtype("auto", CPU).dtype == torch.bfloat16
    finally:
        cpu_flags.cache_clear()


def test_training_autocast_follows_auto(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AMX)
    assert resolve_mixed_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: NO_BF16)
    assert resolve_mixed_precision("auto", CPU) == "no"
    assert resolve_mixed_precision("bf16", CPU) == "bf16"


def cpu_config() -> Config:
    cfg = Config()
    cfg.runtime.device = "cpu"
    return cfg


def score_key(dtype: str) -> dict:
    cfg = cpu_config()
    cfg.model.weak.dtype = dtype
    return stages.score_params(cfg, cfg.model.weak)


def test_keys_hold_the_resolved_dtype(monkeypatch) -> None:
    assert score_key("float32") != score_key("bfloat16")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: AMX)
    assert score_key("auto") == score_key("bfloat16")
    assert score_key("auto")["model"]["dtype"] == "bfloat16"
    amx_train = pipeline.train_params(cpu_config())
    monkeypatch.setattr(runtime, "cpu_flags", lambda: NO_BF16)
    assert score_key("auto") == score_key("float32")
    plain_train = pipeline.train_params(cpu_config())
    assert amx_train != plain_train
    assert (amx_train["train"]["mixed_precision"], plain_train["train"]["mixed_precision"]) == ("bf16", "no")
