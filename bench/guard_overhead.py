"""What the guard costs per request, in process: GET /v1/models with auth off vs a limited key.

    python bench/guard_overhead.py -n 1200 --warmup 300

The app runs over httpx's ASGI transport (no sockets, no model), so the difference between the two
medians is the guard's own work: key lookup, scope check, GCRA limiter, concurrency slot, headers.
The target in docs/benchmarks.md is under 1 ms at p50.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from ember.app import build_app
from ember.config import Settings
from ember.guard.keys import KeyStore, parse_scopes


def make_key(home: Path) -> str:
    store = KeyStore(home / "state" / "keys.db")
    try:
        secret, _ = store.create("bench", parse_scopes("models"), rpm=10**6, tpm=10**6, max_concurrent=100)
    finally:
        store.close()
    return secret


async def median_ms(home: Path, auth: str, key: str, n: int, warmup: int) -> float:
    app = build_app(Settings(home=home, auth=auth))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t",
                                     headers={"x-api-key": key}) as client:
            times = []
            for _ in range(warmup + n):
                started = time.perf_counter()
                response = await client.get("/v1/models")
                times.append(time.perf_counter() - started)
                response.raise_for_status()
    return statistics.median(times[warmup:]) * 1000


async def run(n: int, warmup: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ember-guard-bench-") as tmp:
        home = Path(tmp)
        key = make_key(home)
        return {auth: await median_ms(home, auth, key, n, warmup) for auth in ("off", "required")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1200, help="timed requests per setting")
    parser.add_argument("--warmup", type=int, default=300, help="untimed requests first")
    args = parser.parse_args()
    medians = asyncio.run(run(args.n, args.warmup))
    cost = medians["required"] - medians["off"]
    print(f"GET /v1/models p50: auth off {medians['off']:.3f} ms, key + limits {medians['required']:.3f} ms,"
          f" guard cost {cost:.3f} ms")


if __name__ == "__main__":
    main()
