"""The fleet simulator: N simulated nodes on loopback, multi-turn traffic, and a router between.

One run ("cell") starts N SimNodes in this process, `users_per_node x N` simulated users
(closed loop: each sends its next turn when the last answer has streamed to the end), and puts
a NodeChooser where the gateway's `fleet` strategy has it: for every request the chooser orders
the nodes (their NodeInfo as the registry would hold it: load refreshed every `heartbeat_s`;
0 publishes none, so the chooser knows only the requests it counts itself),
the request goes to the first, `sent` and `finished` tell the chooser. The `fleet` router is
ember.fleet.routing.FleetRouter itself, fed the text the gateway's fleet strategy gives it
(gateway/strategies/fleet.py's prompt_text), so the benchmark measures the code that serves;
`round-robin` is the baseline. The driver stands where the gateway would be: no gateway
process is in the loop (its own cost is bench/gateway_overhead.py's subject).

Measured, from the client side over the window after `warmup_s`: completion tokens per second
(every streamed token counted as it arrives), TTFT of the requests sent in the window, the
prefix-cache hit rate (cached over prompt tokens, from each answer's usage), the busiest node's
share of requests. One node's throughput under the same per-node load (N = 1) is the yardstick
for "aggregate ≥ 0.93 · N of one node".

Invariants: every cell sends only to loopback, is bounded in time (warmup_s + duration_s, then
what is in flight is cancelled) and in requests (`max_requests`); the driver's own CPU share
and the event loop's lateness are measured per cell, since a saturated loop would slow the
simulated nodes and make the figures about Python instead of routing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from ember.bench.fleet_traffic import TrafficConfig, User
from ember.bench.report import percentile
from ember.bench.sim_node import NodeProfile, SimNode
from ember.errors import EmberError
from ember.fleet.routing import FleetRouter
from ember.fleet.types import NodeChooser, NodeInfo
from ember.gateway.strategies.fleet import prompt_text
from ember.services.types import ChatMessage, TextRequest

MODEL = "sim-model"
ROUTERS: dict[str, Callable[[], NodeChooser]] = {}


class FleetSimError(EmberError):
    """The simulation cannot run as asked."""


class RoundRobin:
    """The baseline NodeChooser: each request to the next node in turn, blind to prefix and load."""

    def __init__(self) -> None:
        self._counter = itertools.count()

    def order(
        self, model: str, prompt: str, candidates: Sequence[NodeInfo], tiers: Sequence[str] = ()
    ) -> list[NodeInfo]:
        nodes = sorted((n for n in candidates if n.serves(model)), key=lambda n: n.node_id)
        if not nodes:
            return []
        start = next(self._counter) % len(nodes)
        return nodes[start:] + nodes[:start]

    def sent(self, node_id: str, model: str, prompt: str) -> None:
        pass

    def finished(self, node_id: str) -> None:
        pass

    def forget(self, node_id: str) -> None:
        pass


ROUTERS["fleet"] = FleetRouter
ROUTERS["round-robin"] = RoundRobin


@dataclass(frozen=True)
class FleetSimConfig:
    nodes: tuple[int, ...] = (2, 4, 8)
    routers: tuple[str, ...] = ("fleet", "round-robin")
    profile: NodeProfile = field(default_factory=NodeProfile)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    users_per_node: int = 4
    duration_s: float = 12.0  # the measured window of each cell
    warmup_s: float = 2.0  # before it: caches and the router's tree fill, nothing is counted
    heartbeat_s: float = 1.0  # how stale the chooser's view of each node's load is; 0: no load published
    max_requests: int = 4000  # per cell, a bound besides the time
    request_timeout_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.nodes or any(n < 1 or n > 64 for n in self.nodes):
            raise FleetSimError("node counts must be within 1..64, e.g. 2,4,8")
        unknown = [r for r in self.routers if r not in ROUTERS]
        if unknown or not self.routers:
            raise FleetSimError(f"unknown router {', '.join(unknown) or '(none)'}: choose from {', '.join(ROUTERS)}")
        if self.users_per_node < 1 or self.max_requests < 1:
            raise FleetSimError("users per node and max requests must be at least 1")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.heartbeat_s < 0 or self.request_timeout_s <= 0:
            raise FleetSimError("duration must be > 0, warm-up and heartbeat >= 0")


@dataclass
class TurnResult:
    node: str
    start: float
    first_token: float | None = None
    end: float = 0.0
    tokens: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    moved: bool | None = None  # a follow-up turn sent to another node than the turn before it
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start


@dataclass(frozen=True)
class CellResult:
    """One (router, N) run's figures."""

    router: str
    nodes: int
    users: int
    duration_s: float
    requests: int
    errors: int
    error_kinds: dict[str, int]
    completion_tokens: int
    tokens_per_s: float
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    cache_hit_rate: float | None
    moved_share: float | None  # follow-up turns that went to another node than their last turn
    busiest_share: float | None  # the busiest node's share of requests, times N (1.0: even)
    driver_cpu: float  # process CPU seconds per wall second (nodes and driver share the process)
    loop_lag_p99_ms: float | None


class _Window:
    """Counts tokens as they arrive, from the window's opening on."""

    def __init__(self, opens: float, closes: float) -> None:
        self.opens = opens
        self.closes = closes
        self.tokens = 0

    def token(self, count: int = 1) -> None:
        now = time.perf_counter()
        if self.opens <= now <= self.closes:
            self.tokens += count


class _Fleet:
    """The nodes of a cell and the view the chooser gets of them."""

    def __init__(self, nodes: list[SimNode], heartbeat_s: float) -> None:
        self.nodes = nodes
        self._heartbeat_s = heartbeat_s
        self.view: list[NodeInfo] = [node.info() for node in nodes]
        self.by_id = {node.node_id: node for node in nodes}

    async def heartbeats(self) -> None:
        if self._heartbeat_s == 0:
            return  # the view keeps the load of the start: slots, nothing busy
        while True:
            await asyncio.sleep(self._heartbeat_s)
            self.view = [node.info() for node in self.nodes]


def routing_prompt(messages: list[dict[str, Any]]) -> str:
    """The text the gateway's fleet strategy keys the router's prefix tree on, for these messages."""
    chat = [ChatMessage(role=m["role"], content=m.get("content") or "") for m in messages]
    return prompt_text(TextRequest(model=MODEL, messages=chat))


async def _stream_turn(
    client: httpx.AsyncClient,
    url: str,
    messages: list[dict[str, object]],
    max_tokens: int,
    result: TurnResult,
    window: _Window,
) -> str:
    payload = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    parts: list[str] = []
    async with client.stream("POST", url + "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            body = (await response.aread()).decode(errors="replace")
            raise FleetSimError(f"HTTP {response.status_code}: {body[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage")
            if usage:
                result.prompt_tokens = usage.get("prompt_tokens", 0)
                result.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if result.first_token is None:
                        result.first_token = time.perf_counter()
                    parts.append(text)
                    count = len(text.split())  # a simulated token is a word
                    result.tokens += count
                    window.token(count)
    return "".join(parts)


async def _user_loop(
    user: User,
    chooser: NodeChooser,
    fleet: _Fleet,
    client: httpx.AsyncClient,
    window: _Window,
    results: list[TurnResult],
    budget: list[int],
) -> None:
    while True:
        conversation = user.conversation()
        last_node: str | None = None
        while not conversation.done:
            if budget[0] <= 0 or time.perf_counter() >= window.closes:
                return
            budget[0] -= 1
            messages, max_tokens = conversation.ask()
            prompt = routing_prompt(messages)
            ordered = chooser.order(MODEL, prompt, fleet.view)
            if not ordered:
                raise FleetSimError("the chooser returned no node")
            node = ordered[0]
            result = TurnResult(node=node.node_id, start=time.perf_counter())
            result.moved = None if last_node is None else node.node_id != last_node
            last_node = node.node_id
            results.append(result)
            chooser.sent(node.node_id, MODEL, prompt)
            try:
                text = await _stream_turn(client, node.base_url, list(messages), max_tokens, result, window)
            except (httpx.HTTPError, FleetSimError, json.JSONDecodeError) as exc:
                result.error = f"{type(exc).__name__}: {exc}"[:200]
                text = ""
            finally:
                result.end = time.perf_counter()
                chooser.finished(node.node_id)
            if result.error is not None:
                break  # a failed turn ends its conversation (its history has no answer)
            conversation.answered(text)
            pause = user.think()
            if pause > 0:
                await asyncio.sleep(pause)


async def _loop_lag(samples: list[float], every_s: float = 0.01) -> None:
    """How late the loop wakes a sleeper: the simulated nodes' clocks are sleeps too."""
    while True:
        before = time.perf_counter()
        await asyncio.sleep(every_s)
        samples.append(time.perf_counter() - before - every_s)


async def run_cell(config: FleetSimConfig, router: str, count: int) -> CellResult:
    nodes = [SimNode(f"node{i}", config.profile, MODEL, config.seed) for i in range(count)]
    for node in nodes:
        await node.start()
    fleet = _Fleet(nodes, config.heartbeat_s)
    chooser = ROUTERS[router]()
    users = [User(i, config.seed, config.traffic) for i in range(config.users_per_node * count)]
    results: list[TurnResult] = []
    lag: list[float] = []
    budget = [config.max_requests]
    started = time.perf_counter()
    window = _Window(started + config.warmup_s, started + config.warmup_s + config.duration_s)
    cpu_start = time.process_time()
    limits = httpx.Limits(max_connections=len(users) + 8, max_keepalive_connections=len(users) + 8)
    timeout = httpx.Timeout(config.request_timeout_s, connect=5.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:
        helpers = [asyncio.create_task(fleet.heartbeats()), asyncio.create_task(_loop_lag(lag))]
        loops = [
            asyncio.create_task(_user_loop(user, chooser, fleet, client, window, results, budget)) for user in users
        ]
        try:
            done, _pending = await asyncio.wait(loops, timeout=config.warmup_s + config.duration_s)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in [*loops, *helpers]:
                task.cancel()
            await asyncio.gather(*loops, *helpers, return_exceptions=True)
            for node in nodes:
                await node.close()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_start
    return _summarise(config, router, count, len(users), results, window, cpu / wall if wall > 0 else 0.0, lag)


def _summarise(
    config: FleetSimConfig,
    router: str,
    count: int,
    users: int,
    results: list[TurnResult],
    window: _Window,
    cpu_share: float,
    lag: list[float],
) -> CellResult:
    # Requests sent in the window that got an answer; those still streaming at its end count
    # only their tokens (in tokens_per_s), not their latency, which was cut off.
    measured = [r for r in results if window.opens <= r.start and r.end <= window.closes and r.end > 0]
    ok = [r for r in measured if r.error is None]
    errors = [r for r in measured if r.error is not None]
    kinds: dict[str, int] = {}
    for r in errors:
        kind = (r.error or "").split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    ttfts = [t for t in (r.ttft_s for r in ok) if t is not None]
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    per_node: dict[str, int] = {}
    for r in measured:
        per_node[r.node] = per_node.get(r.node, 0) + 1
    busiest = max(per_node.values()) * count / len(measured) if measured else None
    follow_ups = [r.moved for r in measured if r.moved is not None]
    return CellResult(
        router=router,
        nodes=count,
        users=users,
        duration_s=config.duration_s,
        requests=len(measured),
        errors=len(errors),
        error_kinds=kinds,
        completion_tokens=window.tokens,
        tokens_per_s=window.tokens / config.duration_s,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        ttft_p99_s=percentile(ttfts, 99),
        cache_hit_rate=sum(r.cached_tokens for r in ok) / prompt_tokens if prompt_tokens else None,
        moved_share=sum(follow_ups) / len(follow_ups) if follow_ups else None,
        busiest_share=busiest,
        driver_cpu=cpu_share,
        loop_lag_p99_ms=None if not lag else (percentile(lag, 99) or 0.0) * 1000,
    )


class SimProgress(Protocol):
    def cell_started(self, router: str, nodes: int) -> None: ...

    def cell_finished(self, cell: CellResult) -> None: ...


@dataclass(frozen=True)
class FleetSimRun:
    config: FleetSimConfig
    baseline: CellResult  # one node, the yardstick
    cells: tuple[CellResult, ...]
    wall_s: float


async def run_fleet_sim(config: FleetSimConfig, progress: SimProgress | None = None) -> FleetSimRun:
    """The baseline (one node), then every router at every node count, one cell at a time."""
    started = time.perf_counter()

    async def cell(router: str, count: int) -> CellResult:
        if progress is not None:
            progress.cell_started(router, count)
        result = await run_cell(config, router, count)
        if progress is not None:
            progress.cell_finished(result)
        return result

    # At N = 1 every chooser sends everything to the one node: round-robin is the plain case.
    baseline = await cell("round-robin", 1)
    cells = [await cell(router, count) for count in config.nodes for router in config.routers]
    return FleetSimRun(config=config, baseline=baseline, cells=tuple(cells), wall_s=time.perf_counter() - started)
