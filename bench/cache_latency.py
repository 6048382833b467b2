"""How fast a running server answers a response-cache hit, against GET /health as the floor.

    python bench/cache_latency.py --url http://127.0.0.1:11434 --model smollm2:135m -n 200

Sequential requests over one keep-alive loopback connection (httpx), so the figures are the
server's own latency per request, not a load test. Prints p50 and p90 in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable

import httpx


def timed(n: int, call: Callable[[], httpx.Response]) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        reply = call()
        samples.append((time.perf_counter() - started) * 1000)
        reply.raise_for_status()
    return samples


def line(name: str, samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=10)
    return f"{name:<28} p50 {statistics.median(samples):6.2f} ms   p90 {cuts[8]:6.2f} ms   (n={len(samples)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:11434")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("-n", type=int, default=200)
    args = parser.parse_args()

    question = f"Say hi. ({uuid.uuid4().hex[:8]})"  # a fresh entry: the first request is the miss
    openai_body = {"model": args.model, "messages": [{"role": "user", "content": question}],
                   "temperature": 0, "max_tokens": 8}
    ollama_body = {"model": args.model, "messages": [{"role": "user", "content": question}],
                   "stream": False, "options": {"temperature": 0, "num_predict": 8}}
    with httpx.Client(base_url=args.url, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=openai_body)
        first.raise_for_status()
        print(f"first request: X-Ember-Cache {first.headers.get('x-ember-cache')}")
        for _ in range(20):  # warm the connection and the server's code paths
            client.get("/health")
            client.post("/v1/chat/completions", json=openai_body)
        health = timed(args.n, lambda: client.get("/health"))
        hits = timed(args.n, lambda: client.post("/v1/chat/completions", json=openai_body))
        ollama_hits = timed(args.n, lambda: client.post("/api/chat", json=ollama_body))
        last = client.post("/api/chat", json=ollama_body)
        assert last.headers.get("x-ember-cache") == "hit", "the Ollama request did not hit the cache"
    print(line("GET /health (floor)", health))
    print(line("cache hit /v1/chat", hits))
    print(line("cache hit /api/chat", ollama_hits))
    print(f"hit minus floor (p50): {statistics.median(hits) - statistics.median(health):.2f} ms")


if __name__ == "__main__":
    main()
