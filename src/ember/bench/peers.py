"""Turn the JSON files of a peers run (bench/peers.sh) into the markdown of docs/benchmarks.md.

    python -m ember.bench.peers RESULTS_DIR [--doc docs/benchmarks.md]

RESULTS_DIR holds `ember bench --json` documents (one per server and mode, told apart by their
label and shared_prefix setting), llama-bench's `-o json` output as llama-bench.json, ember's
model load times as ember-load.json and the machine and versions as meta.json. Without --doc
the markdown goes to stdout; with it, it replaces what lies between the bench markers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_MARK = "<!-- bench:start -->"
END_MARK = "<!-- bench:end -->"
# The reference peer that ratios are taken against, and the server those ratios are about.
BASELINE = "llama-server"
SUBJECT = "ember"
# Columns in this order when present; any other label follows.
PEER_ORDER = ("llama-server", "llama-cpp-python", "ember")


@dataclass
class PeerResults:
    """One server's documents: the plain run and the shared-prefix run."""

    label: str
    plain: dict[str, Any] | None = None
    prefix: dict[str, Any] | None = None


@dataclass
class Results:
    peers: dict[str, PeerResults] = field(default_factory=dict)
    llama_bench: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    ember_ps: dict[str, Any] = field(default_factory=dict)
    bare_loop: dict[str, Any] = field(default_factory=dict)  # bench/bare_loop.py: the ceiling

    def ceiling(self, sequences: int) -> float | None:
        """The bare loop's decode tok/s at that many sequences, if it ran that level."""
        levels = self.bare_loop.get("levels") or []
        return next((level["decode_tps"] for level in levels if level.get("sequences") == sequences), None)

    def ordered(self) -> list[PeerResults]:
        known = [self.peers[label] for label in PEER_ORDER if label in self.peers]
        return known + [peer for label, peer in sorted(self.peers.items()) if label not in PEER_ORDER]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_results(directory: Path) -> Results:
    results = Results()
    for path in sorted(directory.glob("*.json")):
        data = _read_json(path)
        if path.name == "meta.json":
            results.meta = data
        elif path.name == "llama-bench.json":
            results.llama_bench = data if isinstance(data, list) else []
        elif path.name == "ember-load.json":
            results.load = data
        elif path.name == "ember-ps.json":
            results.ember_ps = data
        elif path.name == "bare-loop.json":
            results.bare_loop = data
        elif isinstance(data, dict) and str(data.get("schema", "")).startswith("ember-bench/"):
            label = data.get("label") or path.stem
            peer = results.peers.setdefault(label, PeerResults(label))
            if data["settings"].get("shared_prefix"):
                peer.prefix = data
            else:
                peer.plain = data
    return results


# -- cells ------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:,.0f}"


def _level(document: dict[str, Any] | None, concurrency: int) -> dict[str, Any] | None:
    if document is None:
        return None
    return next((level for level in document["levels"] if level["concurrency"] == concurrency), None)


@dataclass(frozen=True)
class Metric:
    """A table row: how to read a number from one level, how to print it, which way is better."""

    name: str
    read: Callable[[dict[str, Any]], float | None]
    show: Callable[[float | None], str]
    ratio: bool = True  # a ratio column makes sense (it does not for error counts)


def _errors_cell(level: dict[str, Any]) -> float | None:
    return float(level["errors"])


def _full_cell(level: dict[str, Any]) -> float | None:
    # Successful streams that ended by length with every token asked for (a model that stops
    # early is not a fault, but a stream claiming "length" with fewer tokens is).
    return float(level["full_length"])


PLAIN_METRICS = (
    Metric("aggregate tok/s", lambda level: level["aggregate_tps"], _fmt),
    Metric("per-stream tok/s (median)", lambda level: level["stream_tps_median"], _fmt),
    Metric("TTFT p50, ms", lambda level: level["ttft_p50_s"], _ms),
    Metric("TTFT p95, ms", lambda level: level["ttft_p95_s"], _ms),
)


def _ratio(subject: float | None, baseline: float | None) -> str:
    if subject is None or not baseline:
        return "–"
    return f"{subject / baseline:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _share_of(ceiling: float) -> Callable[[dict[str, Any]], float | None]:
    return lambda level: level["aggregate_tps"] / ceiling


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def throughput_table(results: Results) -> list[str]:
    peers = [peer for peer in results.ordered() if peer.plain]
    if not peers:
        return []
    with_ratio = any(p.label == BASELINE for p in peers) and any(p.label == SUBJECT for p in peers)
    levels = sorted({level["concurrency"] for peer in peers for level in (peer.plain or {})["levels"]})
    titles = results.meta.get("titles") or {}
    header = ["", *(str(titles.get(peer.label, peer.label)) for peer in peers)]
    header += [f"{SUBJECT} / {BASELINE}"] if with_ratio else []
    rows: list[list[str]] = []

    def add(
        name: str,
        read: Callable[[dict[str, Any]], float | None],
        show: Callable[[float | None], str],
        ratio: bool,
        concurrency: int,
    ) -> None:
        values: dict[str, float | None] = {}
        cells = []
        for peer in peers:
            level = _level(peer.plain, concurrency)
            value = read(level) if level else None
            values[peer.label] = value
            cells.append(show(value) if level else "not run")
        row = [f"{name}, {concurrency} stream{'s' if concurrency > 1 else ''}", *cells]
        if with_ratio:
            row.append(_ratio(values[SUBJECT], values[BASELINE]) if ratio else "")
        rows.append(row)

    for metric in PLAIN_METRICS:
        for concurrency in levels:
            add(metric.name, metric.read, metric.show, metric.ratio, concurrency)
    for concurrency in levels:
        ceiling = results.ceiling(concurrency)
        if ceiling:
            # How close each server comes to what llama.cpp and Python decode with nothing around them.
            add("share of the bare-loop ceiling", _share_of(ceiling), _percent, False, concurrency)
    for concurrency in levels:
        add("failed requests", _errors_cell, lambda v: _fmt(v, 0), False, concurrency)
    for concurrency in levels:
        add("streams that got all max_tokens", _full_cell, lambda v: _fmt(v, 0), False, concurrency)
    for concurrency in levels:
        # Where streams failed, what they did deliver before failing (aggregate counts only
        # complete answers).
        if any((_level(peer.plain, concurrency) or {}).get("errors") for peer in peers):
            add(
                "tok/s delivered, cut streams included",
                lambda level: level.get("delivered_tps"),
                _fmt,
                False,
                concurrency,
            )
    # Requests per level, so "16" above reads as "16 of 32".
    requests_row = [
        "requests per level",
        *(", ".join(str(level["requests"]) for level in (peer.plain or {})["levels"]) for peer in peers),
    ] + ([""] if with_ratio else [])
    rows.append(requests_row)
    loads = [
        "load average (1 min) before / after",
        *(
            "{} / {}".format(
                *(
                    _fmt(((peer.plain or {}).get("machine") or {}).get(key), 1)
                    for key in ("loadavg_1m_start", "loadavg_1m_end")
                )
            )
            for peer in peers
        ),
    ] + ([""] if with_ratio else [])
    rows.append(loads)
    memory = [(peer.plain or {}).get("memory") or {} for peer in peers]
    if any(m.get("peak_rss_mib") for m in memory):
        values = {peer.label: m.get("peak_rss_mib") for peer, m in zip(peers, memory, strict=True)}
        row = ["peak RSS, MiB (server and children)", *(_fmt(values[peer.label], 0) for peer in peers)]
        if with_ratio:
            row.append(_ratio(values.get(SUBJECT), values.get(BASELINE)))
        rows.append(row)
    return _table(header, rows)


def prefix_table(results: Results) -> list[str]:
    peers = [peer for peer in results.ordered() if peer.prefix]
    if not peers:
        return []
    with_ratio = any(p.label == BASELINE for p in peers) and any(p.label == SUBJECT for p in peers)
    header = ["", *(peer.label for peer in peers)] + ([f"{SUBJECT} / {BASELINE}"] if with_ratio else [])
    summaries = {peer.label: (peer.prefix or {})["shared_prefix"] or {} for peer in peers}
    levels = sorted({int(c) for s in summaries.values() for c in (s.get("warm_ttft_p50_s") or {})})
    rows: list[list[str]] = []

    def add(
        name: str, values: Mapping[str, float | None], show: Callable[[float | None], str], ratio: bool = True
    ) -> None:
        row = [name, *(show(values.get(peer.label)) for peer in peers)]
        if with_ratio:
            row.append(_ratio(values.get(SUBJECT), values.get(BASELINE)) if ratio else "")
        rows.append(row)

    add("cold TTFT (first request, alone), ms", {k: s.get("cold_ttft_s") for k, s in summaries.items()}, _ms)
    for concurrency in levels:
        add(
            f"warm TTFT p50, {concurrency} stream{'s' if concurrency > 1 else ''}, ms",
            {k: (s.get("warm_ttft_p50_s") or {}).get(str(concurrency)) for k, s in summaries.items()},
            _ms,
        )
    add("cold / warm (1st level)", {k: s.get("cold_over_warm") for k, s in summaries.items()}, _fmt, ratio=False)
    add(
        "prompt tokens (cold request)",
        {k: s.get("cold_prompt_tokens") for k, s in summaries.items()},
        lambda v: _fmt(v, 0),
        ratio=False,
    )
    failed = {peer.label: float((peer.prefix or {})["errors"]) for peer in peers}
    add("failed requests", failed, lambda v: _fmt(v, 0), ratio=False)
    return _table(header, rows)


def failure_lines(results: Results) -> list[str]:
    """What the failed requests were, per server and level: a count alone does not say."""
    titles = results.meta.get("titles") or {}
    lines = []
    for peer in results.ordered():
        for document, mode in ((peer.plain, ""), (peer.prefix, ", shared prefix")):
            for level in (document or {}).get("levels") or ():
                kinds = "; ".join(f"{count} x {kind}" for kind, count in level["error_kinds"].items())
                if kinds:
                    title = titles.get(peer.label, peer.label)
                    lines.append(
                        f"- {title}{mode}, {level['concurrency']} streams: {kinds} (of {level['requests']} requests)"
                    )
    return lines


ENGINES = {
    "process": "a worker process per model, continuous batching",
    "inprocess": "llama-cpp-python's Llama inside the server, one request at a time",
}


def engine_line(results: Results) -> str:
    name = str(results.meta.get("ember_engine", "?"))
    engine = f"`{name}` ({ENGINES[name]})" if name in ENGINES else name
    models = results.ember_ps.get("models") or []
    slots = models[0].get("slots") if models and isinstance(models[0], dict) else None
    return f"{engine}, {slots} sequence slot(s) per model as `GET /api/ps` reported" if slots else engine


def _rate(record: dict[str, Any]) -> str:
    return f"{record['avg_ts']:.0f} ± {record.get('stddev_ts', 0):.0f} tok/s"


def llama_bench_line(records: Sequence[dict[str, Any]]) -> str | None:
    parts = []
    for record in records:
        if record.get("n_prompt") and not record.get("n_gen"):
            parts.append(f"prompt processing (pp{record['n_prompt']}) {_rate(record)}")
        elif record.get("n_gen") and not record.get("n_prompt"):
            parts.append(f"generation (tg{record['n_gen']}) {_rate(record)}")
    return ", ".join(parts) if parts else None


def bare_loop_line(document: dict[str, Any]) -> str | None:
    levels = document.get("levels") or []
    if not levels:
        return None
    counts = " / ".join(str(level["sequences"]) for level in levels)
    decode = " / ".join(f"{level['decode_tps']:.0f}" for level in levels)
    total = " / ".join(f"{level['total_tps']:.0f}" for level in levels)
    return (
        "**Ceiling** (`bench/bare_loop.py`: a bare Python loop over llama.cpp's batch API with the same "
        "context settings as ember's worker; greedy argmax, no penalties, no HTTP, ~64-token prompts, "
        f"128 tokens per sequence): at {counts} sequences it decodes {decode} tok/s "
        f"({total} tok/s with the prompts' read counted)."
    )


def render(results: Results) -> str:
    meta = results.meta
    lines: list[str] = [
        f"Measured {meta.get('date', '?')} by `bench/peers.sh` on {meta.get('nproc', '?')} cores "
        f"({meta.get('cpu', 'unknown CPU')}), {meta.get('mem', '?')} memory, no GPU; a shared machine, so "
        "compare within this run (ratios), not across runs.",
        "",
        f"- model: `{meta.get('model', '?')}` ({meta.get('model_file', '?')}), {meta.get('threads', 2)} threads "
        "in every server",
        f"- llama.cpp {meta.get('llama_cpp_build', '?')}: the copy vendored by llama-cpp-python "
        f"{meta.get('llama_cpp_python', '?')}, built here with `GGML_NATIVE=ON`",
        f"- ember {meta.get('ember', '?')}, engine: {engine_line(results)}",
        f"- servers: {meta.get('servers', '?')}",
        f"- load: {meta.get('load', '?')}",
        "",
    ]
    bench_line = llama_bench_line(results.llama_bench)
    if bench_line:
        lines += [f"**llama-bench** (no server, one sequence): {bench_line}.", ""]
    ceiling = bare_loop_line(results.bare_loop)
    if ceiling:
        lines += [ceiling, ""]
    table = throughput_table(results)
    if table:
        lines += ["**Streaming chat completions** (`ember bench`, the same client for every server):", "", *table, ""]
    table = prefix_table(results)
    if table:
        prefix_tokens = next((p.prefix["settings"]["shared_prefix"] for p in results.ordered() if p.prefix), "?")
        lines += [
            f"**Shared prefix**: a ~{prefix_tokens}-token system prompt common to every request, a different "
            "short user message each; the first request alone (cold), then the others (warm):",
            "",
            *table,
            "",
        ]
    failures = failure_lines(results)
    if failures:
        lines += ["Failed requests (a timeout is `--timeout`, waiting in a queue included):", "", *failures, ""]
    durations = results.load.get("load_duration_s") or []
    if durations:
        shown = ", then ".join(f"{value:.2f} s" for value in durations)
        how = (
            "its `load_duration`"
            if results.load.get("measured_by") == "load_duration"
            else "the request's wall time; the server reports no `load_duration` for a load"
        )
        lines += [
            f"**ember model load** (unload, then `POST /api/generate` with an empty prompt; {how}): "
            f"{shown} (the model file in the page cache both times).",
            "",
        ]
    lines.append(
        "Ratios are ember over llama-server: above 1 is better for tok/s, below 1 is better for TTFT and memory."
    )
    return "\n".join(lines)


def replace_section(document: str, body: str) -> str:
    """The document with the text between the markers replaced; markers appended if missing."""
    block = f"{START_MARK}\n{body.rstrip()}\n{END_MARK}"
    start, end = document.find(START_MARK), document.find(END_MARK)
    if start == -1 or end == -1 or end < start:
        return document.rstrip() + "\n\n" + block + "\n"
    return document[:start] + block + document[end + len(END_MARK) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ember.bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="directory of JSON files from bench/peers.sh")
    parser.add_argument("--doc", type=Path, help="markdown file whose bench section to replace")
    args = parser.parse_args(argv)
    body = render(load_results(args.results))
    if args.doc is None:
        print(body)
        return 0
    current = args.doc.read_text() if args.doc.exists() else ""
    args.doc.write_text(replace_section(current, body))
    print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
