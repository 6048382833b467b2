"""A simulated inference node for the fleet benchmark: an OpenAI chat endpoint on loopback whose
timings come from a model of an engine, not from a model's weights.

What it models (the notes of llm-d's inference simulator and Dynamo's mocker, reduced):
- `slots` sequences at once; requests beyond wait in a FIFO queue (up to `max_queue`, then 503).
- Prefill: one prompt at a time per node, at `prefill_tps` tokens/s, and only for the tokens not
  in its prefix cache. Prefill and the other slots' decoding overlap (as with chunked prefill).
- Decode: one token every `1/decode_tps x (1 + batch_slowdown x (decoding - 1))` seconds per
  sequence, so inter-token latency grows with the batch.
- Prefix cache: an LRU of 16-token blocks, each keyed by a hash chained over every token before
  it (so a block only matches behind the same prefix, as in vLLM's prefix caching). A prompt's
  blocks enter it after its prefill, its answer's blocks when the answer ends.
- Tokens are words: a message is `<|role|>` and its whitespace-separated words; the prompt ends
  with `<|assistant|>`. The answer is `max_tokens` words (finish_reason "length"), streamed as
  the first word alone, then `tokens_per_chunk` words a chunk, so a client that puts the answer
  back into the history sends the same tokens the node cached.

Invariants: a request holds its slot from prefill to its last chunk, and gives it back however
the stream ends (a client that leaves included); `usage.prompt_tokens_details.cached_tokens`
is the cached part of that prompt, so a client can measure the hit rate from the answers alone.
The HTTP layer is h11 on asyncio streams: many nodes fit in one process and one event loop.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import h11

from ember.fleet.types import NodeInfo, NodeLoad

BLOCK_TOKENS = 16
_MAX_BODY = 8 * 1024 * 1024
_READ_CHUNK = 65536
# Answer words: any vocabulary will do; the chained block hash keeps equal words in different
# conversations from matching.
_VOCABULARY = tuple(
    "alpha beta gamma delta echo fox golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu".split()
)


@dataclass(frozen=True)
class NodeProfile:
    """The simulated engine's speeds and sizes (the same for every node of a run)."""

    slots: int = 4
    prefill_tps: float = 2000.0  # uncached prompt tokens per second, one prompt at a time
    decode_tps: float = 20.0  # tokens per second of one sequence decoding alone
    batch_slowdown: float = 0.06  # inter-token latency grows by this much per other decoding sequence
    cache_blocks: int = 1024  # 16-token blocks the prefix cache holds
    max_queue: int = 256
    # Tokens per streamed chunk after the first (which always comes alone, so TTFT is exact):
    # fewer chunks keep the one-process driver's CPU low; the token timings are unchanged.
    tokens_per_chunk: int = 4

    def __post_init__(self) -> None:
        if self.slots < 1 or self.tokens_per_chunk < 1 or self.cache_blocks < 0 or self.max_queue < 0:
            raise ValueError("slots and tokens_per_chunk must be >= 1, cache_blocks and max_queue >= 0")
        if self.prefill_tps <= 0 or self.decode_tps <= 0 or self.batch_slowdown < 0:
            raise ValueError("prefill_tps and decode_tps must be > 0, batch_slowdown >= 0")

    def inter_token_s(self, decoding: int) -> float:
        return (1.0 + self.batch_slowdown * max(0, decoding - 1)) / self.decode_tps


def chat_tokens(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The simulated tokenizer: `<|role|>` then the content's words, per message."""
    tokens: list[str] = []
    for message in messages:
        tokens.append(f"<|{message.get('role', 'user')}|>")
        content = message.get("content") or ""
        tokens.extend(str(content).split())
    return tokens


def block_hashes(tokens: Sequence[str]) -> list[int]:
    """One hash per full block, each chained over the blocks before it."""
    hashes: list[int] = []
    previous = 0
    for end in range(BLOCK_TOKENS, len(tokens) + 1, BLOCK_TOKENS):
        previous = hash((previous, tuple(tokens[end - BLOCK_TOKENS : end])))
        hashes.append(previous)
    return hashes


class PrefixCache:
    """An LRU set of block hashes."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are cached; those are touched (most recently used)."""
        matched = 0
        for block in hashes:
            if block not in self._blocks:
                break
            self._blocks.move_to_end(block)
            matched += 1
        return matched

    def insert(self, hashes: Sequence[int]) -> None:
        if self._capacity <= 0:
            return
        for block in hashes:
            if block in self._blocks:
                self._blocks.move_to_end(block)
            else:
                self._blocks[block] = None
        while len(self._blocks) > self._capacity:
            self._blocks.popitem(last=False)


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


@dataclass
class NodeCounters:
    requests: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    rejected: int = 0


class SimNode:
    """One simulated node: its engine model and its HTTP server (start, then `base_url`)."""

    def __init__(self, name: str, profile: NodeProfile, model: str = "sim-model", seed: int = 0) -> None:
        self.name = name
        self.profile = profile
        self.model = model
        self.cache = PrefixCache(profile.cache_blocks)
        self.counters = NodeCounters()
        self._slots = asyncio.Semaphore(profile.slots)
        self._prefill = asyncio.Lock()
        self._busy = 0
        self._queued = 0
        self._decoding = 0
        self._rng = random.Random(f"{seed}:{name}")
        self._server: asyncio.Server | None = None
        self._port = 0
        self._connections: set[asyncio.Task[None]] = set()

    # -- the fleet's view of it ---------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def node_id(self) -> str:
        return f"sim:{self.name}"

    def load(self) -> NodeLoad:
        return NodeLoad(slots=self.profile.slots, busy=self._busy, queue=self._queued)

    def info(self) -> NodeInfo:
        """What a registry would hold for this node after its last heartbeat."""
        return NodeInfo(
            node_id=self.node_id,
            name=self.name,
            kind="openai",
            base_url=self.base_url,
            labels={"tier": "edge"},
            resident=frozenset({self.model}),
            stored=frozenset({self.model}),
            load=self.load(),
            last_seen=time.time(),
            verified=True,
        )

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self._port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await _Connection(self, reader, writer).serve()
        except (ConnectionError, asyncio.IncompleteReadError, h11.ProtocolError):
            pass  # the client left or spoke something else: nothing to answer
        except asyncio.CancelledError:
            # close() ends open connections so; asyncio's stream callback would log a
            # cancelled handler as an error, and nothing waits on this task but close().
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    # -- the engine model -----------------------------------------------------------------------

    def parse(self, body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _BadRequest(400, f"the body is not JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise _BadRequest(400, "the body must be a JSON object")
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise _BadRequest(400, "'messages' must be a non-empty list of message objects")
        if payload.get("model") != self.model:
            raise _BadRequest(404, f"model '{payload.get('model')}' not found", "not_found_error")
        max_tokens = payload.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 4096:
            raise _BadRequest(400, "'max_tokens' must be an integer within 1..4096")
        return payload

    async def generate(self, payload: dict[str, Any], emit: _Emitter) -> None:
        """Queue, prefill, decode: `emit` gets each token, then the usage."""
        if self._queued >= self.profile.max_queue and self._slots.locked():
            self.counters.rejected += 1
            raise _BadRequest(503, "the node's queue is full", "server_error")
        prompt = [*chat_tokens(payload["messages"]), "<|assistant|>"]
        max_tokens: int = payload.get("max_tokens", 16)
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        self._busy += 1
        try:
            hashes = block_hashes(prompt)
            async with self._prefill:
                # Matched when its prefill starts: a prompt that waited behind another with the
                # same prefix finds that one's blocks already there.
                cached = self.cache.match(hashes) * BLOCK_TOKENS
                await _sleep_until(
                    asyncio.get_running_loop().time() + (len(prompt) - cached) / self.profile.prefill_tps
                )
                self.cache.insert(hashes)
            self.counters.requests += 1
            self.counters.prompt_tokens += len(prompt)
            self.counters.cached_tokens += cached
            await emit.started()
            words = self._rng.choices(_VOCABULARY, k=max_tokens)
            await self._decode(words, emit)
            self.cache.insert(block_hashes(prompt + words))
            await emit.finished(
                {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": len(words),
                    "total_tokens": len(prompt) + len(words),
                    "prompt_tokens_details": {"cached_tokens": cached},
                }
            )
        finally:
            self._busy -= 1
            self._slots.release()

    async def _decode(self, words: list[str], emit: _Emitter) -> None:
        """Stream `words` at the batch's pace: the first alone, then `tokens_per_chunk` a chunk.

        Each chunk is due at a deadline counted from the last one's, not from when the loop got
        round to it, so a busy event loop delays chunks without slowing the simulated engine."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        index = 0
        self._decoding += 1
        try:
            while index < len(words):
                take = 1 if index == 0 else self.profile.tokens_per_chunk
                part = words[index : index + take]
                due += len(part) * self.profile.inter_token_s(self._decoding)
                await _sleep_until(due)
                await emit.token(("" if index == 0 else " ") + " ".join(part))
                self.counters.completion_tokens += len(part)
                index += len(part)
        finally:
            self._decoding -= 1


async def _sleep_until(due: float) -> None:
    delay = due - asyncio.get_running_loop().time()
    await asyncio.sleep(delay if delay > 0 else 0)


class _Emitter:
    """Where a generation's events go: an SSE stream or one JSON body."""

    async def started(self) -> None: ...

    async def token(self, text: str) -> None: ...

    async def finished(self, usage: dict[str, Any]) -> None: ...


class _Connection:
    """One HTTP/1.1 connection (keep-alive): requests one after another."""

    def __init__(self, node: SimNode, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._node = node
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.SERVER)

    async def _next_event(self) -> Any:
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ_CHUNK)
                self._h11.receive_data(data)
                continue
            return event

    async def send(self, event: Any) -> None:
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def serve(self) -> None:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            body = bytearray()
            while True:
                part = await self._next_event()
                if isinstance(part, h11.Data):
                    body += part.data
                    if len(body) > _MAX_BODY:
                        await self._json(413, _error("the body is too large", "invalid_request_error"))
                        return
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    return
            await self._route(event.method.decode(), event.target.decode().split("?", 1)[0], bytes(body))
            if self._h11.our_state is h11.MUST_CLOSE or self._h11.their_state is h11.MUST_CLOSE:
                return
            try:
                self._h11.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _route(self, method: str, path: str, body: bytes) -> None:
        node = self._node
        if path == "/health" and method == "GET":
            await self._json(200, {"status": "ok"})
        elif path == "/v1/models" and method == "GET":
            await self._json(200, {"object": "list", "data": [{"id": node.model, "object": "model"}]})
        elif path == "/v1/chat/completions" and method == "POST":
            try:
                payload = node.parse(body)
                if payload.get("stream"):
                    stream = _SseEmitter(
                        self, node.model, bool((payload.get("stream_options") or {}).get("include_usage"))
                    )
                    await node.generate(payload, stream)
                else:
                    whole = _JsonEmitter(node.model)
                    await node.generate(payload, whole)
                    await self._json(200, whole.body())
            except _BadRequest as exc:
                await self._json(exc.status, _error(exc.message, exc.kind))
        elif path in ("/health", "/v1/models", "/v1/chat/completions"):
            await self._json(405, _error(f"{method} is not allowed on {path}", "invalid_request_error"))
        else:
            await self._json(404, _error(f"no route {path}", "not_found_error"))

    async def _json(self, status: int, document: dict[str, Any]) -> None:
        data = json.dumps(document).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(data)))]
        await self.send(h11.Response(status_code=status, headers=headers))
        await self.send(h11.Data(data=data))
        await self.send(h11.EndOfMessage())


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


class _SseEmitter(_Emitter):
    def __init__(self, connection: _Connection, model: str, include_usage: bool) -> None:
        self._connection = connection
        self._model = model
        self._include_usage = include_usage
        self._id = f"chatcmpl-sim{random.getrandbits(48):012x}"
        self._created = int(time.time())
        self.began = False

    def _chunk(self, delta: dict[str, Any], finish: str | None, usage: dict[str, Any] | None = None) -> bytes:
        choices = [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        document: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if usage is not None:
            document["usage"] = usage
        return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"

    async def started(self) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await self._connection.send(h11.Response(status_code=200, headers=headers))
        self.began = True
        await self._connection.send(h11.Data(data=self._chunk({"role": "assistant", "content": ""}, None)))

    async def token(self, text: str) -> None:
        await self._connection.send(h11.Data(data=self._chunk({"content": text}, None)))

    async def finished(self, usage: dict[str, Any]) -> None:
        data = self._chunk({}, "length")
        if self._include_usage:
            data += self._chunk({}, None, usage)
        await self._connection.send(h11.Data(data=data + b"data: [DONE]\n\n"))
        await self._connection.send(h11.EndOfMessage())


class _JsonEmitter(_Emitter):
    def __init__(self, model: str) -> None:
        self._model = model
        self._parts: list[str] = []
        self._usage: dict[str, Any] = {}

    async def token(self, text: str) -> None:
        self._parts.append(text)

    async def finished(self, usage: dict[str, Any]) -> None:
        self._usage = usage

    def body(self) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-sim{random.getrandbits(48):012x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(self._parts)},
                    "finish_reason": "length",
                }
            ],
            "usage": self._usage,
        }
