"""The statistics of `ember bench` on fixed inputs: percentiles, per-level numbers, tables."""

from __future__ import annotations

import json

import pytest

from ember.bench.loadgen import BenchConfig, BenchError, BenchRun, LevelRun, RequestResult, parse_levels
from ember.bench.prompts import PromptFactory
from ember.bench.report import level_rows, percentile, summarize_level, summary_lines, to_document


def result(index: int, *, ttft: float | None = 0.1, total: float = 1.1, tokens: int = 11,
           finish: str | None = "length", error: str | None = None) -> RequestResult:
    start = 100.0 + index
    return RequestResult(index=index, start=start, end=start + total,
                         first_token=None if ttft is None else start + ttft,
                         completion_tokens=tokens, prompt_tokens=60, usage_reported=True,
                         finish_reason=finish, error=error)


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_stream_rate_counts_tokens_after_the_first() -> None:
    one = result(0, ttft=0.1, total=1.1, tokens=11)
    assert one.ttft_s == pytest.approx(0.1)
    assert one.stream_tps == pytest.approx(10.0)  # 10 tokens after the first, in 1 s
    assert result(1, tokens=1).stream_tps is None
    assert result(2, ttft=None, tokens=0).stream_tps is None


def test_level_summary_on_fixed_results() -> None:
    results = [
        result(0, ttft=0.1, total=1.1, tokens=11),
        result(1, ttft=0.2, total=2.2, tokens=11),
        result(2, ttft=0.3, total=1.3, tokens=6, finish="stop"),
        result(3, ttft=0.4, total=1.4, tokens=5, finish="length"),  # "length" yet short: a cut
        result(4, ttft=0.1, tokens=4, finish=None, error="truncated (connection closed)"),
        result(5, ttft=None, tokens=0, finish=None, error="HTTP 503: queue is full (12 waiting)"),
        result(6, ttft=None, tokens=0, finish=None, error="HTTP 503: queue is full (13 waiting)"),
    ]
    summary = summarize_level(LevelRun(concurrency=4, results=results, wall_s=2.0, peak_rss_mib=300.0), max_tokens=11)
    assert summary.requests == 7
    assert summary.errors == 3
    assert summary.error_kinds == {"truncated": 1, "HTTP 503": 2}
    assert summary.ttft_p50_s == pytest.approx(0.25)
    assert summary.ttft_p95_s == pytest.approx(0.385)
    assert summary.ttft_max_s == pytest.approx(0.4)
    assert summary.completion_tokens == 33  # failed requests do not count
    assert summary.aggregate_tps == pytest.approx(16.5)
    assert summary.delivered_tps == pytest.approx(18.5)  # the cut stream's 4 tokens too
    # rates: 10/1.0, 10/2.0, 5/1.0, 4/1.0 -> median of 4, 5, 5, 10
    assert summary.stream_tps_median == pytest.approx(5.0)
    assert summary.finish_reasons == {"length": 3, "stop": 1}
    assert summary.full_length == 2
    assert summary.short_length == 1
    assert summary.prompt_tokens_mean == 60
    assert summary.peak_rss_mib == 300.0


def test_a_level_where_everything_failed_has_no_rates() -> None:
    results = [result(i, ttft=None, tokens=0, finish=None, error="connect failed: refused") for i in range(3)]
    summary = summarize_level(LevelRun(concurrency=1, results=results, wall_s=0.01), max_tokens=8)
    assert summary.errors == 3 and summary.error_kinds == {"connect failed": 3}
    assert summary.ttft_p50_s is None and summary.aggregate_tps is None and summary.stream_tps_median is None


def test_document_table_and_shared_prefix() -> None:
    config = BenchConfig(url="http://127.0.0.1:1/v1", model="m", concurrency=(1, 2), requests=2,
                         max_tokens=11, shared_prefix=1500, memory_pid=1, label="peer")
    run = BenchRun(config=config, started_at=0.0, nonce="n", warmup_s=0.5,
                   cold=result(99, ttft=2.0, total=3.0),
                   levels=[LevelRun(1, [result(0), result(1)], 2.2, 200.0),
                           LevelRun(2, [result(2, ttft=0.5), result(3, ttft=0.5)], 1.6, 210.0)],
                   start_rss_mib=190.0, peak_rss_mib=210.0)
    document = json.loads(json.dumps(to_document(run)))  # what --json prints must be plain JSON
    assert document["ok"] and document["errors"] == 0
    assert document["settings"]["requests"] == {"1": 2, "2": 2}
    prefix = document["shared_prefix"]
    assert prefix["cold_ttft_s"] == pytest.approx(2.0)
    assert prefix["warm_ttft_p50_s"] == {"1": pytest.approx(0.1), "2": pytest.approx(0.5)}
    assert prefix["cold_over_warm"] == pytest.approx(20.0)
    assert document["memory"]["peak_rss_mib"] == 210.0

    headers, rows = level_rows(document)
    assert headers[-1] == "PEAK RSS MiB"
    assert rows[0][:5] == ["1", "2", "0", "100", "100"]
    assert rows[0][7] == "2/2"
    lines = summary_lines(document)
    assert any("cold TTFT 2000 ms" in line and "20.0x" in line for line in lines)


def test_settings_are_checked() -> None:
    assert parse_levels("1, 8,16") == (1, 8, 16)
    with pytest.raises(BenchError):
        parse_levels("1,eight")
    with pytest.raises(BenchError):
        BenchConfig(url="u", model="m", concurrency=(0,))
    assert BenchConfig(url="u", model="m", concurrency=(8,)).requests_for(8) == 16


def test_prompts_are_distinct_and_share_only_the_system_prompt() -> None:
    plain = PromptFactory(64, "aaaa")
    assert plain.build(0) != plain.build(1)
    assert plain.build(0) == PromptFactory(64, "aaaa").build(0)  # reproducible within a run
    # A new run (nonce) changes the first words, so no prompt cache helps across runs.
    assert plain.build(0).messages[0]["content"][:20] != PromptFactory(64, "bbbb").build(0).messages[0]["content"][:20]
    shared = PromptFactory(64, "aaaa", shared_prefix=300)
    first, second = shared.build(0).messages, shared.build(1).messages
    assert first[0] == second[0] and first[0]["role"] == "system"
    assert len(first[0]["content"].split()) > 200
    assert first[1] != second[1]
