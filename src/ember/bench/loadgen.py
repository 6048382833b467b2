"""The load generator: streaming chat completions against any OpenAI-compatible server.

Closed loop: at concurrency C, C workers each send a request, read its stream to the end and
send the next, until the level's requests are spent. Every request is timed on the client side
(what a user of the server sees), so ember, llama-server, Ollama and vLLM are measured alike.
Importable without typer: scripts and tests drive `run_bench` directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ember.bench.memory import RssSampler, process_exists
from ember.bench.prompts import ChatPrompt, PromptFactory
from ember.errors import EmberError

# Loopback servers accept at once or not at all: a long connect timeout only delays the error.
_CONNECT_TIMEOUT_S = 5.0
_ERROR_TEXT_LIMIT = 200


class BenchError(EmberError):
    """The benchmark cannot run at all (server unreachable, model unknown, bad settings)."""


@dataclass(frozen=True)
class BenchConfig:
    """What to send, how hard, and where."""

    url: str
    model: str
    concurrency: tuple[int, ...] = (1, 8, 16)
    requests: int | None = None  # per level; None: twice the concurrency
    prompt_tokens: int = 64
    max_tokens: int = 128
    shared_prefix: int = 0
    temperature: float = 0.0
    # Sent only when set, so each server keeps its own default otherwise (ember's OpenAI default
    # is 1.1, llama-server's 1.0): a side-by-side run sets it to compare equal sampling.
    repeat_penalty: float | None = None
    timeout_s: float = 120.0
    warmup: bool = True
    api_key: str | None = None
    memory_pid: int | None = None
    label: str | None = None
    # Same seed, same prompts: lets several servers answer identical requests. None: a fresh
    # random one, so that nothing cached from an earlier run can help.
    seed: str | None = None

    def __post_init__(self) -> None:
        if not self.concurrency or any(level < 1 for level in self.concurrency):
            raise BenchError("concurrency levels must be positive integers, e.g. 1,8,16")
        if self.requests is not None and self.requests < 1:
            raise BenchError("--requests must be at least 1")
        if self.max_tokens < 1 or self.prompt_tokens < 1:
            raise BenchError("--max-tokens and --prompt-tokens must be at least 1")
        if self.repeat_penalty is not None and self.repeat_penalty <= 0:
            raise BenchError("--repeat-penalty must be > 0 (1 is off)")
        if self.shared_prefix < 0 or self.timeout_s <= 0:
            raise BenchError("--shared-prefix must be >= 0 and --timeout > 0")

    def requests_for(self, concurrency: int) -> int:
        return self.requests if self.requests is not None else 2 * concurrency

    @property
    def chat_url(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"


@dataclass
class RequestResult:
    """One streamed request as the client saw it; times are time.perf_counter() seconds."""

    index: int
    start: float
    end: float = 0.0
    first_token: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int | None = None
    usage_reported: bool = False
    finish_reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def total_s(self) -> float:
        return self.end - self.start

    @property
    def stream_tps(self) -> float | None:
        """Decode speed of this stream: tokens after the first over the time they took.

        The first token's wait is TTFT (queueing and prefill); counting it here would mix the
        two. With fewer than two tokens there is no rate to speak of.
        """
        if self.first_token is None or self.completion_tokens < 2 or self.end <= self.first_token:
            return None
        return (self.completion_tokens - 1) / (self.end - self.first_token)


@dataclass
class LevelRun:
    """The raw results of one concurrency level."""

    concurrency: int
    results: list[RequestResult]
    wall_s: float
    peak_rss_mib: float | None = None


@dataclass
class BenchRun:
    """Everything a run measured, before any statistics."""

    config: BenchConfig
    started_at: float  # time.time()
    nonce: str
    warmup_s: float | None = None
    cold: RequestResult | None = None
    levels: list[LevelRun] = field(default_factory=list)
    start_rss_mib: float | None = None
    peak_rss_mib: float | None = None
    # The machine's 1-minute load average before and after: a busy neighbour shows up here.
    loadavg_start: float | None = None
    loadavg_end: float | None = None


class ProgressSink(Protocol):
    """Where the run reports as it goes (a rich bar, plain lines, or nothing)."""

    def phase_started(self, name: str, total: int) -> None: ...

    def request_done(self, result: RequestResult) -> None: ...

    def phase_finished(self, name: str) -> None: ...


class NullProgress:
    def phase_started(self, name: str, total: int) -> None:
        pass

    def request_done(self, result: RequestResult) -> None:
        pass

    def phase_finished(self, name: str) -> None:
        pass


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def _error_from_body(status: int, body: bytes) -> str:
    message = body.decode(errors="replace").strip()
    try:
        parsed: Any = json.loads(message)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str):
            message = error
        elif isinstance(parsed.get("detail"), str):
            message = parsed["detail"]
    return _short(f"HTTP {status}: {message}" if message else f"HTTP {status}")


def _absorb(result: RequestResult, event: dict[str, Any], chunks: list[int]) -> None:
    """Take one SSE event into the result: content, finish reason, usage, in-band errors."""
    error = event.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else error
        result.error = _short(f"stream error: {message}")
        return
    for choice in event.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if text is None:
            text = choice.get("text")  # a /completions-style chunk
        if text:
            if result.first_token is None:
                result.first_token = time.perf_counter()
            chunks[0] += 1
        if choice.get("finish_reason"):
            result.finish_reason = str(choice["finish_reason"])
    usage = event.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        result.usage_reported = True
        result.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            result.prompt_tokens = usage["prompt_tokens"]


async def _read_stream(
    client: httpx.AsyncClient, config: BenchConfig, body: dict[str, Any], result: RequestResult
) -> None:
    chunks = [0]  # content chunks seen: the token count when the server sends no usage
    done = False  # [DONE] arrived
    async with client.stream("POST", config.chat_url, json=body) as response:
        if response.status_code >= 400:
            result.error = _error_from_body(response.status_code, await response.aread())
            return
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments (": ping"), event names
            payload = line[len("data:") :].strip()
            if payload == "[DONE]":
                done = True
                break
            try:
                event = json.loads(payload)
            except ValueError:
                result.error = _short(f"bad SSE data: {payload}")
                return
            if isinstance(event, dict):
                _absorb(result, event, chunks)
            if result.error:
                return
    if not result.usage_reported:
        result.completion_tokens = chunks[0]
    if result.finish_reason is None:
        # Every complete answer names why it ended. A stream that closes (even with [DONE])
        # without saying so was cut off: llama-cpp-python's server does that to a stream in
        # flight when the next request arrives.
        result.error = "truncated" if done else "truncated (connection closed)"


async def stream_request(
    client: httpx.AsyncClient, config: BenchConfig, prompt: ChatPrompt, index: int, max_tokens: int | None = None
) -> RequestResult:
    """Send one streaming chat completion and time it; failures are recorded, never raised."""
    body: dict[str, Any] = {
        "model": config.model,
        "messages": prompt.as_list(),
        "max_tokens": max_tokens or config.max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.repeat_penalty is not None:
        body["repeat_penalty"] = config.repeat_penalty
    result = RequestResult(index=index, start=time.perf_counter())
    try:
        async with asyncio.timeout(config.timeout_s):
            await _read_stream(client, config, body, result)
    except TimeoutError:
        result.error = f"timeout after {config.timeout_s:g} s"
    except httpx.ConnectError as exc:
        result.error = _short(f"connect failed: {exc}")
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        # The server dropped the connection mid-answer: the stream was cut short.
        result.error = _short(f"truncated: {exc or type(exc).__name__}")
    except httpx.HTTPError as exc:
        result.error = _short(f"{type(exc).__name__}: {exc}")
    result.end = time.perf_counter()
    return result


class _Counter:
    """Hands out request numbers, unique over the whole run so that every prompt differs."""

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        value = self.next
        self.next += 1
        return value


async def run_level(
    client: httpx.AsyncClient,
    config: BenchConfig,
    prompts: PromptFactory,
    concurrency: int,
    numbers: _Counter,
    progress: ProgressSink,
) -> LevelRun:
    total = config.requests_for(concurrency)
    indices = [numbers.take() for _ in range(total)]
    # Build prompts before the clock starts: the client's own work must not count as latency.
    pending = [(index, prompts.build(index)) for index in indices]
    pending.reverse()
    results: list[RequestResult] = []

    async def worker() -> None:
        while pending:
            index, prompt = pending.pop()
            result = await stream_request(client, config, prompt, index)
            results.append(result)
            progress.request_done(result)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    results.sort(key=lambda item: item.index)
    return LevelRun(concurrency=concurrency, results=results, wall_s=time.perf_counter() - started)


async def _warm_up(client: httpx.AsyncClient, config: BenchConfig, nonce: str, progress: ProgressSink) -> float:
    """One short request, untimed in the results: loads the model, and proves the URL works."""
    prompt = ChatPrompt(({"role": "user", "content": f"Warm-up {nonce}. Say hello."},))
    result = await stream_request(client, config, prompt, index=-1, max_tokens=4)
    progress.request_done(result)
    if result.error:
        if result.error.startswith("connect failed"):
            raise BenchError(f"cannot reach {config.url}: {result.error.removeprefix('connect failed: ')}")
        raise BenchError(f"warm-up request to {config.chat_url} failed: {result.error}")
    return result.total_s


def _client(config: BenchConfig, max_concurrency: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        # Per-request deadlines are enforced by stream_request; here only connecting is bounded,
        # and reads get the same deadline as a backstop.
        timeout=httpx.Timeout(config.timeout_s, connect=_CONNECT_TIMEOUT_S),
        limits=httpx.Limits(max_connections=max_concurrency + 2, max_keepalive_connections=max_concurrency + 2),
        # Proxies configured for the internet must not sit between us and a loopback server.
        trust_env=False,
    )


async def run_bench(config: BenchConfig, progress: ProgressSink | None = None) -> BenchRun:
    """Warm up, optionally time a cold shared-prefix request, then run every concurrency level."""
    progress = progress or NullProgress()
    if config.memory_pid is not None and not process_exists(config.memory_pid):
        raise BenchError(f"no process with pid {config.memory_pid} to sample memory of")
    nonce = config.seed or secrets.token_hex(4)
    run = BenchRun(config=config, started_at=time.time(), nonce=nonce, loadavg_start=_loadavg())
    prompts = PromptFactory(config.prompt_tokens, nonce, config.shared_prefix)
    numbers = _Counter()
    sampler = RssSampler(config.memory_pid) if config.memory_pid is not None else None
    async with _client(config, max(config.concurrency)) as client:
        if config.warmup:
            progress.phase_started("warm-up", 1)
            run.warmup_s = await _warm_up(client, config, nonce, progress)
            progress.phase_finished("warm-up")
        if sampler is not None:
            sampler.sample()
            run.start_rss_mib = sampler.last_mib
        await _measure(client, config, prompts, numbers, progress, run, sampler)
    if sampler is not None:
        run.peak_rss_mib = sampler.overall_peak_mib
    run.loadavg_end = _loadavg()
    return run


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return None


async def _measure(
    client: httpx.AsyncClient,
    config: BenchConfig,
    prompts: PromptFactory,
    numbers: _Counter,
    progress: ProgressSink,
    run: BenchRun,
    sampler: RssSampler | None,
) -> None:
    async def body() -> None:
        if config.shared_prefix > 0:
            # Alone, so that nothing else competes with the prefill of the long system prompt.
            progress.phase_started("cold prefix", 1)
            index = numbers.take()
            run.cold = await stream_request(client, config, prompts.build(index), index)
            progress.request_done(run.cold)
            progress.phase_finished("cold prefix")
        for concurrency in config.concurrency:
            name = f"concurrency {concurrency}"
            progress.phase_started(name, config.requests_for(concurrency))
            if sampler is not None:
                sampler.reset()
            level = await run_level(client, config, prompts, concurrency, numbers, progress)
            if sampler is not None:
                sampler.sample()
                level.peak_rss_mib = sampler.peak_mib
            run.levels.append(level)
            progress.phase_finished(name)

    if sampler is None:
        await body()
        return
    async with sampler.running():
        await body()


def parse_levels(text: str) -> tuple[int, ...]:
    """'1,8,16' -> (1, 8, 16)."""
    try:
        levels = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError as exc:
        raise BenchError(f"--concurrency takes integers separated by commas, not {text!r}") from exc
    if not levels:
        raise BenchError("--concurrency needs at least one level")
    return levels
