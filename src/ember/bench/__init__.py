"""`ember bench`: a load generator for any OpenAI-compatible server, and its reports.

Free of typer and of the server's code, so scripts and tests import it directly:

    from ember.bench import BenchConfig, run_bench, to_document
    document = to_document(asyncio.run(run_bench(BenchConfig(url=..., model=...))))
"""

from ember.bench.loadgen import (
    BenchConfig,
    BenchError,
    BenchRun,
    LevelRun,
    ProgressSink,
    RequestResult,
    parse_levels,
    run_bench,
    stream_request,
)
from ember.bench.report import percentile, summarize_level, to_document

__all__ = [
    "BenchConfig",
    "BenchError",
    "BenchRun",
    "LevelRun",
    "ProgressSink",
    "RequestResult",
    "parse_levels",
    "percentile",
    "run_bench",
    "stream_request",
    "summarize_level",
    "to_document",
]
