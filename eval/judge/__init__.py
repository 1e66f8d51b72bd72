"""Judges of answer pairs behind one interface and two registries: judge kinds (protocols) and backends, with a cache.

A kind (eval/judge/kinds.py) is one JudgeKind object registered by name: prompts, request settings, reply parser and
the choices a local judge reads. A backend (openai | hf | replay | fake) is one module that registers a factory with
`register_judge(name)`; `make_judge` looks it up by `eval.judge.backend`, `describe` gives its line for reports.
"""

from eval.judge import fake, hf, openai_api, replay
from eval.judge.base import (
    JUDGES,
    Annotation,
    AnnotationCache,
    Judge,
    JudgeBackend,
    JudgeError,
    JudgeRequest,
    annotation_key,
    describe,
    judge_all,
    judge_backend,
    judge_label,
    make_judge,
    parse_reply,
    register_judge,
)
from eval.judge.fake import FakeJudge, length_reply
from eval.judge.hf import HFJudge
from eval.judge.kinds import (
    ALPACA_EVAL_2_TOKENS,
    ARENA_HARD_PATTERNS,
    ARENA_HARD_VERDICTS,
    JUDGE_KINDS,
    SCORE_VALUES,
    JudgeKind,
    alpaca_eval_2_preference,
    arena_hard_verdict,
    judge_kind,
    judge_prompt,
    register_kind,
)
from eval.judge.openai_api import OpenAIJudge
from eval.judge.replay import ReplayJudge

__all__ = [
    "ALPACA_EVAL_2_TOKENS", "ARENA_HARD_PATTERNS", "ARENA_HARD_VERDICTS", "JUDGES", "JUDGE_KINDS", "SCORE_VALUES",
    "Annotation", "AnnotationCache", "FakeJudge", "HFJudge", "Judge", "JudgeBackend", "JudgeError",
    "JudgeKind", "JudgeRequest", "OpenAIJudge", "ReplayJudge", "alpaca_eval_2_preference", "annotation_key",
    "arena_hard_verdict", "describe", "fake", "hf", "judge_all", "judge_backend", "judge_kind", "judge_label",
    "judge_prompt", "length_reply", "make_judge", "openai_api", "parse_reply", "register_judge", "register_kind",
    "replay",
]
