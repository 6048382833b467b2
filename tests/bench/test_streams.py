"""How the load generator reads streams that peers really send: whole, cut, failed, without usage.

The bodies are SSE as llama-server and llama-cpp-python's server write them; a transport
replays them so that each ending (a clean one, a cut one, an in-band error) is exact. The
real server is exercised in test_bench_cli.py.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from ember.bench.loadgen import BenchConfig, stream_request
from ember.bench.prompts import PromptFactory

CONFIG = BenchConfig(url="http://127.0.0.1:9/v1", model="m", max_tokens=3, timeout_s=5)
PROMPT = PromptFactory(16, "test").build(0)


def sse(*events: Any) -> bytes:
    return "".join(f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n" for event in events).encode()


def chunk(content: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}


async def send(body: bytes, status: int = 200) -> Any:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        outcome = await stream_request(client, CONFIG, PROMPT, index=0)
    return outcome, seen[0]


async def test_a_whole_stream_with_usage() -> None:
    outcome, body = await send(sse(chunk(""), chunk("a"), chunk("b"), chunk("c"), chunk(None, "length"), USAGE, "[DONE]"))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3 and body["temperature"] == 0.0
    assert outcome.ok, outcome.error
    assert outcome.completion_tokens == 3 and outcome.prompt_tokens == 20 and outcome.usage_reported
    assert outcome.finish_reason == "length"
    assert outcome.ttft_s is not None and outcome.ttft_s > 0


async def test_without_usage_content_chunks_are_counted() -> None:
    outcome, _ = await send(sse(chunk("a"), chunk("b"), chunk(None, "stop"), "[DONE]"))
    assert outcome.ok and outcome.completion_tokens == 2 and not outcome.usage_reported


async def test_a_stream_that_stops_without_an_end_is_truncated() -> None:
    outcome, _ = await send(sse(chunk("a"), chunk("b")))
    assert outcome.error == "truncated (connection closed)"
    assert outcome.completion_tokens == 2  # what did arrive is still counted


async def test_done_without_a_finish_reason_is_truncated() -> None:
    # llama-cpp-python's server ends a stream in flight this way when the next request comes.
    outcome, _ = await send(sse(chunk("a"), "[DONE]"))
    assert outcome.error == "truncated"


async def test_an_in_band_error_is_an_error() -> None:
    outcome, _ = await send(sse(chunk("a"), {"error": {"message": "engine crashed", "type": "server_error"}}, "[DONE]"))
    assert outcome.error == "stream error: engine crashed"


async def test_an_http_error_keeps_the_servers_message() -> None:
    outcome, _ = await send(json.dumps({"error": {"message": "model 'x' not found"}}).encode(), status=404)
    assert outcome.error == "HTTP 404: model 'x' not found"
