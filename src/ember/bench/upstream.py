"""A fake model server that speaks OpenAI, Ollama and Anthropic, with faults on demand.

    python -m ember.bench.upstream --host 127.0.0.1 --port 8001 [--token-delay 0] [--keep-alive 60]

--keep-alive is how long an idle keep-alive connection stays open (uvicorn's timeout_keep_alive;
uvicorn's own default, and llama-server's, is 5 s).

It answers every model name with the tokens "tok0 ", "tok1 ", ... (max_tokens or
options.num_predict of them, 8 by default); prompt_tokens is the number of words in the
prompt. Tests and the gateway benchmark script it over HTTP:

    POST /_control {"mode": "ok"|"error"|"hang"|"drop"|"garbage"|"inband"|"close_reused",
                    "status": 500, "retry_after": null, "times": null, "delay": 0, "drop_after": 0, "token_delay": null}
    POST /_script  {"text": "", "tool_calls": [{"name": "f", "arguments": {...}}], "fragments": 3}
    POST /_script  {"queue": [script, script, ...]}: the next chat answers, one script each, in
                   order; once the queue is used up, answers follow the single script (or none)
    GET  /_last    {"path", "body"}: the last generation request, as it came
    GET  /_history [{"path", "body"}, ...]: the generation requests since /_reset, oldest first
    GET  /_stats   {"requests", "active", "completed", "disconnected", "dropped", "by_path"}
    POST /_reset   back to "ok", no script, zeroed stats

A script (until /_reset or another /_script; {} clears it) makes chat answers `text` and then
tool calls: OpenAI streams each call as a delta with index, id (call_fake<i>) and name, then its
arguments' JSON text in `fragments` pieces, and finishes with "tool_calls"; Ollama sends each
call whole in a chunk of its own, arguments as an object, done_reason "stop". A request asking
for logprobs gets them with each token: logprob -0.5, alternatives "alt1", "alt2"... (-1.5, -2.5...).
Anthropic's /v1/messages: see upstream_anthropic.py.

Faults apply to the POST model endpoints (generation and embeddings); "times" requests get
the fault, then the server is back to "ok" (null: until changed). "hang" sends nothing until
the client goes away; "drop" closes the connection after `drop_after` tokens (or half the
body of a non-streamed answer); "delay" is the wait before the first token (after the
headers), or before the whole answer when not streaming. Two more break a stream after
`drop_after` tokens and then end it cleanly: "garbage" sends a chunk that is not JSON,
"inband" an error in the protocol's own format (as ember does when its stream breaks).
"close_reused" closes a connection that a request arrives on after an earlier one (a kept-alive
connection), at once and without a byte of answer: what a server closing an idle keep-alive
connection just as the client sends on it looks like; requests on new connections are answered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, cast

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ember.bench import upstream_anthropic as anthropic

Mode = Literal["ok", "error", "hang", "drop", "garbage", "inband", "close_reused"]
MODES = ("ok", "error", "hang", "drop", "garbage", "inband", "close_reused")
DEFAULT_TOKENS = 8
HISTORY = 200  # generation requests kept for GET /_history
EMBED_DIMENSIONS = 8
_OUTCOME = "fake.outcome"  # scope key through which an answer tells how it ended
_INCOMPLETE = "ASGI callable returned without completing response."


@dataclass
class Fault:
    mode: Mode = "ok"
    status: int = 500
    retry_after: float | None = None
    times: int | None = None  # requests left with this fault; None: until changed
    delay: float = 0.0
    drop_after: int = 0
    token_delay: float | None = None  # None: the server's --token-delay


@dataclass
class Stats:
    requests: int = 0
    active: int = 0
    completed: int = 0
    disconnected: int = 0  # the client went away before the answer was complete
    dropped: int = 0  # we closed the connection on purpose (modes drop and close_reused)
    by_path: dict[str, int] = field(default_factory=dict)


@dataclass
class Script:
    """A scripted chat answer: some text, then tool calls (name and arguments object each)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    fragments: int = 3  # pieces each call's arguments stream in (OpenAI)

    def arguments(self, call: dict[str, Any]) -> str:
        return json.dumps(call.get("arguments") or {}, separators=(",", ":"))

    def split(self, text: str) -> list[str]:
        size = max(1, -(-len(text) // max(1, self.fragments)))
        return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class Upstream:
    """One server's mutable state: the fault in force, the script, the counters, the last request."""

    token_delay: float = 0.0
    fault: Fault = field(default_factory=Fault)
    stats: Stats = field(default_factory=Stats)
    models: list[str] = field(default_factory=lambda: ["gpt-test"])
    script: Script | None = None
    queue: list[Script] = field(default_factory=list)  # scripts for the next chat answers, in order
    last: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # the last HISTORY requests

    def take_script(self) -> Script | None:
        """The script the chat answer being made now follows: the queue's next, else the single one."""
        return self.queue.pop(0) if self.queue else self.script

    def take_fault(self, reused: bool = False) -> Fault:
        """The fault for the request arriving now, counting down `times` (close_reused counts and
        applies only to a request on a reused connection)."""
        fault = self.fault
        if fault.mode == "close_reused" and not reused:
            return Fault(token_delay=self.token_delay)
        times = fault.times
        if times is not None:
            if times <= 0:
                fault = self.fault = Fault()
            else:
                self.fault = Fault() if times == 1 else replace(fault, times=times - 1)
        if fault.token_delay is None:
            fault = replace(fault, token_delay=self.token_delay)
        return fault

    def seen(self, model: str) -> None:
        if model and model not in self.models:
            self.models.append(model)


# -- answering ---------------------------------------------------------------------------------


@dataclass
class Timing:
    start: float
    first: float
    end: float


@dataclass
class Answer:
    """One request's answer, sent by hand: it sees the client go away and can drop the connection."""

    upstream: Upstream
    fault: Fault
    protocol: Literal["openai", "ollama", "anthropic"]
    content_type: str
    tail: Callable[[int, Timing], bytes]  # what follows the tokens (or the whole non-streamed body)
    pieces: list[bytes] = field(default_factory=list)  # one per token, when streaming
    head: bytes = b""  # sent with the first token (OpenAI's role chunk)
    streamed: bool = True
    started: float = field(default_factory=time.perf_counter)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch(receive, gone))
        try:
            scope[_OUTCOME] = await self._run(send, gone)
        finally:
            watcher.cancel()

    async def _run(self, send: Send, gone: asyncio.Event) -> str:
        fault = self.fault
        if fault.mode == "hang":
            await gone.wait()
            return "disconnected"
        if fault.mode == "error":
            if await _pause(fault.delay, gone):
                return "disconnected"
            await _send_error(send, self.protocol, fault.status, fault.retry_after)
            return "completed"
        if not self.streamed:
            return await self._whole(send, gone)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", self.content_type.encode()), (b"cache-control", b"no-cache")],
            }
        )
        if await _pause(fault.delay, gone):
            return "disconnected"
        first = time.perf_counter()
        if fault.mode == "ok" and not fault.token_delay:
            # Nothing to wait for between tokens: one write (the SSE/NDJSON framing is the same).
            tail = self.tail(len(self.pieces), Timing(self.started, first, time.perf_counter()))
            await send(
                {"type": "http.response.body", "body": self.head + b"".join(self.pieces) + tail, "more_body": False}
            )
            return "completed"
        sent = 0
        broken = fault.mode in ("drop", "garbage", "inband")
        for piece in self.pieces:
            if broken and sent >= fault.drop_after:
                break
            if sent and fault.token_delay:
                if await _pause(fault.token_delay, gone):
                    return "disconnected"
            else:
                await asyncio.sleep(0)  # let other streams (and the disconnect watcher) run
            if gone.is_set():
                return "disconnected"
            body = self.head + piece if sent == 0 else piece
            await send({"type": "http.response.body", "body": body, "more_body": True})
            sent += 1
        if fault.mode == "drop":
            return "dropped"
        if gone.is_set():
            return "disconnected"
        if fault.mode in ("garbage", "inband"):
            tail = _breakage(self.protocol, fault.mode)
        else:
            tail = self.tail(sent, Timing(self.started, first, time.perf_counter()))
        await send({"type": "http.response.body", "body": (self.head if sent == 0 else b"") + tail, "more_body": False})
        return "completed"

    async def _whole(self, send: Send, gone: asyncio.Event) -> str:
        if await _pause(self.fault.delay, gone):
            return "disconnected"
        now = time.perf_counter()
        body = self.tail(len(self.pieces), Timing(self.started, now, now))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", self.content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        if self.fault.mode == "drop":
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            return "dropped"
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return "completed"


def _breakage(protocol: str, mode: str) -> bytes:
    """The end of a stream broken on purpose: a chunk that is not JSON, or an in-band error."""
    if protocol == "anthropic":
        return anthropic.breakage(mode)
    if protocol == "openai":
        if mode == "garbage":
            return b"data: {not json\n\ndata: [DONE]\n\n"
        error = {
            "error": {"message": "fake upstream broke mid-stream", "type": "server_error", "param": None, "code": None}
        }
        return b"data: " + _dumps(error) + b"\n\ndata: [DONE]\n\n"
    if mode == "garbage":
        return b"{not json\n"
    return _dumps({"error": "fake upstream broke mid-stream"}) + b"\n"


async def _watch(receive: Receive, gone: asyncio.Event) -> None:
    """Set `gone` when the client disconnects (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


async def _pause(seconds: float, gone: asyncio.Event) -> bool:
    """Wait `seconds`, or less if the client goes away; True when it did."""
    if seconds <= 0:
        return gone.is_set()
    try:
        async with asyncio.timeout(seconds):
            await gone.wait()
    except TimeoutError:
        return False
    return True


async def _send_error(send: Send, protocol: str, status: int, retry_after: float | None) -> None:
    message = f"fake upstream error {status}"
    if protocol == "openai":
        kind = "rate_limit_error" if status == 429 else "server_error"
        payload: dict[str, Any] = {"error": {"message": message, "type": kind, "param": None, "code": status}}
    elif protocol == "anthropic":
        payload = anthropic.error_payload(status, message)
    else:
        payload = {"error": message}
    body = _dumps(payload)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", _seconds(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# -- request helpers -----------------------------------------------------------------------------


def _words(value: Any) -> int:
    """Whitespace-separated words in a prompt, a message list or content parts."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, dict):
        return _words(value.get("content")) + _words(value.get("text"))
    return 0


def _count(value: Any) -> int:
    try:
        return max(0, int(value)) if value is not None else DEFAULT_TOKENS
    except (TypeError, ValueError):
        return DEFAULT_TOKENS


def _tokens(n: int) -> list[str]:
    return [f"tok{i} " for i in range(n)]


def _logprob(token: str, top: int) -> dict[str, Any]:
    """A token's logprob entry (OpenAI chat's and Ollama's shape): -0.5, then `top` alternatives."""
    alternatives = [(token, -0.5)] + [(f"alt{i}", -0.5 - i) for i in range(1, top)]
    return {
        "token": token,
        "logprob": -0.5,
        "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alternatives[:top]],
    }


def _vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 + 0.01 * i for i in range(dimensions)]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


async def _json(request: Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _bad(protocol: str, message: str) -> JSONResponse:
    payload: dict[str, Any] = (
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
        if protocol == "openai"
        else anthropic.error_payload(400, message)
        if protocol == "anthropic"
        else {"error": message}
    )
    return JSONResponse(payload, status_code=400)


# -- OpenAI ---------------------------------------------------------------------------------------


def _openai_generate(up: Upstream, body: dict[str, Any], chat: bool) -> Answer:
    model = str(body.get("model") or "")
    up.seen(model)
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    count = _count(limit)
    finish = "length" if limit is not None else "stop"
    prompt_tokens = _words(body.get("messages") if chat else body.get("prompt"))
    ident = ("chatcmpl-" if chat else "cmpl-") + hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:24]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    fault = up.take_fault()
    script = up.take_script() if chat else None
    if script is not None:
        finish = "tool_calls" if script.tool_calls else "stop"
    # Chat: logprobs true and top_logprobs k; completions: logprobs k.
    top = (body.get("top_logprobs") or 0) if chat else body.get("logprobs")
    want_logprobs = bool(body.get("logprobs")) if chat else body.get("logprobs") is not None

    def scored(text: str) -> dict[str, Any] | None:
        if not want_logprobs or not text:
            return None
        if chat:
            return {"content": [_logprob(text, int(top or 0))], "refusal": None}
        entry = _logprob(text, int(top or 0))
        return {
            "tokens": [text],
            "token_logprobs": [-0.5],
            "text_offset": [0],
            "top_logprobs": [{t["token"]: t["logprob"] for t in entry["top_logprobs"]}],
        }

    def usage(completion: int) -> dict[str, int]:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    if not body.get("stream"):

        def whole(n: int, _: Timing) -> bytes:
            text = "".join(_tokens(n)) if script is None else script.text
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if script is not None and script.tool_calls:
                message["content"] = text or None
                message["tool_calls"] = [
                    {
                        "id": f"call_fake{i}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": script.arguments(c)},
                    }
                    for i, c in enumerate(script.tool_calls)
                ]
            choice: dict[str, Any] = (
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                if chat
                else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            )
            return _dumps(
                {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage(n)}
            )

        return Answer(up, fault, "openai", "application/json", whole, pieces=[b""] * count, streamed=False)

    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": ident, "object": obj + ".chunk" if chat else obj, "created": created, "model": model}

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(payload) + b"\n\n"

    def chunk(
        text: str | None, finish_reason: str | None, role: bool = False, calls: list[dict[str, Any]] | None = None
    ) -> bytes:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                delta["content"] = text
            if calls:
                delta["tool_calls"] = calls
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "logprobs": scored(text or ""),
                "finish_reason": finish_reason,
            }
        else:
            choice = {"index": 0, "text": text or "", "logprobs": scored(text or ""), "finish_reason": finish_reason}
        return event({**base, "choices": [choice]})

    pieces = [chunk(t, None) for t in _tokens(count)]
    if script is not None:
        pieces = [chunk(script.text, None)] if script.text else []
        for i, call in enumerate(script.tool_calls):
            pieces.append(
                chunk(
                    None,
                    None,
                    calls=[
                        {
                            "index": i,
                            "id": f"call_fake{i}",
                            "type": "function",
                            "function": {"name": call["name"], "arguments": ""},
                        }
                    ],
                )
            )
            pieces += [
                chunk(None, None, calls=[{"index": i, "function": {"arguments": part}}])
                for part in script.split(script.arguments(call))
            ]

    def tail(n: int, _: Timing) -> bytes:
        out = chunk(None if chat else "", finish)
        if include_usage:
            out += event({**base, "choices": [], "usage": usage(n)})
        return out + b"data: [DONE]\n\n"

    return Answer(
        up,
        fault,
        "openai",
        "text/event-stream",
        tail,
        pieces=pieces,
        head=chunk(None, None, role=True) if chat else b"",
    )


def _openai_embeddings(up: Upstream, body: dict[str, Any]) -> Answer:
    model = str(body.get("model") or "")
    up.seen(model)
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else list(raw or [])
    texts = [item if isinstance(item, str) else " ".join(map(str, item)) for item in inputs]
    dimensions = int(body.get("dimensions") or EMBED_DIMENSIONS)
    b64 = body.get("encoding_format") == "base64"

    def encode(vector: list[float]) -> Any:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if b64 else vector

    def whole(_n: int, _t: Timing) -> bytes:
        data = [
            {"object": "embedding", "index": i, "embedding": encode(_vector(t, dimensions))}
            for i, t in enumerate(texts)
        ]
        words = sum(_words(t) for t in texts)
        return _dumps(
            {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": words, "total_tokens": words}}
        )

    return Answer(up, up.take_fault(), "openai", "application/json", whole, streamed=False)


# -- Ollama ---------------------------------------------------------------------------------------


def _ollama_generate(up: Upstream, body: dict[str, Any], chat: bool) -> Answer:
    model = str(body.get("model") or "")
    up.seen(model)
    options = body.get("options") or {}
    limit = options.get("num_predict")
    count, capped = DEFAULT_TOKENS, False
    if isinstance(limit, int) and limit >= 0:  # Ollama: -1 and -2 mean no cap
        count, capped = limit, True
    finish = "length" if capped else "stop"
    prompt_tokens = _words(body.get("messages") if chat else body.get("prompt"))
    script = up.take_script() if chat else None
    if script is not None:
        finish = "stop"  # Ollama says "stop" after tool calls too

    def item(text: str, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": _iso_now()}
        if chat:
            out["message"] = {"role": "assistant", "content": text}
            if calls:
                out["message"]["tool_calls"] = calls
        else:
            out["response"] = text
        if body.get("logprobs") and text:
            out["logprobs"] = [_logprob(text, int(body.get("top_logprobs") or 0))]
        return out

    def whole_calls() -> list[dict[str, Any]]:
        assert script is not None
        return [{"function": {"name": c["name"], "arguments": c.get("arguments") or {}}} for c in script.tool_calls]

    def final(n: int, t: Timing, text: str) -> dict[str, Any]:
        return {
            **item(text),
            "done": True,
            "done_reason": finish,
            "total_duration": _ns(t.end - t.start),
            "load_duration": 0,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": _ns(t.first - t.start),
            "eval_count": n,
            "eval_duration": _ns(t.end - t.first),
        }

    if body.get("stream", True) is False:

        def whole(n: int, t: Timing) -> bytes:
            if script is None:
                return _dumps(final(n, t, "".join(_tokens(n))))
            answer = final(n, t, script.text)
            if script.tool_calls:
                answer["message"]["tool_calls"] = whole_calls()
            return _dumps(answer)

        return Answer(up, up.take_fault(), "ollama", "application/json", whole, pieces=[b""] * count, streamed=False)
    pieces = [_dumps({**item(text), "done": False}) + b"\n" for text in _tokens(count)]
    if script is not None:
        pieces = [_dumps({**item(script.text), "done": False}) + b"\n"] if script.text else []
        pieces += [_dumps({**item("", [call]), "done": False}) + b"\n" for call in whole_calls()]
    return Answer(
        up,
        up.take_fault(),
        "ollama",
        "application/x-ndjson",
        lambda n, t: _dumps(final(n, t, "")) + b"\n",
        pieces=pieces,
    )


def _ollama_embed(up: Upstream, body: dict[str, Any], legacy: bool) -> Answer:
    model = str(body.get("model") or "")
    up.seen(model)
    raw = body.get("prompt") if legacy else body.get("input")
    texts = [raw] if isinstance(raw, str) else [str(x) for x in raw or []]
    dimensions = int(body.get("dimensions") or EMBED_DIMENSIONS)

    def whole(_n: int, t: Timing) -> bytes:
        if legacy:
            return _dumps({"embedding": _vector(texts[0] if texts else "", dimensions)})
        return _dumps(
            {
                "model": model,
                "embeddings": [_vector(x, dimensions) for x in texts],
                "total_duration": _ns(t.end - t.start),
                "load_duration": 0,
                "prompt_eval_count": sum(_words(x) for x in texts),
            }
        )

    return Answer(up, up.take_fault(), "ollama", "application/json", whole, streamed=False)


# -- the app --------------------------------------------------------------------------------------


Handler = Callable[[Request], Awaitable[Any]]


def build_app(up: Upstream) -> ASGIApp:
    def model_endpoint(
        protocol: Literal["openai", "ollama", "anthropic"], make: Callable[[dict[str, Any]], Answer | Response]
    ) -> Handler:
        async def endpoint(request: Request) -> Any:
            body = await _json(request)
            if body is None:
                return _bad(protocol, "the body must be a JSON object")
            # The headers too: what a provider sends as its key and version.
            up.last = {"path": request.url.path, "body": body, "headers": dict(request.headers)}
            up.history = [*up.history[-(HISTORY - 1) :], {"path": request.url.path, "body": body}]
            return make(body)

        return endpoint

    async def models(_: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in up.models],
            }
        )

    async def tags(_: Request) -> Response:
        return JSONResponse(
            {
                "models": [
                    {
                        "name": m,
                        "model": m,
                        "modified_at": _iso_now(),
                        "size": 0,
                        "digest": hashlib.sha256(m.encode()).hexdigest(),
                        "details": {},
                    }
                    for m in up.models
                ]
            }
        )

    async def version(_: Request) -> Response:
        return JSONResponse({"version": "0.0.0-fake"})

    async def control(request: Request) -> Response:
        if request.method == "POST":
            body = await _json(request)
            names = {f.name for f in fields(Fault)}
            if body is None or set(body) - names:
                return JSONResponse({"error": f"fields are {sorted(names)}"}, status_code=400)
            if body.get("mode", "ok") not in MODES:
                return JSONResponse({"error": f"mode must be one of {MODES}"}, status_code=400)
            up.fault = Fault(**body)
        return JSONResponse(asdict(up.fault))

    async def script(request: Request) -> Response:
        body = await _json(request)
        names = {f.name for f in fields(Script)}
        if isinstance(body, dict) and set(body) == {"queue"} and isinstance(body["queue"], list):
            items = body["queue"]
            if not all(isinstance(item, dict) and not set(item) - names for item in items):
                return JSONResponse({"error": f"each queued script's fields are {sorted(names)}"}, status_code=400)
            up.queue = [Script(**item) for item in items]
            return JSONResponse({"queue": [asdict(s) for s in up.queue]})
        if body is None or set(body) - names:
            return JSONResponse({"error": f"fields are {sorted(names)}, or queue"}, status_code=400)
        up.script = Script(**body) if body else None
        return JSONResponse(asdict(up.script) if up.script else {})

    async def last(_: Request) -> Response:
        return JSONResponse(up.last)

    async def history(_: Request) -> Response:
        return JSONResponse(up.history)

    async def stats(_: Request) -> Response:
        return JSONResponse(asdict(up.stats))

    async def reset(_: Request) -> Response:
        up.fault = Fault()
        up.script = None
        up.queue = []
        up.last = {}
        up.history = []
        up.stats = Stats(active=up.stats.active)  # requests still in flight will still leave
        return JSONResponse({"ok": True})

    routes = [
        Route(
            "/v1/chat/completions", model_endpoint("openai", lambda b: _openai_generate(up, b, True)), methods=["POST"]
        ),
        Route("/v1/completions", model_endpoint("openai", lambda b: _openai_generate(up, b, False)), methods=["POST"]),
        Route("/v1/embeddings", model_endpoint("openai", lambda b: _openai_embeddings(up, b)), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/messages", model_endpoint("anthropic", lambda b: anthropic.messages(up, b)), methods=["POST"]),
        Route(
            "/v1/messages/count_tokens",
            model_endpoint("anthropic", lambda b: JSONResponse(anthropic.count_tokens(b))),
            methods=["POST"],
        ),
        Route("/api/chat", model_endpoint("ollama", lambda b: _ollama_generate(up, b, True)), methods=["POST"]),
        Route("/api/generate", model_endpoint("ollama", lambda b: _ollama_generate(up, b, False)), methods=["POST"]),
        Route("/api/embed", model_endpoint("ollama", lambda b: _ollama_embed(up, b, False)), methods=["POST"]),
        Route("/api/embeddings", model_endpoint("ollama", lambda b: _ollama_embed(up, b, True)), methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/_control", control, methods=["GET", "POST"]),
        Route("/_script", script, methods=["POST"]),
        Route("/_last", last, methods=["GET"]),
        Route("/_history", history, methods=["GET"]),
        Route("/_stats", stats, methods=["GET"]),
        Route("/_reset", reset, methods=["POST"]),
    ]
    return _Counting(Starlette(routes=routes), up)


class _Counting:
    """Counts every non-control request and how it ended."""

    def __init__(self, app: ASGIApp, up: Upstream) -> None:
        self.app = app
        self.up = up
        self._connections: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()  # that sent a request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/_"):
            await self.app(scope, receive, send)
            return
        stats = self.up.stats
        stats.requests += 1
        stats.by_path[path] = stats.by_path.get(path, 0) + 1
        transport = _transport(receive)
        if transport is not None:
            reused = transport in self._connections
            self._connections.add(transport)
            if reused and self.up.fault.mode == "close_reused" and self.up.take_fault(reused=True).mode != "ok":
                stats.dropped += 1
                await _close_unanswered(transport, receive)
                return
        stats.active += 1
        complete = False

        async def tracking_send(message: Any) -> None:
            nonlocal complete
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            stats = self.up.stats  # /_reset may have replaced it meanwhile
            stats.active -= 1
            outcome = scope.get(_OUTCOME) or ("completed" if complete else "disconnected")
            setattr(stats, outcome, getattr(stats, outcome) + 1)


def _transport(receive: Receive) -> asyncio.BaseTransport | None:
    """The connection a request came on. ASGI has no way to close a connection without an
    answer, but uvicorn's receive is a method of the request's cycle, which holds the transport;
    None under another server (close_reused then answers as "ok")."""
    transport = getattr(getattr(receive, "__self__", None), "transport", None)
    # Not an isinstance check: uvloop's transports do not derive from asyncio's classes.
    return cast(asyncio.BaseTransport, transport) if callable(getattr(transport, "close", None)) else None


async def _close_unanswered(transport: asyncio.BaseTransport, receive: Receive) -> None:
    transport.close()
    # Wait for the server to see the connection gone, so that it sends no 500 of its own.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while (await receive())["type"] != "http.disconnect":
                pass


class _QuietDrops(logging.Filter):
    """A deliberate drop is not an error worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _INCOMPLETE


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ember.bench.upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--keep-alive", type=float, default=60.0, help="seconds an idle connection stays open")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    logging.getLogger("uvicorn.error").addFilter(_QuietDrops())
    app = build_app(Upstream(token_delay=args.token_delay))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=args.keep_alive,
    )


if __name__ == "__main__":
    main()
