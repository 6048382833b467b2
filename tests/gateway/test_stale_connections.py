"""Keep-alive connections that the other side closes: the gateway's pooled upstream connections,
and ember's own idle client connections.

The upstream here is a raw HTTP/1.1 server on loopback that answers the first request on each
connection and closes the connection on reading the second, without a byte of answer: what a
server that closes an idle keep-alive connection just as the client sends on it looks like.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import ServerHandle

CHAT_STREAM = "".join(
    f"data: {json.dumps(chunk)}\n\n"
    for chunk in (
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]},
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"id": "c", "model": "m", "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 1}},
    )
) + "data: [DONE]\n\n"
EMBEDDING = json.dumps({"data": [{"index": 0, "embedding": [0.5, 0.5]}], "model": "m", "usage": {"prompt_tokens": 1}})


@dataclass
class ClosingUpstream:
    port: int
    connections: int = 0
    answered: int = 0
    dropped: int = 0

    @property
    def v1(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The request's path, its body read; None at the end of the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    return lines[0].split(" ")[1]


@asynccontextmanager
async def closing_upstream() -> AsyncIterator[ClosingUpstream]:
    """Started in the test's own event loop (an async fixture may run in another)."""
    state = ClosingUpstream(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            path = await _read_request(reader)
            sse = path is not None and path.endswith("/chat/completions")
            body = (CHAT_STREAM if sse else EMBEDDING).encode()
            kind = "text/event-stream" if sse else "application/json"
            writer.write(
                f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()
            state.answered += 1
            await _read_request(reader)  # the second request on this connection: closed unanswered
            state.dropped += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def _provider(base_url: str) -> Any:
    from ember.gateway.config import ProviderConfig
    from ember.gateway.gateway import make_provider

    return make_provider(ProviderConfig(name="p", kind="openai", base_url=base_url, keepalive_expiry=60))


async def test_a_reused_connection_closed_before_any_answer_is_sent_once_more() -> None:
    from ember.services.types import ChatMessage, TextRequest

    request = TextRequest(model="m", messages=[ChatMessage("user", "hello")], max_tokens=4)
    async with closing_upstream() as upstream:
        await _three_chats_and_an_embedding(upstream, request)


async def _three_chats_and_an_embedding(upstream: ClosingUpstream, request: Any) -> None:
    provider = _provider(upstream.v1)
    try:
        for _ in range(3):
            answer = await (await provider.start(request, "m")).collect()
            assert answer.text == "hi"
        # The second was sent on the kept connection, dropped, and sent again on a connection of its
        # own (closed after it); the third found the pool empty and opened one, kept for the next.
        assert (upstream.answered, upstream.dropped, upstream.connections) == (3, 1, 3)
        outcome = await provider.embed("m", ["a"], dimensions=None)
        assert outcome.vectors == [[0.5, 0.5]]
        assert (upstream.answered, upstream.dropped, upstream.connections) == (4, 2, 4)
    finally:
        await provider.aclose()


async def test_idle_connections_expire_before_the_upstreams_keep_alive() -> None:
    """By default a pooled connection is not reused after 2 s idle (uvicorn and llama-server close at 5 s)."""
    from ember.gateway.config import ProviderConfig
    from ember.gateway.remote import build_client

    config = ProviderConfig(name="p", kind="openai", base_url="http://127.0.0.1:1/v1")
    assert 0 < config.keepalive_expiry < 5
    client = build_client(config)
    try:
        assert client.connector._keepalive_timeout == config.keepalive_expiry  # type: ignore[union-attr]
    finally:
        await client.close()


@pytest.mark.slow
def test_ember_keeps_an_idle_client_connection_longer_than_the_sdks_pools(server: ServerHandle) -> None:
    """The openai and anthropic SDKs drop an idle connection after 5 s; ember must not close it first."""
    host, port = server.base_url.removeprefix("http://").split(":")
    request = f"GET /health HTTP/1.1\r\nhost: {host}\r\n\r\n".encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        replies = sock.makefile("rb")
        for wait in (0.0, 6.0):
            time.sleep(wait)
            sock.sendall(request)
            status = replies.readline()
            assert status.startswith(b"HTTP/1.1 200"), (wait, status)
            length = 0
            while (line := replies.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert replies.read(length) == b'{"status":"ok"}'
