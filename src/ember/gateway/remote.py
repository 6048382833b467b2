"""What the remote providers share: pooled HTTP clients, error mapping, deadlines, streams.

The HTTP client is aiohttp's: measured on the provider path's own calls (bench/http_clients.py)
it spends about a third of httpx's CPU per request (0.4 vs 1.3 ms for an 8-token stream), which
is most of what the gateway adds to a proxied request.

`RemoteClient.stream` returns a Generation only once the upstream has sent its first
content token (or finished), so anything that fails before that (refused, 5xx, 429, a
first-token timeout, an in-band error) is raised from it and the gateway can still fail
over. After that a broken stream raises UpstreamError from the iteration.

Every way out (an error, a cancelled start, an aclose()d Generation) closes the HTTP
response, and an unfinished response closes its connection: a racing loser's upstream
sees its client go away at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from yarl import URL

from ember.engine.types import TokenLogprob, TopLogprob
from ember.errors import UpstreamError, UpstreamTimeout
from ember.gateway.config import ProviderConfig
from ember.services.generation import DROPPED_FIELDS, Generation
from ember.services.types import FinishReason, GenerationEvent

log = logging.getLogger("ember.gateway")
_CLIENT_ERRORS = frozenset({400, 413, 422})
# What a connection that broke before the answer's first byte raises: the server closed it
# without a byte of answer, or reset it as we sent or on the first read. (A refused or timed-out
# connect is a ClientConnectorError / ConnectionTimeoutError: not this, and not sent again.)
_BROKEN_BEFORE_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
_JSON = {"Content-Type": "application/json"}
_MAX_MESSAGE = 500  # characters of an upstream's error body we pass on


@dataclass
class StreamState:
    """What a parser learns while reading a stream; read when the Generation is built."""

    model: str  # the upstream's name for the model, once a chunk tells it
    started: float  # perf_counter when the request was sent
    prompt_tokens: int = 0
    first_token_at: float | None = None  # perf_counter of the first content token

    def mark_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def timings(self) -> tuple[float, float]:
        """(prompt_eval_seconds, eval_seconds) as the client saw them."""
        now = time.perf_counter()
        first = self.first_token_at or now
        return first - self.started, now - first


# A response body as its raw byte chunks, as they arrive (aiohttp's content.iter_any()).
Body = AsyncIterator[bytes]
# A parser turns a response body into events: events with non-empty text, tool-call deltas or
# logprobs, then exactly one done event; it raises UpstreamError on a malformed or in-band error
# chunk.
Parser = Callable[[Body, StreamState], AsyncGenerator[GenerationEvent, None]]


# A provider holds several small clients and sends each request to the least busy one: with
# httpx a single big pool cost ~1 ms a request at 32 streams (work quadratic in its
# connections). aiohttp's connector keeps idle connections in a per-host deque and should not
# need this; the spreading is kept as it was, not re-measured since the switch.
CONNECTIONS_PER_CLIENT = 8


# The headers that carry a provider's key (read from api_key_env; None when it is unset) and
# whatever its API wants on every request beside it.
Credentials = Callable[[str | None], dict[str, str]]


def bearer(key: str | None) -> dict[str, str]:
    """OpenAI's and Ollama's way: Authorization: Bearer <key>, nothing without a key."""
    return {"Authorization": f"Bearer {key}"} if key else {}


def client_headers(config: ProviderConfig, credentials: Credentials = bearer) -> dict[str, str]:
    """What every request to the provider carries: its configured headers and its key's."""
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    return {"User-Agent": "ember-gateway", **config.headers, **credentials(key or None)}


def build_client(
    config: ProviderConfig,
    max_connections: int | None = None,
    credentials: Credentials = bearer,
    *,
    fresh: bool = False,
) -> aiohttp.ClientSession:
    """A pooled client for a provider (made inside the running loop); connects are bounded here,
    reads by our own deadlines. `fresh`: every request on a new connection, closed after it."""
    assert config.base_url is not None, "remote providers have a base_url (checked by the config)"
    size = max_connections or config.max_connections
    if config.keepalive_expiry > 0 and not fresh:
        connector = aiohttp.TCPConnector(limit=size, keepalive_timeout=config.keepalive_expiry)
    else:  # no idle connection is kept at all
        connector = aiohttp.TCPConnector(limit=size, force_close=True)
    # connect covers waiting for a pooled connection too; sock_read=total_timeout is only a
    # backstop against a stalled upstream: first-token and total deadlines are ours.
    timeout = aiohttp.ClientTimeout(total=None, connect=config.connect_timeout, sock_read=config.total_timeout)
    return aiohttp.ClientSession(
        connector=connector, headers=client_headers(config, credentials), timeout=timeout, trust_env=False
    )


# -- failures -----------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def error_message(body: Any) -> str | None:
    """The message in an OpenAI or Anthropic ({"error": {"message"}}), Ollama ({"error": "..."}) or
    other error body."""
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            error = error.get("message", error)
        if error is not None:
            return error if isinstance(error, str) else json.dumps(error)
    if isinstance(body, str) and body.strip():
        return body.strip()
    return None


async def status_error(provider: str, response: aiohttp.ClientResponse) -> UpstreamError:
    """An HTTP error answer as an UpstreamError (its body is read here)."""
    status = response.status
    try:
        raw = await response.read()
    except aiohttp.ClientError:
        raw = b""
    text = raw.decode("utf-8", "replace")
    try:
        detail = error_message(json.loads(text))
    except ValueError:
        detail = error_message(text)
    detail = (detail or response.reason or "no detail")[:_MAX_MESSAGE]
    error = UpstreamError(
        f"{provider}: upstream answered {status}: {detail}",
        upstream_status=status,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )
    if status in _CLIENT_ERRORS:
        # The request itself is wrong (the router answers at once): say so with its own status.
        error.status_code = status
    return error


def transport_detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def transport_error(provider: str, exc: aiohttp.ClientError) -> UpstreamError:
    """A failure with no HTTP answer: refused, reset, dropped mid-body, timed out."""
    detail = transport_detail(exc)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # connecting, or waiting for the pool
        return UpstreamTimeout(f"{provider}: timed out connecting: {detail}")
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return UpstreamTimeout(f"{provider}: timed out reading: {detail}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(f"{provider}: cannot connect: {detail}")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ClientPayloadError):
        return UpstreamError(f"{provider}: connection broken: {detail}")
    return UpstreamError(f"{provider}: {detail}")


def broken(provider: str, what: str) -> UpstreamError:
    return UpstreamError(f"{provider}: {what}")


def read_chunk(provider: str, text: str, state: StreamState) -> dict[str, Any]:
    """One streamed JSON object (an SSE event's data or an NDJSON line), checked: malformed
    chunks and in-band errors raise; the first chunks tell the upstream's model name."""
    try:
        chunk = json.loads(text)
    except ValueError as exc:
        raise broken(provider, f"malformed chunk from upstream: {text[:200]!r}") from exc
    if not isinstance(chunk, dict):
        raise broken(provider, f"malformed chunk from upstream: {text[:200]!r}")
    if chunk.get("error"):
        raise broken(provider, f"upstream error mid-stream: {error_message(chunk)}")
    if chunk.get("model") and state.first_token_at is None:
        state.model = chunk["model"]
    return chunk


def upstream_role(role: str) -> str:
    """A message's role as upstreams know it: "developer" (OpenAI's newer name for the system
    role, which ember accepts) goes as "system"; llama.cpp's and most servers refuse it, and
    OpenAI takes "system" for it."""
    return "system" if role == "developer" else role


def finish_reason(reason: Any) -> FinishReason:
    """An upstream's finish reason as ember's: tool_calls (and the legacy function_call) stay what
    they are; content_filter and anything unknown end the answer as "stop"."""
    if reason == "length":
        return "length"
    return "tool_calls" if reason in ("tool_calls", "function_call") else "stop"


def token_logprobs(provider: str, entries: Any) -> tuple[TokenLogprob, ...]:
    """Per-token logprobs in the shape OpenAI's chat and Ollama share: [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}]; missing bytes are the token's UTF-8."""
    if not isinstance(entries, list):
        return ()
    try:
        return tuple(
            TokenLogprob(
                token=str(e["token"]),
                logprob=float(e["logprob"]),
                bytes=_bytes(e.get("bytes"), str(e["token"])),
                top=tuple(
                    TopLogprob(
                        token=str(t["token"]),
                        logprob=float(t["logprob"]),
                        bytes=_bytes(t.get("bytes"), str(t["token"])),
                    )
                    for t in e.get("top_logprobs") or ()
                ),
            )
            for e in entries
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise broken(provider, f"malformed logprobs from upstream: {json.dumps(entries)[:200]}") from exc


def _bytes(value: Any, token: str) -> tuple[int, ...]:
    return tuple(int(b) for b in value) if isinstance(value, list) else tuple(token.encode())


# -- wire framing -------------------------------------------------------------------------------


async def sse_data(body: Body) -> AsyncGenerator[str, None]:
    """The data of each server-sent event (multi-line data joined by newlines; comments skipped),
    split from the raw bytes (no text or line decoder in between)."""
    buffer = b""
    async for chunk in body:
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")  # a lone trailing \r waits for its \n
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            data = _event_data(block)
            if data is not None:
                yield data
    data = _event_data(buffer.rstrip(b"\r\n"))
    if data is not None:
        yield data


def _event_data(block: bytes) -> str | None:
    # ":" comments (keep-alives), event:, id: and retry: carry nothing we need.
    if block.startswith(b"data:") and b"\n" not in block:  # the usual one-line event
        value = block[5:]
        return (value[1:] if value.startswith(b" ") else value).decode("utf-8", "replace")
    lines = [line[5:] for line in block.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(v[1:] if v.startswith(b" ") else v for v in lines).decode("utf-8", "replace")


async def ndjson_lines(body: Body) -> AsyncGenerator[str, None]:
    """The non-blank lines of a newline-delimited JSON body (a last line may lack its newline)."""
    buffer = b""
    async for chunk in body:
        buffer += chunk
        if b"\n" not in chunk:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line.decode("utf-8", "replace")
    if buffer.strip():
        yield buffer.decode("utf-8", "replace")


# -- the client -----------------------------------------------------------------------------------


@dataclass
class _Shard:
    http: aiohttp.ClientSession
    in_flight: int = 0


class ClientPool:
    """Small aiohttp sessions, made as load needs them (inside the running loop), up to the
    provider's max_connections."""

    def __init__(
        self, config: ProviderConfig, per_client: int = CONNECTIONS_PER_CLIENT, credentials: Credentials = bearer
    ) -> None:
        self._config = config
        self._credentials = credentials
        self._per_client = min(per_client, config.max_connections)
        self._most = max(1, -(-config.max_connections // self._per_client))
        self._shards: list[_Shard] = []
        self._fresh: aiohttp.ClientSession | None = None

    def fresh(self) -> aiohttp.ClientSession:
        """The client for a request sent once more: its own connection, never a pooled one (which
        the upstream may have closed too, as it closes every idle one when its keep-alive ends)."""
        if self._fresh is None:
            self._fresh = build_client(self._config, credentials=self._credentials, fresh=True)
        return self._fresh

    @property
    def clients(self) -> list[aiohttp.ClientSession]:
        return [shard.http for shard in self._shards]

    def acquire(self) -> _Shard:
        shard = min(self._shards, key=lambda s: s.in_flight, default=None)
        if (shard is None or shard.in_flight >= self._per_client) and len(self._shards) < self._most:
            shard = _Shard(build_client(self._config, self._per_client, self._credentials))
            self._shards.append(shard)
        assert shard is not None
        shard.in_flight += 1
        return shard

    @staticmethod
    def release(shard: _Shard) -> None:
        shard.in_flight -= 1

    async def aclose(self) -> None:
        shards, self._shards = self._shards, []
        for shard in shards:
            await shard.http.close()
        if self._fresh is not None:
            await self._fresh.close()
            self._fresh = None


class RemoteClient:
    """One provider's HTTP side: its pooled clients, its timeouts and its error mapping."""

    def __init__(self, config: ProviderConfig, credentials: Credentials = bearer) -> None:
        self.config = config
        self.pool = ClientPool(config, credentials=credentials)
        self._urls: dict[str, URL] = {}

    def url(self, path: str) -> URL:
        # Absolute and parsed once per path, not merged from a base URL on every request.
        url = self._urls.get(path)
        if url is None:
            assert self.config.base_url is not None
            url = self._urls[path] = URL(self.config.base_url.rstrip("/") + "/" + path.lstrip("/"))
        return url

    @property
    def name(self) -> str:
        return self.config.name

    async def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """A plain request/response call (embeddings, token counts), bounded by total_timeout."""
        shard = self.pool.acquire()
        try:
            async with asyncio.timeout(self.config.total_timeout):
                response = await self._send(shard, path, body)
                try:
                    if response.status >= 400:
                        raise await status_error(self.name, response)
                    raw = await response.read()
                finally:
                    response.close()
        except aiohttp.ClientError as exc:
            raise transport_error(self.name, exc) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout(f"{self.name}: no answer within {self.config.total_timeout:g}s") from exc
        finally:
            self.pool.release(shard)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise broken(self.name, "upstream answered with a body that is not JSON") from exc

    async def stream(
        self, path: str, body: dict[str, Any], parse: Parser, model: str, dropped: Sequence[str] = ()
    ) -> Generation:
        """POST a streaming request; return once the first token (or the end) has arrived.
        `dropped` names the request fields the upstream could not be told (X-Ember-Dropped-Fields)."""
        loop = asyncio.get_running_loop()
        state = StreamState(model=model, started=time.perf_counter())
        deadline = loop.time() + self.config.total_timeout
        first_deadline = min(deadline, loop.time() + self.config.first_token_timeout)
        resources = AsyncExitStack()
        shard = self.pool.acquire()
        resources.callback(self.pool.release, shard)
        try:
            try:
                async with asyncio.timeout_at(first_deadline):
                    response = await self._send(shard, path, body)
                    # Closing an unfinished response drops its connection (a finished one has
                    # gone back to the pool already, and this is a no-op).
                    resources.callback(response.close)
                    if response.status >= 400:
                        raise await status_error(self.name, response)
                    events = parse(response.content.iter_any(), state)
                    resources.push_async_callback(events.aclose)
                    first = await anext(events, None)
            except aiohttp.ClientError as exc:  # before TimeoutError: aiohttp's timeouts are both
                raise transport_error(self.name, exc) from exc
            except TimeoutError as exc:
                raise UpstreamTimeout(
                    f"{self.name}: no first token within {self.config.first_token_timeout:g}s"
                ) from exc
            if first is None:
                raise broken(self.name, "upstream ended the stream without an answer")
        except BaseException:
            # Also on cancellation (a lost race): closing an unfinished response drops its connection.
            await resources.aclose()
            raise
        rest = self._rest(first, events, deadline)
        resources.push_async_callback(rest.aclose)
        return Generation(
            model=state.model,
            prompt_tokens=state.prompt_tokens,
            load_seconds=0.0,
            started=state.started,
            _events=rest,
            _resources=resources,
            provider=self.name,
            notes={DROPPED_FIELDS: ", ".join(dropped)} if dropped else {},
        )

    async def _send(self, shard: _Shard, path: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """The POST up to its status line and headers, sent once more, on a new connection, if the
        connection broke before any byte of an answer: a pooled keep-alive connection the upstream
        closed as we sent on it, so it never read the request (aiohttp itself resends only
        idempotent methods). A refused connect is not sent again here: the router fails over."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            return await shard.http.post(self.url(path), data=data, headers=_JSON)
        except _BROKEN_BEFORE_ANSWER as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):  # a refused connect: nothing to reuse
                raise
            log.info("%s: connection broke before an answer (%s); sending once more", self.name, transport_detail(exc))
        return await self.pool.fresh().post(self.url(path), data=data, headers=_JSON)

    async def _rest(
        self, first: GenerationEvent, events: AsyncIterator[GenerationEvent], deadline: float
    ) -> AsyncGenerator[GenerationEvent, None]:
        yield first
        if first.done:
            return
        loop = asyncio.get_running_loop()
        while True:
            # The deadline is checked per event rather than with a timer per event (a cost per
            # token); an upstream that stalls outright hits the socket read timeout (total_timeout).
            if loop.time() > deadline:
                raise UpstreamTimeout(f"{self.name}: the answer took longer than {self.config.total_timeout:g}s")
            try:
                event = await anext(events)
            except StopAsyncIteration:
                raise broken(self.name, "upstream ended the stream before it was complete") from None
            except aiohttp.ServerTimeoutError as exc:
                raise UpstreamTimeout(
                    f"{self.name}: the answer took longer than {self.config.total_timeout:g}s"
                ) from exc
            except aiohttp.ClientError as exc:
                raise transport_error(self.name, exc) from exc
            yield event
            if event.done:
                return

    async def aclose(self) -> None:
        await self.pool.aclose()
