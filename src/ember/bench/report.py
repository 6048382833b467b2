"""Statistics over a benchmark run, and its two renderings: a JSON document and table rows.

Pure functions over the raw results, so the numbers are unit-testable on fixed inputs and the
JSON (what scripts build comparison tables from) holds exactly what the table shows.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from ember import __version__
from ember.bench.loadgen import BenchRun, LevelRun, RequestResult

SCHEMA = "ember-bench/1"


def percentile(values: Iterable[float], pct: float) -> float | None:
    """The pct-th percentile with linear interpolation between ranks (numpy's default).

    None for no values: an empty level has no latency, and 0 would read as a fast one.
    """
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, not {pct}")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class LevelSummary:
    """The numbers of one concurrency level. Rates count successful requests only: tokens of a
    stream that failed never reached a usable answer."""

    concurrency: int
    requests: int
    errors: int
    error_kinds: dict[str, int]
    wall_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    ttft_max_s: float | None
    total_p50_s: float | None
    stream_tps_median: float | None
    aggregate_tps: float | None
    # All tokens received, failed streams' included: what a server that cuts streams did deliver.
    delivered_tps: float | None
    completion_tokens: int
    prompt_tokens_mean: float | None
    finish_reasons: dict[str, int]
    # Streams that ended by length with every token asked for, and those that claimed "length"
    # with fewer: the second is a server cutting streams while reporting success.
    full_length: int
    short_length: int
    peak_rss_mib: float | None


@dataclass(frozen=True)
class SharedPrefixSummary:
    prefix_tokens: int
    cold_ttft_s: float | None
    cold_prompt_tokens: int | None
    cold_error: str | None
    # Warm TTFT at each level (the median), and cold over the first level's warm median.
    warm_ttft_p50_s: dict[str, float | None]  # by concurrency, as JSON keys
    cold_over_warm: float | None


def _error_kind(error: str) -> str:
    # Group "HTTP 503: queue full (12 waiting)" and "HTTP 503: queue full (13 waiting)" together.
    head = error.split(":", 1)[0] if error.startswith(("HTTP", "connect", "stream error")) else error
    if head.startswith("truncated"):
        head = "truncated"
    return head[:80]


def summarize_level(level: LevelRun, max_tokens: int) -> LevelSummary:
    ok = [result for result in level.results if result.ok]
    ttfts = [result.ttft_s for result in ok if result.ttft_s is not None]
    rates = [rate for rate in (result.stream_tps for result in ok) if rate is not None]
    tokens = sum(result.completion_tokens for result in ok)
    delivered = sum(result.completion_tokens for result in level.results)
    prompt_counts = [result.prompt_tokens for result in ok if result.prompt_tokens is not None]
    finishes = Counter(result.finish_reason or "none" for result in ok)
    errors = Counter(_error_kind(result.error) for result in level.results if result.error)
    length = [result for result in ok if result.finish_reason == "length"]
    return LevelSummary(
        concurrency=level.concurrency,
        requests=len(level.results),
        errors=sum(errors.values()),
        error_kinds=dict(errors),
        wall_s=level.wall_s,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p95_s=percentile(ttfts, 95),
        ttft_max_s=max(ttfts) if ttfts else None,
        total_p50_s=percentile([result.total_s for result in ok], 50),
        stream_tps_median=_median(rates),
        aggregate_tps=tokens / level.wall_s if level.wall_s > 0 and ok else None,
        delivered_tps=delivered / level.wall_s if level.wall_s > 0 else None,
        completion_tokens=tokens,
        prompt_tokens_mean=statistics.fmean(prompt_counts) if prompt_counts else None,
        finish_reasons=dict(finishes),
        full_length=sum(1 for result in length if result.completion_tokens >= max_tokens),
        short_length=sum(1 for result in length if result.completion_tokens < max_tokens),
        peak_rss_mib=level.peak_rss_mib,
    )


def summarize_prefix(
    cold: RequestResult | None, levels: Sequence[LevelSummary], prefix_tokens: int
) -> SharedPrefixSummary | None:
    if cold is None:
        return None
    warm = {str(level.concurrency): level.ttft_p50_s for level in levels}
    first_warm = levels[0].ttft_p50_s if levels else None
    cold_ttft = cold.ttft_s if cold.ok else None
    ratio = cold_ttft / first_warm if cold_ttft is not None and first_warm else None
    return SharedPrefixSummary(
        prefix_tokens=prefix_tokens,
        cold_ttft_s=cold_ttft,
        cold_prompt_tokens=cold.prompt_tokens,
        cold_error=cold.error,
        warm_ttft_p50_s=warm,
        cold_over_warm=ratio,
    )


def to_document(run: BenchRun) -> dict[str, Any]:
    """The --json document: settings, per-level numbers, the shared-prefix result, memory."""
    config = run.config
    levels = [summarize_level(level, config.max_tokens) for level in run.levels]
    prefix = summarize_prefix(run.cold, levels, config.shared_prefix)
    errors = sum(level.errors for level in levels) + (1 if run.cold and run.cold.error else 0)
    return {
        "schema": SCHEMA,
        "label": config.label,
        "url": config.url,
        "model": config.model,
        "started_at": datetime.fromtimestamp(run.started_at, UTC).isoformat(timespec="seconds"),
        "client": {"ember": __version__, "python": platform.python_version()},
        "machine": {"cpus": os.cpu_count(), "loadavg_1m_start": run.loadavg_start, "loadavg_1m_end": run.loadavg_end},
        "settings": {
            "concurrency": list(config.concurrency),
            "requests": {str(c): config.requests_for(c) for c in config.concurrency},
            "prompt_tokens": config.prompt_tokens,
            "max_tokens": config.max_tokens,
            "shared_prefix": config.shared_prefix,
            "temperature": config.temperature,
            "repeat_penalty": config.repeat_penalty,
            "timeout_s": config.timeout_s,
            "seed": run.nonce,
        },
        "warmup_s": run.warmup_s,
        "levels": [asdict(level) for level in levels],
        "shared_prefix": asdict(prefix) if prefix else None,
        "memory": None
        if config.memory_pid is None
        else {
            "pid": config.memory_pid,
            "start_rss_mib": run.start_rss_mib,
            "peak_rss_mib": run.peak_rss_mib,
        },
        "errors": errors,
        "ok": errors == 0,
    }


# -- table ------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


LEVEL_HEADERS = (
    "CONC",
    "REQS",
    "ERRORS",
    "TTFT p50 ms",
    "TTFT p95 ms",
    "TOK/S STREAM",
    "TOK/S TOTAL",
    "FULL LENGTH",
    "PROMPT TOK",
    "WALL S",
)


def level_rows(document: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the per-level table, from the JSON document."""
    headers = list(LEVEL_HEADERS)
    with_memory = document.get("memory") is not None
    if with_memory:
        headers.append("PEAK RSS MiB")
    rows: list[list[str]] = []
    for level in document["levels"]:
        full = f"{level['full_length']}/{level['requests']}"
        if level["short_length"]:
            full += f" ({level['short_length']} short)"
        row = [
            str(level["concurrency"]),
            str(level["requests"]),
            str(level["errors"]),
            _ms(level["ttft_p50_s"]),
            _ms(level["ttft_p95_s"]),
            _num(level["stream_tps_median"]),
            _num(level["aggregate_tps"]),
            full,
            _num(level["prompt_tokens_mean"], 0),
            _num(level["wall_s"]),
        ]
        if with_memory:
            row.append(_num(level["peak_rss_mib"], 0))
        rows.append(row)
    return headers, rows


def summary_lines(document: dict[str, Any]) -> list[str]:
    """Lines below the table: the shared-prefix result, memory and error kinds."""
    lines: list[str] = []
    prefix = document.get("shared_prefix")
    if prefix:
        warm = ", ".join(f"c={c}: {_ms(value)} ms" for c, value in prefix["warm_ttft_p50_s"].items())
        cold = f"{_ms(prefix['cold_ttft_s'])} ms" if not prefix["cold_error"] else f"error ({prefix['cold_error']})"
        lines.append(
            f"shared prefix ~{prefix['prefix_tokens']} tokens: cold TTFT {cold}; warm TTFT p50 {warm}; "
            f"cold/warm {_num(prefix['cold_over_warm'])}x"
        )
    memory = document.get("memory")
    if memory:
        lines.append(
            f"memory of pid {memory['pid']} and children: {_num(memory['start_rss_mib'], 0)} MiB at start, "
            f"peak {_num(memory['peak_rss_mib'], 0)} MiB"
        )
    for level in document["levels"]:
        for kind, count in level["error_kinds"].items():
            lines.append(f"c={level['concurrency']}: {count} x {kind}")
    return lines
