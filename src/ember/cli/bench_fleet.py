"""`ember bench fleet`: the fleet simulator (ember.bench.fleet_sim), and the `ember bench` group.

`ember bench` alone still benchmarks a server (cli/bench.py is the group's callback); `fleet`
is its one subcommand. Progress goes to stderr as a line per cell (stdout stays clean for
--json); the table and the target lines come at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

from ember.bench.fleet_report import HEADERS, rows, summary_lines, to_document
from ember.bench.fleet_sim import ROUTERS, CellResult, FleetSimConfig, FleetSimError, run_fleet_sim
from ember.bench.fleet_traffic import TrafficConfig
from ember.bench.sim_node import NodeProfile
from ember.cli import bench as server_bench
from ember.cli.output import console_for, print_table

bench_app = typer.Typer(
    invoke_without_command=True,
    help="Benchmark a server: streaming chat completions at several concurrency levels. "
    "`ember bench fleet` runs the fleet simulator instead.",
)
bench_app.callback()(server_bench.bench)


class _Lines:
    def __init__(self) -> None:
        self._stream = sys.stderr

    def cell_started(self, router: str, nodes: int) -> None:
        print(f"N={nodes} {router}: running", file=self._stream, flush=True)

    def cell_finished(self, cell: CellResult) -> None:
        p90 = "-" if cell.ttft_p90_s is None else f"{cell.ttft_p90_s * 1000:.0f} ms"
        print(
            f"N={cell.nodes} {cell.router}: {cell.tokens_per_s:.1f} tok/s, TTFT p90 {p90}, "
            f"{cell.requests} requests, {cell.errors} errors",
            file=self._stream,
            flush=True,
        )


def _node_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise FleetSimError(f"--nodes takes integers separated by commas, e.g. 2,4,8, not {text!r}") from None


@bench_app.command("fleet")
def fleet(
    nodes: Annotated[str, typer.Option("--nodes", help="Node counts to simulate, comma-separated.")] = "2,4,8",
    routers: Annotated[
        str, typer.Option("--routers", help=f"Choosers to compare, comma-separated: {', '.join(ROUTERS)}.")
    ] = "fleet,round-robin",
    duration: Annotated[float, typer.Option("--duration", help="Seconds measured per node count and router.")] = 12.0,
    warmup: Annotated[float, typer.Option("--warmup", help="Seconds before the measuring starts (caches fill).")] = 2.0,
    users_per_node: Annotated[
        int, typer.Option("--users-per-node", help="Simulated users per node (closed loop: one turn in flight each).")
    ] = 4,
    slots: Annotated[int, typer.Option("--slots", help="Sequences each node decodes at once.")] = 4,
    prefill_tps: Annotated[
        float, typer.Option("--prefill-tps", help="Uncached prompt tokens a node prefills per second.")
    ] = 2000.0,
    decode_tps: Annotated[float, typer.Option("--decode-tps", help="Tokens per second of one sequence alone.")] = 20.0,
    cache_blocks: Annotated[
        int, typer.Option("--cache-blocks", help="16-token blocks in each node's prefix cache.")
    ] = 1024,
    system_prompts: Annotated[
        int, typer.Option("--system-prompts", help="Distinct system prompts the users share.")
    ] = 4,
    system_tokens: Annotated[int, typer.Option("--system-tokens", help="Tokens of each system prompt.")] = 600,
    turns: Annotated[int, typer.Option("--turns", help="Turns per conversation.")] = 8,
    think: Annotated[
        float, typer.Option("--think", help="Mean seconds a user pauses between an answer and the next turn.")
    ] = 0.0,
    heartbeat: Annotated[
        float,
        typer.Option(
            "--heartbeat",
            help="Seconds between the nodes' load reports the router reads; 0: none, it counts its own requests.",
        ),
    ] = 1.0,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same conversations.")] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document with every number instead of a table.")
    ] = False,
) -> None:
    """Simulate a fleet on loopback and compare the fleet router with round-robin."""
    try:
        profile = NodeProfile(slots=slots, prefill_tps=prefill_tps, decode_tps=decode_tps, cache_blocks=cache_blocks)
        traffic = TrafficConfig(system_prompts=system_prompts, system_tokens=system_tokens, turns=turns, think_s=think)
    except ValueError as exc:
        raise FleetSimError(str(exc)) from None
    config = FleetSimConfig(
        nodes=_node_counts(nodes),
        routers=tuple(part.strip() for part in routers.split(",") if part.strip()),
        profile=profile,
        traffic=traffic,
        users_per_node=users_per_node,
        duration_s=duration,
        warmup_s=warmup,
        heartbeat_s=heartbeat,
        seed=seed,
    )
    document = to_document(asyncio.run(run_fleet_sim(config, _Lines())))
    if as_json:
        print(json.dumps(document, indent=2))
        return
    console = console_for()
    print_table(HEADERS, rows(document))
    for line in summary_lines(document):
        console.print(line)
