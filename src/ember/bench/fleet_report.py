"""The fleet simulator's figures as one JSON document, table rows and the target lines.

Pure functions over a FleetSimRun, so the JSON (what the docs' tables are made from) holds
exactly what the table shows. The targets are issue #16's: at every node count the fleet
router's aggregate throughput is at least 0.93 · N times one node's, and its TTFT p90 at least
60% lower than round-robin's.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from ember import __version__
from ember.bench.fleet_sim import CellResult, FleetSimRun

SCHEMA = "ember-bench-fleet/1"
SCALING_TARGET = 0.93  # aggregate over N x one node's
TTFT_TARGET = 0.60  # how much lower the fleet router's TTFT p90 is than round-robin's
FLEET, BASELINE = "fleet", "round-robin"
# The simulated engines' clocks are the event loop's: a chunk is ~200 ms of decoding, so a loop
# later than this distorts what is measured.
LAG_WARNING_MS = 25.0
MIN_REQUESTS = 10  # per cell: fewer and a p90 is one or two requests


def _scaling(cell: CellResult, baseline: CellResult) -> float | None:
    one = baseline.tokens_per_s
    return cell.tokens_per_s / (cell.nodes * one) if one > 0 else None


def _ttft_cut(cell: CellResult, cells: tuple[CellResult, ...]) -> float | None:
    """How much lower this cell's TTFT p90 is than round-robin's at the same N (0.6: 60% lower)."""
    other = next((c for c in cells if c.router == BASELINE and c.nodes == cell.nodes), None)
    if other is None or other.ttft_p90_s is None or cell.ttft_p90_s is None or other.ttft_p90_s <= 0:
        return None
    return 1.0 - cell.ttft_p90_s / other.ttft_p90_s


def to_document(run: FleetSimRun) -> dict[str, Any]:
    config = run.config
    cells = []
    for cell in run.cells:
        entry = asdict(cell)
        entry["scaling"] = _scaling(cell, run.baseline)
        entry["ttft_p90_cut_vs_round_robin"] = None if cell.router == BASELINE else _ttft_cut(cell, run.cells)
        cells.append(entry)
    targets = []
    for cell in run.cells:
        if cell.router != FLEET:
            continue
        scaling = _scaling(cell, run.baseline)
        targets.append(
            {
                "nodes": cell.nodes,
                "what": f"aggregate >= {SCALING_TARGET:.2f} x N x one node",
                "value": scaling,
                "met": scaling is not None and scaling >= SCALING_TARGET,
            }
        )
        cut = _ttft_cut(cell, run.cells)
        if cut is not None:
            targets.append(
                {
                    "nodes": cell.nodes,
                    "what": f"TTFT p90 >= {TTFT_TARGET:.0%} lower than round-robin",
                    "value": cut,
                    "met": cut >= TTFT_TARGET,
                }
            )
    return {
        "schema": SCHEMA,
        "ember_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"system": platform.system(), "machine": platform.machine(), "cpus": os.cpu_count()},
        "config": {
            "nodes": list(config.nodes),
            "routers": list(config.routers),
            "users_per_node": config.users_per_node,
            "duration_s": config.duration_s,
            "warmup_s": config.warmup_s,
            "heartbeat_s": config.heartbeat_s,
            "seed": config.seed,
            "profile": asdict(config.profile),
            "traffic": asdict(config.traffic),
        },
        "baseline": asdict(run.baseline),
        "cells": cells,
        "targets": targets,
        "errors": run.baseline.errors + sum(cell.errors for cell in run.cells),
        "wall_s": run.wall_s,
    }


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


HEADERS = [
    "nodes",
    "router",
    "tok/s",
    "vs N x one",
    "TTFT p50 ms",
    "TTFT p90 ms",
    "p90 vs rr",
    "cache hits",
    "moved",
    "busiest",
    "requests",
    "errors",
    "cpu",
]


def rows(document: dict[str, Any]) -> list[list[str]]:
    def row(cell: dict[str, Any], scaling: str, cut: str) -> list[str]:
        return [
            str(cell["nodes"]),
            cell["router"],
            _num(cell["tokens_per_s"]),
            scaling,
            _ms(cell["ttft_p50_s"]),
            _ms(cell["ttft_p90_s"]),
            cut,
            _pct(cell["cache_hit_rate"]),
            _pct(cell["moved_share"]),
            _num(cell["busiest_share"], 2),
            str(cell["requests"]),
            str(cell["errors"]),
            _pct(cell["driver_cpu"]),
        ]

    lines = [row(document["baseline"], "1.00", "-")]
    for cell in document["cells"]:
        scaling = _num(cell["scaling"], 2)
        value = cell["ttft_p90_cut_vs_round_robin"]
        cut = "-" if value is None else f"{-value * 100:+.0f}%"  # -83%: 83% lower than round-robin's
        lines.append(row(cell, scaling, cut))
    return lines


def summary_lines(document: dict[str, Any]) -> list[str]:
    lines = []
    for target in document["targets"]:
        value = target["value"]
        shown = "-" if value is None else (f"{value:.2f}" if "aggregate" in target["what"] else f"{value:.0%}")
        verdict = "met" if target["met"] else "NOT met"
        lines.append(f"N={target['nodes']}: {target['what']}: {shown} ({verdict})")
    cpus = [c["driver_cpu"] for c in [document["baseline"], *document["cells"]]]
    lags = [
        c["loop_lag_p99_ms"] for c in [document["baseline"], *document["cells"]] if c["loop_lag_p99_ms"] is not None
    ]
    lines.append(
        f"driver CPU at most {max(cpus):.0%} of a core; event-loop lag p99 at most "
        f"{max(lags) if lags else 0:.0f} ms; {document['wall_s']:.0f} s in all"
    )
    if max(cpus) > 0.7:
        lines.append("warning: the driver used most of a core: the figures may be about Python, not routing")
    # The cells compared; the one-node baseline is the yardstick of throughput alone.
    few = [c for c in document["cells"] if c["requests"] < MIN_REQUESTS]
    if few:
        where = ", ".join(f"N={c['nodes']} {c['router']}" for c in few)
        lines.append(
            f"warning: fewer than {MIN_REQUESTS} requests measured in {where}: "
            "its latencies say little (a longer --duration gives more)"
        )
    if lags and max(lags) > LAG_WARNING_MS:
        lines.append(
            f"warning: the event loop woke sleepers up to {max(lags):.0f} ms late (a busy machine?): "
            "the simulated nodes ran slower than their profile, and the figures are not reliable"
        )
    return lines
