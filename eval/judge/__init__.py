"""Judges of answer pairs behind one interface and a registry (openai | hf | replay | fake), with an annotation cache.

A backend is one module that registers a factory with `register_judge(name)`; `make_judge` looks it up by
`eval.judge.backend`.
"""

from eval.judge import fake, hf, openai_api, replay
from eval.judge.base import (
    ALPACA_EVAL_2_TOKENS,
    ARENA_HARD_PATTERNS,
    ARENA_HARD_VERDICTS,
    JUDGES,
    KINDS,
    SMALL_JUDGE_NOTE,
    Annotation,
    AnnotationCache,
    Judge,
    JudgeError,
    JudgeRequest,
    annotation_key,
    arena_hard_verdict,
    judge_all,
    judge_label,
    judge_prompt,
    make_judge,
    parse_reply,
    register_judge,
)
from eval.judge.fake import FakeJudge, length_reply
from eval.judge.hf import SCORE_VALUES, HFJudge
from eval.judge.openai_api import OpenAIJudge, alpaca_eval_2_preference
from eval.judge.replay import ReplayJudge

__all__ = [
    "ALPACA_EVAL_2_TOKENS", "ARENA_HARD_PATTERNS", "ARENA_HARD_VERDICTS", "JUDGES", "KINDS", "SCORE_VALUES",
    "SMALL_JUDGE_NOTE", "Annotation", "AnnotationCache", "FakeJudge", "HFJudge", "Judge", "JudgeError", "JudgeRequest",
    "OpenAIJudge", "ReplayJudge", "alpaca_eval_2_preference", "annotation_key", "arena_hard_verdict",
    "fake", "hf", "judge_all", "judge_label", "judge_prompt", "length_reply", "make_judge", "openai_api", "parse_reply",
    "register_judge", "replay",
]
