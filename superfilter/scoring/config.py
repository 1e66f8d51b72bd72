"""Scoring settings, the score table's columns and the reasons a record is skipped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from superfilter.errors import ConfigError
from superfilter.prompts import SCORING_MODES

IFD_FORMS = ("ppl_ratio", "loss_ratio")
TURN_MODES = ("last", "each")
BOUNDARIES = ("reference", "exact")
SKIP_REASONS = {
    "empty_response": "the response is empty, or only whitespace and invisible characters",
    "prompt_too_long": "the prompt alone has more than max_length tokens",
    "response_truncated": "truncation to max_length left no response token to score",
    "response_too_short": "the response-only pass predicts no token (a one-token response, no BOS, no prefix)",
    "nonfinite_loss": "a loss or the IFD came out NaN or infinite",
}
# batch_tokens=0 picks these: a CPU is near its matmul roofline at batch 1 already, so bigger batches there only
# add padding (measured: 1024 → 5.0 rec/s, 8192 → 3.0 rec/s with SmolLM2); a GPU needs big batches to fill up.
AUTO_BATCH_TOKENS = {"cpu": 1024, "cuda": 16384}


@dataclass
class ScoreConfig:
    # None of these change a score (only float rounding through batch shapes): they stay out of the key.
    # max_skip_fraction is a check on the result, so raising it after a failed run resumes the same folder.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("batch_tokens", "shard_size", "max_skip_fraction")

    prompt: str = "none"  # none (Superfiltering) | alpaca (Cherry) | chat (tokenizer's chat template)
    ifd_form: str = "ppl_ratio"  # ppl_ratio (Superfiltering) | loss_ratio (Cherry)
    turns: str = "last"  # last | each (multi-turn records)
    boundary: str = "reference"  # reference (re-tokenise the prefix, as the authors) | exact
    max_length: int = 1024
    max_skip_fraction: float = 0.5
    batch_tokens: int = 0  # padded tokens per forward pass (longest × count); 0 = auto (1024 CPU, 16384 GPU)
    shard_size: int = 256  # records per resumable shard; a resumed run keeps the first run's layout

    def validate(self) -> None:
        for name, value, allowed in (("prompt", self.prompt, SCORING_MODES), ("ifd_form", self.ifd_form, IFD_FORMS),
                                     ("turns", self.turns, TURN_MODES), ("boundary", self.boundary, BOUNDARIES)):
            if value not in allowed:
                raise ConfigError(f"score.{name} must be one of {list(allowed)}, got {value!r}")
        for name in ("max_length", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"score.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_tokens < 0:
            raise ConfigError(f"score.batch_tokens must be >= 0 (0 = auto), got {self.batch_tokens}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ConfigError(f"score.max_skip_fraction must be in [0, 1], got {self.max_skip_fraction}")
