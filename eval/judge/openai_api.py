"""The openai judge: any OpenAI-compatible chat-completions endpoint, with bounded retries and token/cost accounting."""

from __future__ import annotations

import asyncio
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from eval.judge.base import KIND_API, Annotation, JudgeError, JudgeRequest, OnResult, parse_reply, register_judge
from eval.settings import JudgeConfig
from superfilter.errors import ConfigError

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_BACKOFF_S = 60.0


class _GaveUp(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OpenAIJudge:
    name = "openai"

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.retries: Counter[str] = Counter()
        self.http_requests = 0
        self.failed = 0
        self.api_key = os.environ.get(cfg.api_key_env, "")
        if not self.api_key and "api.openai.com" in cfg.base_url:
            raise ConfigError(f"eval.judge.backend=openai: set the environment variable {cfg.api_key_env} "
                              "(or point eval.judge.api_key_env at the variable holding your key)")

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.cfg.api_model, "base_url": self.cfg.base_url.rstrip("/"),
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def stats(self) -> dict[str, Any]:
        return {"http_requests": self.http_requests, "retries": dict(self.retries),
                "retries_total": sum(self.retries.values()), "failed": self.failed,
                "max_retries": self.cfg.max_retries, "api_model": self.cfg.api_model}

    def annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult) -> None:
        failures = asyncio.run(self._annotate(requests, keys, on_result))
        if failures:
            self.failed = len(failures)
            reasons = Counter(failures)
            raise JudgeError(
                f"{len(failures)} of {len(requests)} judge requests failed after {self.cfg.max_retries} retries "
                f"({dict(reasons)}); the others are cached, a rerun asks only these"
            )

    async def _annotate(self, requests: Sequence[JudgeRequest], keys: Sequence[str], on_result: OnResult
                        ) -> list[str]:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        limit = asyncio.Semaphore(self.cfg.concurrency)
        failures: list[str] = []
        async with httpx.AsyncClient(base_url=self.cfg.base_url.rstrip("/"), headers=headers,
                                     timeout=self.cfg.timeout_s) as client:

            async def one(i: int) -> None:
                async with limit:
                    try:
                        payload = await self._post(client, self._body(requests[i]))
                    except _GaveUp as e:
                        failures.append(e.reason)
                        return
                on_result(i, self._annotation(keys[i], requests[i].kind, payload))

            await asyncio.gather(*(one(i) for i in range(len(requests))))
        return failures

    def _body(self, request: JudgeRequest) -> dict[str, Any]:
        system, user = request.messages()
        body: dict[str, Any] = {
            "model": self.cfg.api_model, "temperature": self.cfg.temperature,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": self.cfg.max_tokens,
        }
        body.update(KIND_API[request.kind])
        return body

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        for attempt in range(self.cfg.max_retries + 1):
            retry_after = 0.0
            self.http_requests += 1
            try:
                response = await client.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                reason = "timeout"
            except httpx.TransportError as e:
                reason = f"transport:{type(e).__name__}"
            else:
                status = response.status_code
                if status in RETRY_STATUS or status >= 500:
                    reason = f"http_{status}"
                    retry_after = _retry_after(response.headers.get("retry-after"))
                elif status >= 400:
                    raise JudgeError(f"judge endpoint {self.cfg.base_url} answered HTTP {status}: "
                                     f"{response.text[:300]}")
                else:
                    try:
                        payload = response.json()
                        payload["choices"][0]["message"]["content"].strip()
                        return payload
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                        reason = "malformed_body"
            self.retries[reason] += 1
            if attempt == self.cfg.max_retries:
                raise _GaveUp(reason)
            await asyncio.sleep(min(MAX_BACKOFF_S, max(retry_after, self.cfg.backoff_s * 2**attempt)))
        raise AssertionError("unreachable")

    def _annotation(self, key: str, kind: str, payload: dict[str, Any]) -> Annotation:
        usage = payload.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        cost = (prompt_tokens * self.cfg.usd_per_1k_prompt_tokens
                + completion_tokens * self.cfg.usd_per_1k_completion_tokens) / 1000
        choice = payload["choices"][0]
        annotation = parse_reply(key, kind, choice["message"]["content"], prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens, cost_usd=cost)
        if kind == "preference":
            weighted = _weighted_preference(choice.get("logprobs"))
            if weighted is not None:
                annotation = replace(annotation, p_second=weighted, error="")
        elif kind == "alpaca_eval_2":
            # The weighted annotator reads the preference from log-probabilities only, never from the text.
            weighted = alpaca_eval_2_preference(choice.get("logprobs"))
            annotation = replace(annotation, p_second=weighted, error="" if weighted is not None else
                                 "no m/M among the first reply token's top log-probabilities")
        return annotation


def _retry_after(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _weighted_preference(logprobs: Any) -> float | None:
    """P(b) / (P(a) + P(b)) from the first reply token's top log-probabilities, when the endpoint gave them."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (TypeError, KeyError, IndexError):
        return None
    mass = {"a": 0.0, "b": 0.0}
    for entry in top:
        token = str(entry.get("token", "")).strip().strip("()").lower()
        if token in mass:
            mass[token] += math.exp(float(entry["logprob"]))
    total = mass["a"] + mass["b"]
    return mass["b"] / total if total > 0 else None


def alpaca_eval_2_preference(logprobs: Any) -> float | None:
    """P(M) / (P(m) + P(M)) from the first token's top log-probabilities: alpaca_eval's logprob_parser (numerator
    "m", denominators "m" and "M", a token absent from the top 5 has probability 0), as 1 - (2 - preference)."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
        found = {t["token"]: float(t["logprob"]) for t in top if t["token"] in ("m", "M")}
    except (TypeError, KeyError, IndexError, ValueError):
        return None
    if not found:
        return None
    p_first, p_second = (math.exp(found.get(t, -math.inf)) for t in ("m", "M"))
    return p_second / (p_first + p_second)


@register_judge("openai")
def _openai(cfg: JudgeConfig, device: str) -> OpenAIJudge:
    return OpenAIJudge(cfg)
