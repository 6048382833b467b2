"""What ember costs as a pure proxy: direct upstream vs ember vs LiteLLM's proxy, one run.

    .venv/bin/python bench/gateway_overhead.py [--requests 300] [--duration 15] [--concurrency 32]
        [--skip-litellm] [--json PATH]

It starts, on loopback ports of its own:

- the fast upstream, `python -m ember.bench.upstream` (an OpenAI-compatible fake that streams
  "tok0 ", "tok1 ", ... one chunk per token, no model), closing connections idle for
  --upstream-keep-alive seconds (5, as uvicorn and llama-server do: a proxy's pool must cope);
- `ember serve` with a generated ember.toml: one `openai` provider at the upstream and a route
  "bench" -> "up/bench"; EMBER_CACHE=off (no response cache), log level warning, a temporary
  EMBER_HOME;
- LiteLLM's proxy (`litellm --config ... --num_workers 1`) from its own venv, proxying model
  "bench" to the same upstream, with no database, no master key, no callbacks, no telemetry and
  LITELLM_LOG=ERROR. Without that venv (or with --skip-litellm) it is left out, and said so.
  Make the venv once (bench/.cache/ is git-ignored):

      python3 -m venv bench/.cache/litellm-venv
      bench/.cache/litellm-venv/bin/pip install 'litellm[proxy]'

Then, with one client (httpx, the same code for every target), it measures:

1. latency: N sequential non-streaming chat completions (max_tokens --max-tokens) after a
   warm-up, the targets interleaved request by request so that a neighbour's burst hits all of
   them alike; p50/p95, and "added" = p50(proxy) - p50(direct). The same for streaming requests'
   time to first token.
2. throughput: --concurrency clients, each streaming chat completions (--stream-tokens tokens)
   back to back for --duration seconds, per target one after the other (the order reversed on
   every other round, --rounds); completed requests/s, content tokens/s, errors. A stream counts
   as complete only if it names a finish reason and brought every token asked for.

Beside the client-side times it reads each proxy's CPU time (its process group, from /proc)
over every phase: CPU milliseconds per request is the figure that a busy, shared machine
disturbs least. --profile-ember PATH runs ember under cProfile (slower; for finding where the
time goes), --ember-python another interpreter for ember (e.g. one that adds uvloop).

It prints a markdown table and, with --json, writes every figure. Every process it starts runs
in its own process group and is stopped (by that group's id) when it ends, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / "bench" / ".cache" / "litellm-venv"
MODEL = "bench"  # the name every target is asked for
SCHEMA = "ember-gateway-overhead/1"


# -- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One server this script started: its process (a group of its own) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM to the group (ember's worker, LiteLLM's workers), SIGKILL after 10 s."""
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the child's pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.process.wait()
        # Children left behind in the group (the process itself has gone).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


class Services:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Service] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.workdir)
        service = Service(name, process, log_path)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            try:
                service.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {service.name} failed: {exc}", file=sys.stderr)


def wait_ready(service: Service, url: str, timeout: float, *, post: dict[str, Any] | None = None) -> None:
    """Poll until `url` answers 200 (GET, or POST of `post`); fail with the log on exit or timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n{service.log_tail()}")
            try:
                response = client.post(url, json=post) if post is not None else client.get(url)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.25)
    raise RuntimeError(f"{service.name} not ready at {url} after {timeout:g} s ({last}):\n{service.log_tail()}")


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env.pop(key, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH", "")]))
    return env


def start_upstream(services: Services, token_delay: float, keep_alive: float) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "ember.bench.upstream", "--host", "127.0.0.1", "--port", str(port),
            "--keep-alive", str(keep_alive)]
    if token_delay > 0:
        argv += ["--token-delay", str(token_delay)]
    service = services.start("upstream", argv, base_env())
    url = f"http://127.0.0.1:{port}/v1"
    wait_ready(service, url + "/models", 30)
    return url


# `ember serve` under cProfile: the stats are written when the server stops (SIGTERM).
_PROFILED_SERVE = """
import cProfile, signal, sys, time
out = sys.argv[1]
# uvicorn re-raises SIGTERM after its graceful shutdown: make that an exit we can catch.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
sys.argv = ["ember", "serve"]
from ember.cli import main
# CPU time, not wall time: a write that wakes the other process on a busy machine, or a
# coroutine's wait, would otherwise be counted as the function's own time.
profile = cProfile.Profile(time.process_time)
profile.enable()
try:
    main()
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats(out)
"""


def start_ember(services: Services, upstream: str, profile: Path | None = None,
                python: str = sys.executable) -> str:
    home = services.workdir / "ember-home"
    home.mkdir()
    config = services.workdir / "ember.toml"
    config.write_text(
        "[[providers]]\n"
        'name = "up"\n'
        'kind = "openai"\n'
        f'base_url = "{upstream}"\n'
        "\n"
        "[[routes]]\n"
        f'model = "{MODEL}"\n'
        'targets = ["up/bench"]\n'
    )
    port = free_port()
    env = base_env()
    env.update(EMBER_HOME=str(home), EMBER_HOST=f"127.0.0.1:{port}", EMBER_CONFIG=str(config),
               EMBER_CACHE="off", EMBER_LOG_LEVEL="warning")
    argv = [python, "-m", "ember", "serve"]
    if profile is not None:
        argv = [python, "-c", _PROFILED_SERVE, str(profile.resolve())]
    service = services.start("ember", argv, env)
    url = f"http://127.0.0.1:{port}/v1"
    wait_ready(service, f"http://127.0.0.1:{port}/health", 60)
    wait_ready(service, url + "/chat/completions", 30, post=_body(1, stream=False))
    return url


def litellm_executable() -> Path | None:
    exe = LITELLM_VENV / "bin" / "litellm"
    return exe if exe.exists() else None


def litellm_version() -> str | None:
    python = LITELLM_VENV / "bin" / "python"
    try:
        out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def start_litellm(services: Services, upstream: str, exe: Path) -> str:
    config = services.workdir / "litellm.yaml"
    # JSON is YAML: no yaml package needed here.
    config.write_text(json.dumps({
        "model_list": [{
            "model_name": MODEL,
            "litellm_params": {"model": "openai/bench", "api_base": upstream, "api_key": "unused"},
        }],
        "litellm_settings": {
            "telemetry": False,          # no usage pings
            "drop_params": True,
            "set_verbose": False,
            "json_logs": False,
            "cache": False,               # no response cache, like ember's EMBER_CACHE=off
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
        "general_settings": {
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "disable_adding_master_key_hash_to_db": True,
            "allow_requests_on_db_unavailable": True,
            "background_health_checks": False,
        },
    }, indent=2))
    port = free_port()
    env = base_env()
    env.pop("PYTHONPATH", None)  # its own venv, nothing of ember's
    for key in ("DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL", "STORE_MODEL_IN_DB"):
        env.pop(key, None)
    # No master key, like ember here with no keys configured: no auth work in either.
    env.update(LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", LITELLM_MODE="PRODUCTION",
               LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY="true",
               DISABLE_SCHEMA_UPDATE="true", USE_PRISMA_MIGRATE="False", LITELLM_LOCAL_MODEL_COST_MAP="True",
               OPENAI_API_KEY="unused")
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    service = services.start("litellm", argv, env)
    url = f"http://127.0.0.1:{port}/v1"
    wait_ready(service, url + "/chat/completions", 120, post=_body(1, stream=False))
    return url


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in a process group (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # pgrp; utime and stime follow at 11 and 12
            total += int(fields[11]) + int(fields[12])
    return total / tick


class CpuMeter:
    """CPU seconds the proxies' process groups used over a span (the direct target has none)."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups

    def read(self) -> dict[str, float]:
        return {name: group_cpu_seconds(pgid) for name, pgid in self.groups.items()}

    @staticmethod
    def used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in before}


# -- the client -------------------------------------------------------------------------------


def _body(max_tokens: int, *, stream: bool, index: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Request {index}: say something."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Outcome:
    total_s: float = 0.0
    ttft_s: float | None = None
    tokens: int = 0  # content chunks (one token each from this upstream)
    error: str | None = None


def _client(connections: int, timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=5.0),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
        headers={"Authorization": "Bearer unused"},
    )


async def call_json(client: httpx.AsyncClient, url: str, max_tokens: int, index: int) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome()
    try:
        async with asyncio.timeout(client.timeout.read):  # the whole request, not each read
            response = await client.post(url, json=_body(max_tokens, stream=False, index=index))
        outcome.total_s = time.perf_counter() - started
        if response.status_code != 200:
            outcome.error = f"HTTP {response.status_code}"
            return outcome
        data = response.json()
        content = data["choices"][0]["message"]["content"] or ""
        outcome.tokens = int((data.get("usage") or {}).get("completion_tokens") or len(content.split()))
        if outcome.tokens != max_tokens:
            outcome.error = f"{outcome.tokens} of {max_tokens} tokens"
    except TimeoutError:
        outcome.total_s = time.perf_counter() - started
        outcome.error = "timeout"
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        outcome.total_s = time.perf_counter() - started
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]
    return outcome


async def call_stream(client: httpx.AsyncClient, url: str, max_tokens: int, index: int) -> Outcome:
    started = time.perf_counter()
    outcome = Outcome()
    finish: str | None = None
    try:
        async with asyncio.timeout(client.timeout.read), \
                client.stream("POST", url, json=_body(max_tokens, stream=True, index=index)) as response:
            if response.status_code != 200:
                await response.aread()
                outcome.error = f"HTTP {response.status_code}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    event = json.loads(payload)
                    if event.get("error"):
                        outcome.error = f"stream error: {event['error']}"[:200]
                        break
                    for choice in event.get("choices") or ():
                        if (choice.get("delta") or {}).get("content"):
                            if outcome.ttft_s is None:
                                outcome.ttft_s = time.perf_counter() - started
                            outcome.tokens += 1
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
    except TimeoutError:
        outcome.error = "timeout"
    except (httpx.HTTPError, ValueError, AttributeError, TypeError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"[:200]
    outcome.total_s = time.perf_counter() - started
    if outcome.error is None:
        if finish is None:
            outcome.error = "truncated (no finish_reason)"
        elif outcome.tokens != max_tokens:
            outcome.error = f"{outcome.tokens} of {max_tokens} tokens"
    return outcome


# -- measurements -----------------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _latency_summary(values: list[float], errors: list[str]) -> dict[str, Any]:
    return {"n": len(values), "errors": len(errors), "error_kinds": _kinds(errors),
            "p50_ms": _ms(percentile(values, 50)), "p95_ms": _ms(percentile(values, 95)),
            "mean_ms": _ms(statistics.fmean(values) if values else None), "min_ms": _ms(min(values, default=None))}


def _kinds(errors: list[str]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for error in errors:
        kinds[error] = kinds.get(error, 0) + 1
    return kinds


async def measure_latency(targets: dict[str, str], requests: int, warmup: int, max_tokens: int,
                          stream: bool, timeout: float, cpu: CpuMeter) -> dict[str, dict[str, Any]]:
    """Sequential requests, one at a time over the whole run, targets interleaved (rotating order)."""
    call = call_stream if stream else call_json
    names = list(targets)
    values: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, list[str]] = {name: [] for name in names}
    # Paired with direct: the difference of the two requests sent next to each other.
    paired: dict[str, list[float]] = {name: [] for name in names}
    clients = {name: _client(2, timeout) for name in names}
    cpu_before = cpu.read()
    try:
        for i in range(warmup + requests):
            order = names[i % len(names):] + names[:i % len(names)]
            got: dict[str, float] = {}
            for name in order:
                outcome = await call(clients[name], targets[name] + "/chat/completions", max_tokens, i)
                value = outcome.ttft_s if stream else outcome.total_s
                if i < warmup:
                    continue
                if outcome.error is not None or value is None:
                    errors[name].append(outcome.error or "no token")
                else:
                    values[name].append(value)
                    got[name] = value
            if "direct" in got:
                for name, value in got.items():
                    paired[name].append(value - got["direct"])
    finally:
        for client in clients.values():
            await client.aclose()
    cpu_used = cpu.used(cpu_before, cpu.read())
    summary = {name: _latency_summary(values[name], errors[name]) for name in names}
    for name in names:
        # Warm-up requests included: the CPU was spent on them too.
        summary[name]["server_cpu_ms_per_request"] = (round(cpu_used[name] * 1000 / (warmup + requests), 3)
                                                      if name in cpu_used else None)
    direct_p50 = summary.get("direct", {}).get("p50_ms")
    for name in names:
        p50 = summary[name]["p50_ms"]
        summary[name]["added_p50_ms"] = (round(p50 - direct_p50, 3)
                                         if p50 is not None and direct_p50 is not None else None)
        summary[name]["paired_added_p50_ms"] = _ms(percentile(paired[name], 50))
    return summary


async def measure_throughput(url: str, concurrency: int, duration: float, max_tokens: int,
                             timeout: float, cpu: CpuMeter, name: str) -> dict[str, Any]:
    """`concurrency` clients streaming back to back until `duration` is up (in-flight ones finish)."""
    chat = url + "/chat/completions"
    async with _client(concurrency + 2, timeout) as client:
        # Warm-up: open every connection (client -> proxy -> upstream) before the clock starts.
        await asyncio.gather(*(call_stream(client, chat, max_tokens, -1) for _ in range(concurrency)))
        ok: list[Outcome] = []
        failed: list[Outcome] = []
        counter = iter(range(10**9))
        cpu_before = cpu.read()
        started = time.perf_counter()
        deadline = started + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                outcome = await call_stream(client, chat, max_tokens, next(counter))
                (ok if outcome.error is None else failed).append(outcome)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        cpu_used = cpu.used(cpu_before, cpu.read()).get(name)
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    return {
        "wall_s": wall, "completed": len(ok), "errors": len(failed),
        "error_kinds": _kinds([o.error or "" for o in failed]),
        "tokens": sum(o.tokens for o in ok),
        "ttft_p50_ms": _ms(percentile(ttfts, 50)), "ttft_p95_ms": _ms(percentile(ttfts, 95)),
        "total_p50_ms": _ms(percentile([o.total_s for o in ok], 50)),
        "server_cpu_s": cpu_used,
    }


def _merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(r["wall_s"] for r in rounds)
    completed = sum(r["completed"] for r in rounds)
    tokens = sum(r["tokens"] for r in rounds)
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, count in r["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    cpu = [r["server_cpu_s"] for r in rounds]
    cpu_s = None if None in cpu else sum(cpu)
    requests = completed + sum(r["errors"] for r in rounds)
    return {
        "server_cpu_ms_per_request": round(cpu_s * 1000 / requests, 3) if cpu_s is not None and requests else None,
        "server_cpu_share": round(cpu_s / wall, 3) if cpu_s is not None and wall else None,  # 1.0: one core busy
        "wall_s": round(wall, 3), "completed": completed, "errors": sum(r["errors"] for r in rounds),
        "error_kinds": kinds, "tokens": tokens,
        "requests_per_s": round(completed / wall, 2) if wall else None,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "rounds": rounds,
    }


# -- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render(document: dict[str, Any]) -> str:
    names = list(document["targets"])
    labels = {"direct": "upstream direct", "ember": "ember", "litellm": "LiteLLM proxy"}
    header = "| | " + " | ".join(labels.get(n, n) for n in names)
    has_both = "ember" in names and "litellm" in names
    header += " | ember / LiteLLM |" if has_both else " |"
    sep = "|---|" + "---:|" * (len(names) + (1 if has_both else 0))
    rows: list[str] = []

    def row(title: str, values: list[str], ratio: str = "") -> None:
        rows.append(f"| {title} | " + " | ".join(values) + (f" | {ratio} |" if has_both else " |"))

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f} x" if a is not None and b else ""

    lat = document["latency"]
    for kind, title in (("json", "non-streaming latency"), ("stream", "streaming TTFT")):
        section = lat.get(kind)
        if not section:
            continue
        row(f"{title} p50, ms", [_fmt(section[n]["p50_ms"], 2) for n in names])
        row(f"{title} p95, ms", [_fmt(section[n]["p95_ms"], 2) for n in names])
        row(f"{title}: added p50 vs direct, ms", [_fmt(section[n]["added_p50_ms"], 2) for n in names])
        row(f"{title}: added, paired median, ms", [_fmt(section[n]["paired_added_p50_ms"], 2) for n in names])
        cpu = [section[n].get("server_cpu_ms_per_request") for n in names]
        row(f"{title}: proxy CPU per request, ms", [_fmt(v, 2) for v in cpu], ratio(
            section.get("ember", {}).get("server_cpu_ms_per_request"),
            section.get("litellm", {}).get("server_cpu_ms_per_request")))
        row(f"{title}: errors", [str(section[n]["errors"]) for n in names])
    thr = document.get("throughput")
    if thr:
        c = document["settings"]["concurrency"]
        row(f"{c} streams: completed requests/s", [_fmt(thr[n]["requests_per_s"], 1) for n in names],
            ratio(thr.get("ember", {}).get("requests_per_s"), thr.get("litellm", {}).get("requests_per_s")))
        row(f"{c} streams: tokens/s", [_fmt(thr[n]["tokens_per_s"], 0) for n in names],
            ratio(thr.get("ember", {}).get("tokens_per_s"), thr.get("litellm", {}).get("tokens_per_s")))
        ttft = {n: statistics.median([r["ttft_p50_ms"] for r in thr[n]["rounds"] if r["ttft_p50_ms"] is not None] or [0])
                for n in names}
        row(f"{c} streams: TTFT p50, ms", [_fmt(ttft[n], 1) for n in names])
        row(f"{c} streams: proxy CPU per request, ms", [_fmt(thr[n]["server_cpu_ms_per_request"], 2) for n in names],
            ratio(thr.get("ember", {}).get("server_cpu_ms_per_request"),
                  thr.get("litellm", {}).get("server_cpu_ms_per_request")))
        row(f"{c} streams: proxy CPU busy, cores", [_fmt(thr[n]["server_cpu_share"], 2) for n in names])
        row(f"{c} streams: errors", [f"{thr[n]['errors']} of {thr[n]['completed'] + thr[n]['errors']}" for n in names])
    return "\n".join([header, sep, *rows])


# -- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, targets: dict[str, str], cpu: CpuMeter) -> dict[str, Any]:
    latency: dict[str, Any] = {}
    if args.requests > 0:
        print(f"latency: {args.requests} non-streaming requests per target, interleaved ...", file=sys.stderr)
        latency["json"] = await measure_latency(targets, args.requests, args.warmup, args.max_tokens,
                                                False, args.timeout, cpu)
        print(f"latency: {args.requests} streaming requests per target (TTFT), interleaved ...", file=sys.stderr)
        latency["stream"] = await measure_latency(targets, args.requests, args.warmup, args.max_tokens,
                                                  True, args.timeout, cpu)
    throughput: dict[str, Any] = {}
    if args.duration > 0:
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for r in range(args.rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                print(f"throughput round {r + 1}/{args.rounds}: {name}, {args.concurrency} streams, "
                      f"{args.duration:g} s ...", file=sys.stderr)
                rounds[name].append(await measure_throughput(targets[name], args.concurrency, args.duration,
                                                             args.stream_tokens, args.timeout, cpu, name))
        throughput = {name: _merge_rounds(rounds[name]) for name in targets}
    return {"latency": latency, "throughput": throughput}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per target and kind (0: skip)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per target before those")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per latency request")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of load per target and round (0: skip)")
    parser.add_argument("--rounds", type=int, default=1, help="throughput rounds, the target order reversed each round")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent streams in the throughput phase")
    parser.add_argument("--stream-tokens", type=int, default=32, help="tokens per stream in the throughput phase")
    parser.add_argument("--token-delay", type=float, default=0.0, help="the upstream's pause between tokens, s")
    parser.add_argument("--upstream-keep-alive", type=float, default=5.0,
                        help="seconds the upstream keeps an idle connection (uvicorn's and llama-server's 5 s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request limit, s")
    parser.add_argument("--skip-litellm", action="store_true", help="leave LiteLLM's proxy out")
    parser.add_argument("--skip-ember", action="store_true", help="leave ember out (to test the LiteLLM set-up)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--profile-ember", type=Path, metavar="PATH",
                        help="run ember under cProfile and write its stats here (slows ember down)")
    parser.add_argument("--ember-python", metavar="PATH",
                        help="the interpreter that runs ember serve (default: this one); e.g. a venv "
                             "that adds uvloop and httptools, to try them")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this folder")
    args = parser.parse_args(argv)
    if args.ember_python and os.sep in args.ember_python:
        args.ember_python = os.path.abspath(args.ember_python)  # the servers run in a temporary folder
    if args.requests < 0 or args.warmup < 0 or args.duration < 0 or args.rounds < 1 or args.concurrency < 1:
        parser.error("counts and durations must not be negative; --rounds and --concurrency at least 1")
    if args.max_tokens < 1 or args.stream_tokens < 1:
        parser.error("--max-tokens and --stream-tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ember-gw-bench-") as tmp:
        services = Services(Path(tmp))
        try:
            targets: dict[str, str] = {}
            print("starting the upstream ...", file=sys.stderr)
            targets["direct"] = start_upstream(services, args.token_delay, args.upstream_keep_alive)
            if not args.skip_ember:
                print("starting ember serve ...", file=sys.stderr)
                targets["ember"] = start_ember(services, targets["direct"], args.profile_ember,
                                              args.ember_python or sys.executable)
            versions: dict[str, str | None] = {}
            exe = litellm_executable()
            if args.skip_litellm:
                notes.append("LiteLLM left out (--skip-litellm)")
            elif exe is None:
                notes.append(f"LiteLLM left out: no venv at {LITELLM_VENV} (see docs/benchmarks.md)")
                print(f"note: {notes[-1]}", file=sys.stderr)
            else:
                print("starting LiteLLM's proxy ...", file=sys.stderr)
                targets["litellm"] = start_litellm(services, targets["direct"], exe)
                versions["litellm"] = litellm_version()
            loadavg_start = _loadavg()
            started_at = datetime.now(timezone.utc)
            groups = {s.name: s.process.pid for s in services.started if s.name in targets}
            results = asyncio.run(run(args, targets, CpuMeter(groups)))
            from ember import __version__

            versions["ember"] = __version__
            document = {
                "schema": SCHEMA,
                "started_at": started_at.isoformat(timespec="seconds"),
                "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                         "loadavg_start": loadavg_start, "loadavg_end": _loadavg()},
                "versions": versions,
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "targets": targets,
                "notes": notes,
                **results,
            }
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            services.stop_all()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for service in services.started:
                    with contextlib.suppress(OSError):
                        (args.keep_logs / service.log_path.name).write_bytes(service.log_path.read_bytes())
    print(render(document))
    for note in notes:
        print(f"\n{note}")
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    errors = sum(section[n]["errors"] for section in document["latency"].values() for n in section)
    errors += sum(t["errors"] for t in document["throughput"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
