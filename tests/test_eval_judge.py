"""Judges: the annotation cache, the openai backend against a misbehaving local server, the hf judge's scores."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval.judge import (
    JUDGE_KINDS,
    AnnotationCache,
    FakeJudge,
    HFJudge,
    JudgeError,
    JudgeRequest,
    OpenAIJudge,
    judge_all,
    parse_reply,
)
from eval.judge.hf import _Trie
from eval.settings import JudgeConfig
from superfilter.models import ModelConfig, build_tiny_model

REQUESTS = [JudgeRequest("scores", f"question {i}?", f"answer one {i}", f"answer two {i} is longer", "model_first")
            for i in range(10)]


def test_parse_reply_scores_and_preferences():
    assert parse_reply("k", "scores", "8 6\nwhy").scores == [8.0, 6.0]
    assert "not two scores" in parse_reply("k", "scores", "Assistant 1: 8").error
    assert parse_reply("k", "preference", "b").p_second == 1.0
    assert parse_reply("k", "preference", "Output (a)").p_second == 0.0
    assert parse_reply("k", "preference", "(b) is better").p_second == 1.0
    assert parse_reply("k", "preference", "both are fine").error


def test_cache_reuses_annotations_and_survives_a_cut_last_line(tmp_path):
    calls = Counter()

    def reply(request: JudgeRequest) -> str:
        calls[request.question] += 1
        return "7 3\nok"

    judge = FakeJudge(reply)
    path = tmp_path / "annotations.jsonl"
    first, summary = judge_all(judge, REQUESTS + REQUESTS[:2], [AnnotationCache(path)])
    assert summary["asked"] == len(REQUESTS) and summary["cached"] == 0
    assert all(a.scores == [7.0, 3.0] for a in first)
    assert set(calls.values()) == {1}  # a repeated request is asked once
    with open(path, "a") as f:  # a crash in the middle of writing a line
        f.write('{"key": "abc", "kind": "sco')
    again, summary = judge_all(judge, REQUESTS, [AnnotationCache(path)])
    assert summary["asked"] == 0 and summary["cached"] == len(REQUESTS)
    assert [a.key for a in again] == [a.key for a in first[: len(REQUESTS)]]
    assert set(calls.values()) == {1}


def test_order_is_part_of_the_key_so_identical_answers_are_judged_in_both_orders():
    judge = FakeJudge()
    same = [JudgeRequest("scores", "q", "x", "x", order) for order in ("model_first", "reference_first")]
    _, summary = judge_all(judge, same, [])
    assert summary["asked"] == 2


def test_trie_scores_multi_token_candidates_exactly():
    import math

    # Candidates "1" = (1,), "10" = (1, 0), "2" = (2,): one chain through token 1 gives every distribution needed.
    trie = _Trie([(1,), (1, 0), (2,)])
    assert trie.runs == [(1,)]
    log = math.log
    dists = {(): {1: log(0.6), 2: log(0.3), 0: log(0.1)}, (1,): {0: log(0.25), 1: log(0.75), 2: log(1e-9)}}
    lps = trie.log_probs(dists)
    assert [math.exp(x) for x in lps] == pytest.approx([0.6 * 0.75, 0.6 * 0.25, 0.3])


# A local OpenAI-compatible server that fails in every way a real one does before answering.


class FlakyServer:
    """Per prompt, by its index in the question: 0 → 429 then OK, 1 → 500 twice then OK, 2 → a timeout then OK,
    3 → a malformed body then OK, 4 → a well-formed reply that is garbage (every time), 5-9 → OK at once.
    A question containing "always-down" gets HTTP 503 forever."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/chat/completions" and body["model"] == "judge-model"
                assert self.headers["Authorization"] == "Bearer sk-test"
                user = body["messages"][1]["content"]
                with server.lock:
                    server.attempts[user] += 1
                    attempt = server.attempts[user]
                server.respond(self, user, attempt)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def respond(self, handler: BaseHTTPRequestHandler, user: str, attempt: int) -> None:
        index = int(user.split("question ")[1].split("?")[0]) if "question " in user else -1
        if "always-down" in user:
            return self.send(handler, 503, b"busy")
        if index == 0 and attempt == 1:
            return self.send(handler, 429, b'{"error": "rate limit"}', {"Retry-After": "0"})
        if index == 1 and attempt <= 2:
            return self.send(handler, 500, b"internal error")
        if index == 2 and attempt == 1:
            time.sleep(self.delay_s)  # longer than the client's timeout
            return self.send(handler, 200, self.completion("9 1"))
        if index == 3 and attempt == 1:
            return self.send(handler, 200, b"<html>not json</html>")
        content = "I would rather not rate these." if index == 4 else f"{index % 10 + 1} 5\nexplanation"
        return self.send(handler, 200, self.completion(content))

    @staticmethod
    def completion(content: str) -> bytes:
        return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}],
                           "usage": {"prompt_tokens": 100, "completion_tokens": 10}}).encode()

    @staticmethod
    def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            handler.send_response(status)
            for k, v in (headers or {}).items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up on a timed-out request
            pass

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FlakyServer(delay_s=1.5)
    yield s
    s.close()


def _openai_judge(url: str, max_retries: int = 3) -> OpenAIJudge:
    cfg = JudgeConfig(backend="openai", api_model="judge-model", base_url=url, api_key_env="SUPERFILTER_TEST_KEY",
                      max_retries=max_retries, timeout_s=0.5, usd_per_1k_prompt_tokens=0.03,
                      usd_per_1k_completion_tokens=0.06, concurrency=4, backoff_s=0.01)
    return OpenAIJudge(cfg)


def test_openai_backend_retries_each_failure_then_caches_every_annotation_once(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERFILTER_TEST_KEY", "sk-test")
    judge = _openai_judge(server.url)
    path = tmp_path / "annotations.jsonl"
    annotations, summary = judge_all(judge, REQUESTS, [AnnotationCache(path)])

    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == len(REQUESTS) == len({r["key"] for r in lines})  # every annotation arrives once
    assert [a.scores for a in annotations if a.ok] == [[i % 10 + 1, 5.0] for i in range(10) if i != 4]
    assert annotations[2].scores == [3.0, 5.0]  # the retry's answer; the late one was abandoned
    assert summary["unparseable"] == 1 and "not two scores" in annotations[4].error  # garbage is reported
    assert summary["retries"] == {"http_429": 1, "http_500": 2, "timeout": 1, "malformed_body": 1}
    assert max(server.attempts.values()) <= judge.cfg.max_retries + 1
    assert summary["prompt_tokens"] == 100 * 10 and summary["completion_tokens"] == 10 * 10
    assert summary["cost_usd"] == pytest.approx(10 * (100 * 0.03 + 10 * 0.06) / 1000)

    before = sum(server.attempts.values())
    _, again = judge_all(_openai_judge(server.url), REQUESTS, [AnnotationCache(path)])
    assert again["asked"] == 0 and sum(server.attempts.values()) == before  # a rerun asks nothing


def test_openai_backend_gives_up_after_bounded_retries_and_keeps_the_rest(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERFILTER_TEST_KEY", "sk-test")
    down = JudgeRequest("scores", "always-down", "a", "b", "model_first")
    path = tmp_path / "annotations.jsonl"
    with pytest.raises(JudgeError, match="1 of 3 judge requests failed after 2 retries"):
        judge_all(_openai_judge(server.url, max_retries=2), [REQUESTS[5], down, REQUESTS[6]], [AnnotationCache(path)])
    assert sum(n for user, n in server.attempts.items() if "always-down" in user) == 3  # 1 try + 2 retries
    assert len(path.read_text().splitlines()) == 2  # the answered ones are cached


def test_openai_backend_needs_the_key_for_the_openai_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(Exception, match="OPENAI_API_KEY"):
        OpenAIJudge(JudgeConfig(backend="openai"))


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory) -> HFJudge:
    folder = build_tiny_model("llama", tmp_path_factory.mktemp("judge") / "tiny")
    cfg = JudgeConfig(backend="hf", model=ModelConfig(name="tiny", source="local", path=str(folder)),
                      max_judge_tokens=600)  # the tiny tokenizer spends ~400 tokens on the task text alone
    return HFJudge(cfg, "cpu")


def test_hf_judge_scores_every_item_within_1_and_10(tiny_judge):
    long_answer = "word " * 300  # longer than max_judge_tokens: must be shortened, not fail
    requests = REQUESTS[:4] + [JudgeRequest("scores", "q?", long_answer, "short", "model_first")]
    annotations, summary = judge_all(tiny_judge, requests, [])
    assert len(annotations) == 5 and summary["unparseable"] == 0
    for a in annotations:
        assert a.ok and len(a.scores) == 2 and all(1.0 <= s <= 10.0 for s in a.scores)
    assert summary["truncated_prompts"] > 0


def test_hf_judge_preferences_are_probabilities(tiny_judge):
    requests = [JudgeRequest("preference", "Say hi.", "hi", "hello there"), JudgeRequest("preference", "x", "a", "b")]
    annotations, _ = judge_all(tiny_judge, requests, [])
    assert all(a.ok and 0.0 <= a.p_second <= 1.0 for a in annotations)


def test_hf_judge_cached_candidate_scoring_equals_full_recomputation(tiny_judge):
    import math

    import torch

    from eval.lm import forward_tail

    tiny_judge._load()
    prefix = tiny_judge._prefix(REQUESTS[0]) + "7"
    ids = tiny_judge._encode(prefix)
    candidates = [f" {v}" for v in range(1, 11)]
    root, cache = forward_tail(tiny_judge.model, [ids])
    fast = tiny_judge._candidate_probs(prefix, ids, root[0, -1], cache, candidates)

    paths = [tuple(tiny_judge._continuation(prefix, ids, c)) for c in candidates]
    trie = _Trie(paths)
    dists = {}
    with torch.inference_mode():
        for node in trie.nodes:  # every distribution from its own full forward pass, no cache
            dists[node] = forward_tail(tiny_judge.model, [ids + list(node)])[0][0, -1]
    slow = torch.softmax(torch.tensor(trie.log_probs(dists), dtype=torch.float64), 0).tolist()
    assert fast == pytest.approx(slow, abs=1e-5) and math.isclose(sum(fast), 1.0)


class OfficialKindsServer(FlakyServer):
    """FlakyServer's failures (by the question's index) for AlpacaEval 2 and Arena-Hard requests. AlpacaEval 2
    replies carry first-token log-probabilities; index 4 gets a reply without m/M (AlpacaEval 2) or without a
    verdict (Arena-Hard)."""

    def respond(self, handler: BaseHTTPRequestHandler, user: str, attempt: int) -> None:
        index = int(user.split("question ")[1].split("?")[0])
        if index in (0, 1, 2, 3):
            if index == 0 and attempt == 1:
                return self.send(handler, 429, b"{}", {"Retry-After": "0"})
            if index == 1 and attempt <= 2:
                return self.send(handler, 500, b"internal error")
            if index == 2 and attempt == 1:
                time.sleep(self.delay_s)
                return self.send(handler, 200, b"{}")
            if index == 3 and attempt == 1:  # unlike FlakyServer's, this one claims to be JSON
                return self.send(handler, 200, b"<html>not json</html>", {"Content-Type": "application/json"})
        if "## Best Model Identifier" in user:
            top = ([{"token": "The", "logprob": -0.1}] if index == 4 else
                   [{"token": "M", "logprob": math.log(0.1 * (index + 1))}, {"token": "m", "logprob": math.log(0.25)}])
            body = {"choices": [{"message": {"role": "assistant", "content": top[0]["token"]},
                                 "logprobs": {"content": [{"token": top[0]["token"], "logprob": top[0]["logprob"],
                                                           "top_logprobs": top}]}}],
                    "usage": {"prompt_tokens": 50, "completion_tokens": 1}}
        else:
            verdict = ("I cannot decide." if index == 4 else
                       f"Reasoning.\n\nMy final verdict is: [[{LABELS[index % 5]}]]")
            body = {"choices": [{"message": {"role": "assistant", "content": verdict}}],
                    "usage": {"prompt_tokens": 900, "completion_tokens": 300}}
        return self.send(handler, 200, json.dumps(body).encode())


LABELS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]


@pytest.fixture
def official_server():
    s = OfficialKindsServer(delay_s=1.5)
    yield s
    s.close()


def test_openai_backend_sends_the_official_settings_and_reads_alpaca_eval_2_and_arena_hard(
        official_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPERFILTER_TEST_KEY", "sk-test")
    alpaca = [JudgeRequest("alpaca_eval_2", f"question {i}?", f"output one {i}", f"output two {i}") for i in range(8)]
    arena = [JudgeRequest("arena_hard", f"question {i}?", f"baseline {i}", f"model {i}", "baseline_first")
             for i in range(8)]
    judge = _openai_judge(official_server.url)
    bodies: list[dict] = []
    original_body = judge._body
    judge._body = lambda request: bodies.append(original_body(request)) or bodies[-1]  # keep what was sent
    annotations, summary = judge_all(judge, alpaca + arena, [AnnotationCache(tmp_path / "a.jsonl")])

    for body in bodies:
        kind = "alpaca_eval_2" if "## Best Model Identifier" in body["messages"][1]["content"] else "arena_hard"
        assert {k: body[k] for k in JUDGE_KINDS[kind].api} == JUDGE_KINDS[kind].api
    assert JUDGE_KINDS["alpaca_eval_2"].api == {"max_tokens": 1, "temperature": 1.0, "logprobs": True,
                                                "top_logprobs": 5}
    assert JUDGE_KINDS["arena_hard"].api == {"max_tokens": 4096, "temperature": 0.0}
    for i, a in enumerate(annotations[:8]):
        if i == 4:
            assert not a.ok and "no m/M" in a.error
        else:
            assert a.p_second == pytest.approx(0.1 * (i + 1) / (0.1 * (i + 1) + 0.25)), i
    for i, a in enumerate(annotations[8:]):
        assert (a.verdict, a.ok) == ((None, False) if i == 4 else (LABELS[i % 5], True)), i
    assert summary["unparseable"] == 2
    assert summary["retries"] == {"http_429": 2, "http_500": 4, "timeout": 2, "malformed_body": 2}
    assert math.isclose(summary["cost_usd"], (8 * (50 * 0.03 + 1 * 0.06) + 8 * (900 * 0.03 + 300 * 0.06)) / 1000)


def test_a_backend_registers_itself_and_unknown_backends_fail_naming_the_registered_ones():
    from eval.config import EvalConfig
    from eval.judge import JUDGES, make_judge, register_judge
    from superfilter.errors import ConfigError

    assert set(JUDGES) >= {"openai", "hf", "replay", "fake"}

    @register_judge("constant")
    def _constant(cfg, device):
        return FakeJudge(lambda request: "b")

    try:
        judge = make_judge(JudgeConfig(backend="constant"))
        (annotation,), _ = judge_all(judge, [JudgeRequest("preference", "q", "x", "y")], [])
        assert annotation.p_second == 1.0
        EvalConfig(suites=["alpaca_eval"], judge=JudgeConfig(backend="constant")).validate()
        with pytest.raises(ValueError, match="registered twice"):
            register_judge("constant")(_constant)
    finally:
        del JUDGES["constant"]
    with pytest.raises(ConfigError, match=r"eval.judge.backend: unknown 'constant'; choose from \[.*'fake'"):
        make_judge(JudgeConfig(backend="constant"))
    with pytest.raises(ConfigError, match="eval.judge.backend: unknown"):
        EvalConfig(suites=["alpaca_eval"], judge=JudgeConfig(backend="constant")).validate()


def test_each_backend_names_and_describes_its_judge():
    from eval.judge import describe, judge_label

    hf = JudgeConfig(backend="hf", model=ModelConfig(name="smol", source="local", path="x"))
    assert describe(hf).startswith("hf judge smol: judged by a small local model, not GPT-4")
    assert judge_label(hf) == "smol"
    api = JudgeConfig(backend="openai", api_model="gpt-x", base_url="http://127.0.0.1:1/v1")
    assert (describe(api), judge_label(api)) == ("openai judge gpt-x at http://127.0.0.1:1/v1", "gpt-x")
    assert describe(JudgeConfig(backend="fake")) == "fake judge"
    assert judge_label(JudgeConfig(backend="replay")) == "replay"


def test_a_judge_kind_is_one_registered_object():
    from eval.judge import JudgeKind, judge_kind, register_kind

    assert set(JUDGE_KINDS) == {"scores", "preference", "alpaca_eval_2", "arena_hard"}
    with pytest.raises(ValueError, match="registered twice"):
        register_kind(JUDGE_KINDS["scores"])
    with pytest.raises(ValueError, match="kind must be one of"):
        JudgeRequest("rating", "q", "a", "b")
    with pytest.raises(ValueError, match="answer must be one of"):
        JudgeKind("rating", answer="stars", prompt="pairwise", system="", placeholders=("q", "a", "b"),
                  parse=lambda raw: ({}, ""))
    for kind in JUDGE_KINDS.values():
        assert judge_kind(kind.name) is kind and kind.choices
        user = kind.messages("QUESTION-TEXT", "FIRST-ANSWER", "SECOND-ANSWER")[1]
        assert user.index("QUESTION-TEXT") < user.index("FIRST-ANSWER") < user.index("SECOND-ANSWER"), kind.name


def test_openai_backend_uses_azure_conventions_for_an_azure_resource(monkeypatch):
    import openai

    monkeypatch.setenv("SUPERFILTER_TEST_KEY", "sk-test")
    cfg = JudgeConfig(backend="openai", api_model="my-deployment", base_url="https://res.openai.azure.com",
                      api_key_env="SUPERFILTER_TEST_KEY")
    monkeypatch.delenv("OPENAI_API_VERSION", raising=False)
    with pytest.raises(Exception, match="OPENAI_API_VERSION"):
        OpenAIJudge(cfg)
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    assert isinstance(OpenAIJudge(cfg).client(), openai.AsyncAzureOpenAI)
    v1 = JudgeConfig(backend="openai", base_url="https://res.openai.azure.com/openai/v1",
                     api_key_env="SUPERFILTER_TEST_KEY")
    client = OpenAIJudge(v1).client()
    assert not isinstance(client, openai.AsyncAzureOpenAI) and str(client.base_url).startswith(v1.base_url)


def test_the_key_is_never_logged(server, monkeypatch, caplog):
    monkeypatch.setenv("SUPERFILTER_TEST_KEY", "sk-test")
    with caplog.at_level("DEBUG"):
        judge_all(_openai_judge(server.url), REQUESTS[:4], [])
    assert caplog.records and "sk-test" not in caplog.text


def test_importing_the_judges_does_not_import_the_arena_hard_module():
    import subprocess
    import sys

    code = "import sys, eval.judge; assert 'eval.arena_hard' not in sys.modules, 'eval.judge imports eval.arena_hard'"
    subprocess.run([sys.executable, "-c", code], check=True)
