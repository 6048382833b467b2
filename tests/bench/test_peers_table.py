"""The markdown that bench/peers.sh writes into docs/benchmarks.md, from fixed JSON files."""

from __future__ import annotations

import json
from pathlib import Path

from ember.bench.loadgen import BenchConfig, BenchRun, LevelRun, RequestResult
from ember.bench.peers import END_MARK, START_MARK, load_results, main, render, replace_section
from ember.bench.report import to_document


def streams(count: int, tokens: int, *, total: float, error: str | None = None) -> list[RequestResult]:
    return [RequestResult(index=i, start=0.0, end=total, first_token=0.1, completion_tokens=tokens,
                          usage_reported=True, finish_reason=None if error else "length", error=error)
            for i in range(count)]


def write_run(directory: Path, label: str, tokens_per_s: float, *, prefix: int = 0, error: str | None = None) -> None:
    config = BenchConfig(url="http://127.0.0.1:1/v1", model="m", concurrency=(1, 8), max_tokens=10,
                         shared_prefix=prefix, label=label)
    # Wall times chosen so that each level's aggregate is exactly tokens_per_s.
    levels = [LevelRun(1, streams(2, 10, total=1.0), 20 / tokens_per_s),
              LevelRun(8, streams(16, 10, total=1.0, error=error), 160 / tokens_per_s)]
    cold = streams(1, 10, total=3.0)[0] if prefix else None
    run = BenchRun(config=config, started_at=0.0, nonce="n", levels=levels, cold=cold)
    name = f"{label}-prefix" if prefix else label
    (directory / f"{name}.json").write_text(json.dumps(to_document(run)))


def test_table_puts_peers_side_by_side_with_ratios(tmp_path: Path) -> None:
    write_run(tmp_path, "llama-server", 100.0)
    write_run(tmp_path, "ember", 150.0)
    write_run(tmp_path, "llama-cpp-python", 20.0, error="truncated")
    write_run(tmp_path, "ember", 150.0, prefix=1500)
    (tmp_path / "meta.json").write_text(json.dumps({"date": "today", "titles": {"llama-server": "llama-server -np 8"}}))
    (tmp_path / "llama-bench.json").write_text(json.dumps([
        {"n_prompt": 128, "n_gen": 0, "avg_ts": 272.4, "stddev_ts": 3.0},
        {"n_prompt": 0, "n_gen": 128, "avg_ts": 132.2, "stddev_ts": 1.0},
    ]))
    (tmp_path / "ember-load.json").write_text(json.dumps({"load_duration_s": [1.5, 0.5], "measured_by": "wall"}))
    text = render(load_results(tmp_path))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("|  |"))
    # Known peers in a fixed order, the reference peer by its title, then the ratio column.
    assert header == "|  | llama-server -np 8 | llama-cpp-python | ember | ember / llama-server |"
    row = next(line for line in lines if line.startswith("| aggregate tok/s, 1 stream |"))
    assert row.split("|")[2:6] == [" 100.0 ", " 20.0 ", " 150.0 ", " 1.50 "]
    assert "prompt processing (pp128) 272 ± 3 tok/s, generation (tg128) 132 ± 1 tok/s" in text
    assert "- llama-cpp-python, 8 streams: 16 x truncated (of 16 requests)" in text
    assert "1.50 s, then 0.50 s" in text
    assert "**Shared prefix**: a ~1500-token system prompt" in text


def test_the_doc_section_between_markers_is_replaced(tmp_path: Path) -> None:
    doc = f"# Benchmarks\n\nintro\n\n{START_MARK}\nold table\n{END_MARK}\n\nafter\n"
    replaced = replace_section(doc, "new table")
    assert replaced == f"# Benchmarks\n\nintro\n\n{START_MARK}\nnew table\n{END_MARK}\n\nafter\n"
    assert replace_section("# No markers\n", "t").endswith(f"{START_MARK}\nt\n{END_MARK}\n")

    write_run(tmp_path, "ember", 50.0)
    target = tmp_path / "benchmarks.md"
    target.write_text(doc)
    assert main([str(tmp_path), "--doc", str(target)]) == 0
    written = target.read_text()
    assert "old table" not in written and "| aggregate tok/s, 8 streams | 50.0 |" in written
    assert written.endswith(f"{END_MARK}\n\nafter\n")


def test_the_bare_loop_is_the_ceiling_row(tmp_path: Path) -> None:
    write_run(tmp_path, "llama-server", 100.0)
    write_run(tmp_path, "ember", 150.0)
    (tmp_path / "bare-loop.json").write_text(json.dumps({"schema": "ember-bare-loop/1", "levels": [
        {"sequences": 1, "decode_tps": 200.0, "total_tps": 180.0},
        {"sequences": 8, "decode_tps": 300.0, "total_tps": 250.0},
    ]}))
    text = render(load_results(tmp_path))
    assert "at 1 / 8 sequences it decodes 200 / 300 tok/s (180 / 250 tok/s with the prompts' read counted)" in text
    row = next(line for line in text.splitlines() if line.startswith("| share of the bare-loop ceiling, 8 streams |"))
    # Each server's aggregate over the loop's decode rate at the same count.
    assert row.split("|")[2:4] == [" 33% ", " 50% "]
