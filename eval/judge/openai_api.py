"""The openai judge: any OpenAI-compatible chat-completions endpoint, through the official SDK, with cost accounting."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

from eval.judge.base import Annotation, JudgeError, JudgeRequest, OnResult, parse_reply, register_judge
from eval.judge.kinds import judge_kind
from eval.settings import JudgeConfig
from superfilter.errors import ConfigError

RETRY_STATUS = {408, 409, 429}  # plus every 5xx
MAX_BACKOFF_S = 60.0
# The SDK refuses to run without a key; an endpoint that needs none (a local server) is sent this one.
NO_KEY = "EMPTY"


class _GaveUp(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _is_azure(base_url: str) -> bool:
    """An Azure OpenAI resource addressed the classic way (deployments, api-version), not by its OpenAI-style /v1."""
    parts = urlsplit(base_url)
    return (parts.hostname or "").endswith(".openai.azure.com") and "/openai/v1" not in parts.path


class OpenAIJudge:
    name = "openai"

    def __init__(self, cfg: JudgeConfig) -> None:
        self.cfg = cfg
        self.retries: Counter[str] = Counter()
        self.http_requests = 0
        self.failed = 0
        self.azure = _is_azure(cfg.base_url)
        self.api_key = os.environ.get(cfg.api_key_env, "")
        if not self.api_key and ("api.openai.com" in cfg.base_url or self.azure):
            raise ConfigError(f"eval.judge.backend=openai: set the environment variable {cfg.api_key_env} "
                              "(or point eval.judge.api_key_env at the variable holding your key)")
        if self.azure and not os.environ.get("OPENAI_API_VERSION"):
            raise ConfigError(f"eval.judge.base_url={cfg.base_url} is an Azure OpenAI resource: set the environment "
                              "variable OPENAI_API_VERSION to its API version (or use its /openai/v1 endpoint)")

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.cfg.api_model, "base_url": self.cfg.base_url.rstrip("/"),
                "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def stats(self) -> dict[str, Any]:
        return {"http_requests": self.http_requests, "retries": dict(self.retries),
                "retries_total": sum(self.retries.values()), "failed": self.failed,
                "max_retries": self.cfg.max_retries, "api_model": self.cfg.api_model}

    def client(self) -> Any:
        """The SDK's async client for this endpoint: AzureOpenAI's conventions for an Azure resource (the deployment
        is eval.judge.api_model, the API version comes from OPENAI_API_VERSION)."""
        import openai  # deferred: the SDK takes most of a second to import, and only this backend needs it

        settings: dict[str, Any] = {"api_key": self.api_key or NO_KEY, "timeout": self.cfg.timeout_s, "max_retries": 0}
        if self.azure:
            return openai.AsyncAzureOpenAI(azure_endpoint=self.cfg.base_url.rstrip("/"), **settings)
        return openai.AsyncOpenAI(base_url=self.cfg.base_url.rstrip("/"), **settings)

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
        limit = asyncio.Semaphore(self.cfg.concurrency)
        failures: list[str] = []
        # One client per event loop: asyncio.run makes a new loop for each call of annotate.
        async with self.client() as client:

            async def one(i: int) -> None:
                async with limit:
                    try:
                        completion = await self._ask(client, self._body(requests[i]))
                    except _GaveUp as e:
                        failures.append(e.reason)
                        return
                on_result(i, self._annotation(keys[i], requests[i].kind, completion))

            await asyncio.gather(*(one(i) for i in range(len(requests))))
        return failures

    def _body(self, request: JudgeRequest) -> dict[str, Any]:
        system, user = request.messages()
        body: dict[str, Any] = {
            "model": self.cfg.api_model, "temperature": self.cfg.temperature,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            "max_tokens": self.cfg.max_tokens,
        }
        body.update(judge_kind(request.kind).api)
        return body

    # The SDK sends each attempt (endpoint, key, timeout, Azure's conventions, typed replies and errors) but does
    # not retry (max_retries=0), because three checked behaviours cannot hold with its retries: (1) the summary counts
    # retries by cause (http_429, timeout, malformed_body, ...), and the SDK retries inside one call without telling
    # why (only the HTTP client under it sees each attempt, and that client changed from httpx to httpx2 in openai 3);
    # (2) a 200 whose body is not a chat completion is a success to the SDK, never retried; (3) eval.judge.backoff_s
    # sets the first delay, which the SDK does not let a caller choose (0.5 s doubling to 8 s).
    async def _ask(self, client: Any, body: dict[str, Any]) -> Any:
        """A chat completion with readable text, after at most max_retries retries."""
        import openai  # deferred: see client()

        for attempt in range(self.cfg.max_retries + 1):
            retry_after = 0.0
            self.http_requests += 1
            try:
                completion = await client.chat.completions.create(**body)
            except openai.APITimeoutError:
                reason = "timeout"
            except openai.APIConnectionError as e:
                reason = f"transport:{type(e.__cause__ or e).__name__}"
            except openai.APIStatusError as e:
                if e.status_code not in RETRY_STATUS and e.status_code < 500:
                    raise JudgeError(f"judge endpoint {self.cfg.base_url} answered HTTP {e.status_code}: "
                                     f"{e.response.text[:300]}") from e
                reason = f"http_{e.status_code}"
                retry_after = _retry_after(e.response.headers.get("retry-after"))
            except json.JSONDecodeError:  # a JSON content type over a body that is not
                reason = "malformed_body"
            else:
                if _reply_text(completion) is not None:
                    return completion
                reason = "malformed_body"
            self.retries[reason] += 1
            if attempt == self.cfg.max_retries:
                raise _GaveUp(reason)
            await asyncio.sleep(min(MAX_BACKOFF_S, max(retry_after, self.cfg.backoff_s * 2**attempt)))
        raise AssertionError("unreachable")

    def _annotation(self, key: str, kind_name: str, completion: Any) -> Annotation:
        kind = judge_kind(kind_name)
        usage = completion.usage
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = (prompt_tokens * self.cfg.usd_per_1k_prompt_tokens
                + completion_tokens * self.cfg.usd_per_1k_completion_tokens) / 1000
        annotation = parse_reply(key, kind_name, _reply_text(completion) or "", prompt_tokens=prompt_tokens,
                                 completion_tokens=completion_tokens, cost_usd=cost)
        if kind.weigh is None:
            return annotation
        logprobs = completion.choices[0].logprobs
        weighted = kind.weigh(logprobs.model_dump() if logprobs is not None else None)
        if kind.weigh_only:
            # The weighted annotator reads the preference from log-probabilities only, never from the text.
            return replace(annotation, p_second=weighted, error="" if weighted is not None else
                           f"no {'/'.join(kind.choices)} among the first reply token's top log-probabilities")
        return replace(annotation, p_second=weighted, error="") if weighted is not None else annotation


def _reply_text(completion: Any) -> str | None:
    """The first choice's text; None for a body that is not a chat completion (the SDK hands back such a body as
    text, or as a ChatCompletion whose fields are missing)."""
    try:
        content = completion.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _retry_after(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _label(cfg: JudgeConfig) -> str:
    return cfg.api_model


def _note(cfg: JudgeConfig) -> str:
    return f"openai judge {cfg.api_model} at {cfg.base_url}"


@register_judge("openai", label=_label, note=_note)
def _openai(cfg: JudgeConfig, device: str) -> OpenAIJudge:
    return OpenAIJudge(cfg)
