"""Greedy answers of a trained model in its training template, batched, cached by (model artifact key, prompt)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval.cache import JsonlCache
from eval.settings import GenerationConfig
from superfilter import models
from superfilter.artifacts import canonical_json
from superfilter.contracts import MODEL_DIR, MODEL_INFO_FILE, STAGE_CONFIG_FILE
from superfilter.errors import ConfigError, UserError
from superfilter.models import ModelConfig, load_model
from superfilter.prompts import TEMPLATES, generation_prompt
from superfilter.runs import read_stage

log = logging.getLogger(__name__)

GENERATION_VERSION = 1  # bump when decoding changes what a cached output would be


@dataclass(frozen=True)
class Prompt:
    id: str
    instruction: str
    input: str = ""


def weights_dir(model_dir: Path) -> Path:
    """The folder holding the weights: <train stage>/model, or model_dir itself when it is a plain HF folder."""
    model_dir = Path(model_dir)
    return model_dir / MODEL_DIR if (model_dir / MODEL_DIR).is_dir() else model_dir


def model_key(model_dir: Path) -> str:
    """The train artifact's key when model_dir is a stage folder, else a digest of the weight files' contents."""
    if (Path(model_dir) / MODEL_DIR).is_dir() and (Path(model_dir) / STAGE_CONFIG_FILE).is_file():
        return f"train:{read_stage(model_dir).key}"
    h = hashlib.sha256()
    for path in sorted(p for p in weights_dir(model_dir).rglob("*") if p.is_file()):
        h.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return f"files:{h.hexdigest()}"


def training_template(model_dir: Path, override: str = "") -> str:
    """The template the model was trained with (recorded by the train stage), unless `override` names one."""
    if override:
        template = override
    else:
        info = weights_dir(model_dir) / MODEL_INFO_FILE
        if not info.is_file():
            raise ConfigError(f"{info} is missing, so the training template is unknown; set eval.template="
                              f"{'|'.join(TEMPLATES)}")
        template = json.loads(info.read_text()).get("template", "")
    if template not in TEMPLATES:
        raise ConfigError(f"template must be one of {list(TEMPLATES)}, got {template!r} (from {model_dir})")
    return template


def trained_spec(model_dir: Path) -> ModelConfig:
    """The model spec of a trained folder (the train stage saves full or LoRA-merged weights in model/)."""
    folder = weights_dir(model_dir)
    return ModelConfig(name=folder.parent.name, source="local", path=str(folder))


def load_trained(model_dir: Path, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a trained folder."""
    return load_model(trained_spec(model_dir), device)


def load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer load_trained would return, without the weights."""
    return models.load_tokenizer(trained_spec(model_dir))


def render(prompts: Sequence[Prompt], template: str, tokenizer: Any) -> list[str]:
    return [generation_prompt(p.instruction, template, tokenizer, input=p.input) for p in prompts]


def generation_key(model: str, text: str, template: str, cfg: GenerationConfig) -> str:
    payload = {"version": GENERATION_VERSION, "model": model, "template": template, "backend": cfg.backend,
               "max_new_tokens": cfg.max_new_tokens, "max_prompt_tokens": cfg.max_prompt_tokens, "prompt": text}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def generate(
    model_dir: Path, prompts: Sequence[Prompt], cfg: GenerationConfig, cache_root: Path, device: str = "cpu",
    batch_size: int = 8, template: str = "",
) -> tuple[list[str], dict[str, Any]]:
    """Answers to `prompts` in order, plus stats; only prompts absent from the cache are generated.

    The cache (<cache_root>/generations/<model key>.jsonl) is keyed by the model's artifact key and the rendered
    prompt, so a rerun, or a second evaluation against the same reference model, generates nothing again.
    """
    template = training_template(model_dir, template)
    key = model_key(model_dir)
    cache = JsonlCache(Path(cache_root) / "generations" / f"{key.replace(':', '-')[:40]}.jsonl")
    texts = render(prompts, template, load_tokenizer(model_dir))
    keys = [generation_key(key, t, template, cfg) for t in texts]
    todo: list[int] = []
    pending: set[str] = set()
    for i, k in enumerate(keys):
        if k not in cache and k not in pending:  # a prompt repeated within the run is generated once
            pending.add(k)
            todo.append(i)
    started = time.perf_counter()
    if todo:
        log.info("generating %d answers with %s (%d cached)", len(todo), weights_dir(model_dir),
                 len(prompts) - len(todo))
        run = _generate_vllm if cfg.backend == "vllm" else _generate_hf
        run(model_dir, [texts[i] for i in todo], [keys[i] for i in todo], template, cfg, cache, device, batch_size)
    records = [cache.get(k) for k in keys]
    finish = Counter(r["finish_reason"] for r in records if r)
    stats = {
        "model_key": key, "template": template, "prompts": len(prompts), "generated": len(todo),
        "cached": len(prompts) - len(todo), "seconds": round(time.perf_counter() - started, 2),
        "finish_reasons": dict(finish), "new_tokens": sum(records[i]["new_tokens"] for i in todo),
    }
    return [r["output"] for r in records], stats


def length_batches(lengths: Sequence[int], batch_size: int, slack: float = 1.5) -> list[list[int]]:
    """Indices in batches of similar length: sorted, at most batch_size, and a new batch once a prompt is more than
    `slack` times the batch's shortest, so little compute goes into padding."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if batches and len(batches[-1]) < batch_size and lengths[i] <= slack * lengths[batches[-1][0]]:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _special_tokens_added(template: str) -> bool:
    # A chat template writes BOS itself; the plain templates rely on the tokenizer adding it, as in training.
    return template != "chat"


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    return sorted(ids)


def _generate_hf(
    model_dir: Path, texts: list[str], keys: list[str], template: str, cfg: GenerationConfig, cache: JsonlCache,
    device: str, batch_size: int,
) -> None:
    # deferred: torch/transformers take seconds to import; loaded only when a model is
    import torch
    from transformers import GenerationConfig as HFGenerationConfig

    model, tokenizer = load_trained(model_dir, device)
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"  # an over-long prompt keeps its end, where the template asks for the answer
    eos = _eos_ids(model, tokenizer)
    decoding = HFGenerationConfig(max_new_tokens=cfg.max_new_tokens, do_sample=False, eos_token_id=eos,
                                  pad_token_id=tokenizer.pad_token_id)
    special = _special_tokens_added(template)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=cfg.max_prompt_tokens,
                                             add_special_tokens=special)["input_ids"]]
    for batch in length_batches(lengths, batch_size):
        encoded = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, truncation=True,
                            max_length=cfg.max_prompt_tokens, add_special_tokens=special).to(model.device)
        with torch.inference_mode():
            output = model.generate(**encoded, generation_config=decoding)
        new = output[:, encoded["input_ids"].shape[1] :].tolist()
        records = []
        for i, tokens in zip(batch, new, strict=True):
            stop = next((j for j, t in enumerate(tokens) if t in eos), None)
            kept = tokens if stop is None else tokens[:stop]
            records.append({
                "key": keys[i], "prompt": texts[i],
                "output": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                "finish_reason": "length" if stop is None else "eos", "new_tokens": len(kept),
            })
        cache.put_many(records)


def _generate_vllm(
    model_dir: Path, texts: list[str], keys: list[str], template: str, cfg: GenerationConfig, cache: JsonlCache,
    device: str, batch_size: int,
) -> None:
    """vLLM on a GPU (the `vllm` extra), over the same saved folder."""
    try:
        # deferred: the optional vllm GPU extra
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise UserError("eval.generation.backend=vllm needs the vllm extra on a CUDA machine: "
                        "pip install 'superfilter[vllm]'") from e
    tokenizer = load_tokenizer(model_dir)
    tokenizer.truncation_side = "left"
    # Token ids, not text, so BOS handling and truncation match the hf backend exactly.
    ids = [tokenizer(t, truncation=True, max_length=cfg.max_prompt_tokens,
                     add_special_tokens=_special_tokens_added(template))["input_ids"] for t in texts]
    llm = LLM(model=str(weights_dir(model_dir)), max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens, skip_special_tokens=True)
    results = llm.generate([{"prompt_token_ids": i} for i in ids], params)
    records = []
    for key, text, result in zip(keys, texts, results, strict=True):
        completion = result.outputs[0]
        records.append({"key": key, "prompt": text, "output": completion.text.strip(),
                        "finish_reason": "eos" if completion.finish_reason == "stop" else "length",
                        "new_tokens": len(completion.token_ids)})
    cache.put_many(records)
