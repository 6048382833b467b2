"""A batch against the same lines sent interactively, and interactive TTFT while a batch runs.

    python bench/batch_throughput.py --url http://127.0.0.1:11434 -n 1000 --slots 4

Start the server with EMBER_CACHE=off (every line must reach the model). Four figures:
1. interactive: n lines as chat requests from a client keeping `--slots` in flight (the
   model's slot count), lines per second;
2. batch: n lines as batches (upload, create, poll to completed), lines per second from create
   to completed, and its ratio to 1 (target >= 0.95). The two alternate in `--rounds` rounds of
   n / rounds lines each, and the total and the median round's ratio are printed;
3. TTFT of streamed interactive requests, one at a time, on an idle server: p50 / p95;
4. the same while a batch of n lines runs (then cancelled).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx


def lines(n: int, model: str, max_tokens: int, tag: str) -> list[dict[str, object]]:
    return [
        {
            "custom_id": f"{tag}-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Say one word about the number {i}."}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]


async def interactive(client: httpx.AsyncClient, items: list[dict[str, object]], slots: int) -> float:
    queue = list(items)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            item = queue.pop()
            reply = await client.post("/v1/chat/completions", json=item["body"])
            reply.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(slots)))
    return len(items) / (time.perf_counter() - started)


async def start_batch(client: httpx.AsyncClient, items: list[dict[str, object]]) -> str:
    data = "".join(json.dumps(item) + "\n" for item in items).encode()
    upload = await client.post("/v1/files", files={"file": ("bench.jsonl", data)}, data={"purpose": "batch"})
    upload.raise_for_status()
    created = await client.post(
        "/v1/batches",
        json={"input_file_id": upload.json()["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    created.raise_for_status()
    return str(created.json()["id"])


async def batch(client: httpx.AsyncClient, items: list[dict[str, object]]) -> float:
    started = time.perf_counter()
    batch_id = await start_batch(client, items)
    while True:
        state = (await client.get(f"/v1/batches/{batch_id}")).json()
        if state["status"] in ("completed", "failed", "expired", "cancelled"):
            break
        await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - started
    counts = state["request_counts"]
    assert state["status"] == "completed" and counts["completed"] == len(items), state
    return len(items) / elapsed


async def until_completed(client: httpx.AsyncClient, batch_id: str, lines: int) -> None:
    """Wait until the batch has answered `lines` lines (it is well under way)."""
    for _ in range(3000):
        if (await client.get(f"/v1/batches/{batch_id}")).json()["request_counts"]["completed"] >= lines:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} answered fewer than {lines} lines in 10 minutes")


async def ttft(client: httpx.AsyncClient, model: str, probes: int) -> list[float]:
    samples = []
    for i in range(probes):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
            "max_tokens": 8,
            "stream": True,
        }
        started = time.perf_counter()
        first: float | None = None
        async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            async for line in reply.aiter_lines():  # read to the end: the slot is freed as in real use
                if first is None and line.startswith("data: ") and '"content"' in line:
                    first = (time.perf_counter() - started) * 1000
        assert first is not None, "no content in the stream"
        samples.append(first)
        await asyncio.sleep(0.2)
    return samples


def quantiles(samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=20)
    return f"p50 {statistics.median(samples):7.1f} ms   p95 {cuts[18]:7.1f} ms   (n={len(samples)})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:11434")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=4, help="the model's slot count (EMBER_NUM_PARALLEL)")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="alternations of interactive and batch")
    parser.add_argument("--api-key", default="none")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"}
    async with httpx.AsyncClient(base_url=args.url, timeout=600, headers=headers) as client:
        await interactive(client, lines(args.slots, args.model, args.max_tokens, "warm"), args.slots)
        # Rounds alternate the two, so a machine whose load drifts (a shared one) tilts neither.
        size = args.n // args.rounds
        ratios, total_i, total_b = [], 0.0, 0.0
        for r in range(args.rounds):
            rate_i = await interactive(client, lines(size, args.model, args.max_tokens, f"i{r}"), args.slots)
            rate_b = await batch(client, lines(size, args.model, args.max_tokens, f"b{r}"))
            ratios.append(rate_b / rate_i)
            total_i, total_b = total_i + size / rate_i, total_b + size / rate_b
            print(
                f"round {r + 1}: interactive {rate_i:6.2f} lines/s, batch {rate_b:6.2f} lines/s"
                f" ({rate_b / rate_i:.2f}x)",
                flush=True,
            )
        print(
            f"{args.n} lines each: interactive at {args.slots} in flight {args.n / total_i:6.2f} lines/s,"
            f" batch {args.n / total_b:6.2f} lines/s ({total_i / total_b:.2f}x;"
            f" median round {statistics.median(ratios):.2f}x)",
            flush=True,
        )
        idle = await ttft(client, args.model, args.probes)
        print(f"TTFT idle:                {quantiles(idle)}", flush=True)
        running = await start_batch(client, lines(args.n, args.model, args.max_tokens, "bg"))
        await until_completed(client, running, 2 * args.slots)
        busy = await ttft(client, args.model, args.probes)
        done = (await client.get(f"/v1/batches/{running}")).json()
        print(f"TTFT during a batch:      {quantiles(busy)}   (batch still {done['status']})", flush=True)
        await client.post(f"/v1/batches/{running}/cancel")


if __name__ == "__main__":
    asyncio.run(main())
