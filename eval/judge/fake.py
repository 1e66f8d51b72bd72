"""The fake judge: deterministic text replies, read by the same parsers as a real judge's (for tests)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from eval.judge.base import JudgeRequest, OnResult, parse_reply, register_judge
from eval.judge.kinds import judge_kind
from eval.settings import JudgeConfig


def length_reply(request: JudgeRequest) -> str:
    """Prefers the longer answer: a stand-in with a known, checkable behaviour."""
    kind = judge_kind(request.kind)
    first, second = len(request.answer_1), len(request.answer_2)
    if kind.answer == "p_second":
        return kind.choices[1] if second > first else kind.choices[0]
    if kind.answer == "verdict":
        if first == second:
            return "Both are the same length.\n\nMy final verdict is tie: [[A=B]]"
        strong = max(first, second) > 2 * min(first, second)
        label = ("A>>B" if strong else "A>B") if first > second else ("B>>A" if strong else "B>A")
        return f"The longer answer is better.\n\nMy final verdict is: [[{label}]]"
    score = [min(10, 1 + len(a.split()) // 10) for a in (request.answer_1, request.answer_2)]
    return f"{score[0]} {score[1]}\nlonger answers score higher"


class FakeJudge:
    name = "fake"

    def __init__(self, reply: Callable[[JudgeRequest], str] = length_reply) -> None:
        self.reply = reply

    def identity(self) -> dict[str, Any]:
        return {"backend": "fake", "reply": getattr(self.reply, "__name__", "custom")}

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        for i, (request, key) in enumerate(zip(requests, keys, strict=True)):
            on_result(i, parse_reply(key, request.kind, self.reply(request)))

    def stats(self) -> dict[str, Any]:
        return {}


@register_judge("fake")
def _fake(cfg: JudgeConfig, device: str) -> FakeJudge:
    return FakeJudge()
