"""httpx vs aiohttp for the gateway's provider path: CPU and wall time per upstream call.

    .venv/bin/python bench/http_clients.py [--requests 300] [--rounds 2] [--tokens 8]

Starts the fake upstream (`python -m ember.bench.upstream`) on loopback and, in this one process
under uvloop (as `ember serve` runs), makes the calls the provider path makes: a streamed chat
completion read as raw bytes to its end, and a non-streamed one read whole, with each client set
up as gateway/remote.py sets it (pooled, absolute URL parsed once, no proxy from the environment).
The clients alternate round by round; the figure that matters is CPU ms per request (this
process's own time), which a shared machine disturbs least. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop
import yarl

Call = Callable[[bool], Awaitable[int]]


def _body(tokens: int, stream: bool) -> bytes:
    messages = [{"role": "user", "content": "hello there"}]
    return json.dumps({"model": "bench", "messages": messages, "max_tokens": tokens, "stream": stream}).encode()


async def _measure(name: str, call: Call, requests: int, stream: bool) -> dict[str, float]:
    for _ in range(20):  # warm the pool and the code paths
        await call(stream)
    walls = []
    cpu0 = time.process_time()
    for _ in range(requests):
        t0 = time.perf_counter()
        await call(stream)
        walls.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0
    return {"cpu_ms": 1000 * cpu / requests, "p50_ms": 1000 * statistics.median(walls)}


async def _run(url: str, args: argparse.Namespace) -> None:
    chat = url + "/v1/chat/completions"
    bodies = {s: _body(args.tokens, s) for s in (False, True)}
    headers = {"content-type": "application/json"}
    hx = httpx.AsyncClient(limits=httpx.Limits(max_connections=8, keepalive_expiry=2.0), trust_env=False)
    hx_url = httpx.URL(chat)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=2.0), trust_env=False, auto_decompress=False
    )
    aio_url = yarl.URL(chat, encoded=True)

    async def with_httpx(stream: bool) -> int:
        async with hx.stream("POST", hx_url, content=bodies[stream], headers=headers) as response:
            return sum([len(chunk) async for chunk in response.aiter_raw()])

    async def with_aiohttp(stream: bool) -> int:
        async with session.post(aio_url, data=bodies[stream], headers=headers) as response:
            return sum([len(chunk) async for chunk in response.content.iter_any()])

    clients: dict[str, Call] = {"httpx": with_httpx, "aiohttp": with_aiohttp}
    results: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for round_no in range(args.rounds):
        order = list(clients) if round_no % 2 == 0 else list(reversed(clients))
        for name in order:
            for stream in (False, True):
                results.setdefault((name, stream), []).append(
                    await _measure(name, clients[name], args.requests, stream)
                )
    await hx.aclose()
    await session.close()
    print(f"{'client':8} {'call':10} {'CPU ms/req':>11} {'p50 ms':>8}   ({args.rounds} rounds x {args.requests})")
    for (name, stream), rows in results.items():
        cpu = statistics.median(r["cpu_ms"] for r in rows)
        p50 = statistics.median(r["p50_ms"] for r in rows)
        print(f"{name:8} {'streamed' if stream else 'whole':10} {cpu:11.3f} {p50:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--port", type=int, default=18931)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    upstream = subprocess.Popen(
        [sys.executable, "-m", "ember.bench.upstream", "--port", str(args.port)], env={**os.environ}
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/api/version", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        uvloop.run(_run(url, args))
    finally:
        upstream.terminate()
        upstream.wait()


if __name__ == "__main__":
    main()
