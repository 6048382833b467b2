"""The fleet simulator: its simulated node speaks the OpenAI API (the real `openai` client reads
it), its cache and clock behave as described, and a tiny two-node run shows the mechanics: every
request completes, and the fleet router (ember.fleet.routing.FleetRouter, the one the gateway
uses) gets the prefix-cache hits that round-robin does not. Timings are not checked: this
machine is shared, the figures are for `ember bench fleet` on a quiet one.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import openai
import pytest

from ember.bench.fleet_report import rows, summary_lines, to_document
from ember.bench.fleet_sim import (
    CellResult,
    FleetSimConfig,
    FleetSimError,
    FleetSimRun,
    RoundRobin,
    routing_prompt,
    run_fleet_sim,
)
from ember.bench.fleet_traffic import TrafficConfig, User
from ember.bench.sim_node import BLOCK_TOKENS, NodeProfile, PrefixCache, SimNode, block_hashes, chat_tokens
from ember.cli.main import main
from ember.fleet.routing import FleetRouter

FAST = NodeProfile(slots=2, prefill_tps=3000.0, decode_tps=200.0, cache_blocks=512)


def test_block_hashes_chain_over_the_whole_prefix() -> None:
    a = [f"w{i}" for i in range(40)]
    b = ["other", *a[1:]]
    assert len(block_hashes(a)) == 40 // BLOCK_TOKENS  # a partial last block is not a block
    # Same second block, different first: no block matches, the chain covers what came before.
    assert not set(block_hashes(a)) & set(block_hashes(b))
    assert block_hashes(a + ["x"] * 30)[:2] == block_hashes(a)[:2]


def test_prefix_cache_is_an_lru_of_blocks() -> None:
    cache = PrefixCache(capacity=3)
    first, second = block_hashes([f"a{i}" for i in range(48)]), block_hashes([f"b{i}" for i in range(32)])
    cache.insert(first)
    assert cache.match(first) == 3
    cache.insert(second)  # over capacity: the least recently used go
    assert len(cache) == 3
    assert cache.match(second) == 2
    assert cache.match(first) == 0  # its head was evicted first, so nothing behind it matches


def test_traffic_repeats_per_seed_and_grows_the_history() -> None:
    config = TrafficConfig(system_prompts=2, system_tokens=20, turns=3, user_tokens=(5, 8), answer_tokens=(3, 4))
    one, two = User(3, 7, config).conversation(), User(3, 7, config).conversation()
    messages, _ = one.ask()
    assert (messages, _) == two.ask()
    one.answered("alpha beta gamma")
    nxt, max_tokens = one.ask()
    assert nxt[: len(messages)] == messages and 3 <= max_tokens <= 4
    # What the router keys on grows too: a turn's text starts with the previous turn's.
    assert routing_prompt(nxt).startswith(routing_prompt(messages))
    assert User(0, 7, config).think() == 0.0
    thinking = TrafficConfig(think_s=0.5)
    pauses = [User(1, 7, thinking).think() for _ in range(2)]
    assert pauses[0] == pauses[1] > 0  # drawn from the user's own generator: the same per seed


async def test_sim_node_speaks_openai_to_the_real_client() -> None:
    node = SimNode("n0", FAST, model="sim-model")
    await node.start()
    try:
        client = openai.AsyncOpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "system", "content": " ".join(["rule"] * 40)}, {"role": "user", "content": "hi there"}]
        stream = await client.chat.completions.create(
            model="sim-model", messages=messages, max_tokens=9, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(text.split()) == 9
        assert usage is not None and usage.completion_tokens == 9
        assert usage.prompt_tokens == len(chat_tokens(messages)) + 1  # and the <|assistant|> that opens the answer
        # The same conversation one turn on: its head is cached now (whole blocks only).
        follow = [*messages, {"role": "assistant", "content": text}, {"role": "user", "content": "more"}]
        answer = await client.chat.completions.create(model="sim-model", messages=follow, max_tokens=3)
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
        cached = answer.usage.prompt_tokens_details.cached_tokens or 0
        assert cached >= (usage.prompt_tokens + 9) // BLOCK_TOKENS * BLOCK_TOKENS - BLOCK_TOKENS
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(model="nope", messages=messages, max_tokens=3)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="sim-model", messages=[], max_tokens=3)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="sim-model", messages=messages, max_tokens=0)
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-model"]
        assert node.load().busy == 0 and node.load().queue == 0
    finally:
        await node.close()


def test_round_robin_takes_turns() -> None:
    from ember.fleet.types import NodeInfo

    nodes = [
        NodeInfo(node_id=f"n{i}", name=f"n{i}", kind="openai", base_url="", resident=frozenset({"m"})) for i in range(3)
    ]
    chooser = RoundRobin()
    firsts = [chooser.order("m", "p", nodes)[0].node_id for _ in range(6)]
    assert firsts == ["n0", "n1", "n2", "n0", "n1", "n2"]
    assert chooser.order("other", "p", nodes) == []


@pytest.mark.slow
async def test_a_tiny_fleet_run_completes_and_the_fleet_router_hits_the_cache() -> None:
    config = FleetSimConfig(
        nodes=(2,),
        profile=FAST,
        traffic=TrafficConfig(system_prompts=2, system_tokens=80, turns=6, user_tokens=(20, 40), answer_tokens=(8, 16)),
        users_per_node=2,
        duration_s=2.5,
        warmup_s=1.0,
        heartbeat_s=0.5,
    )
    started = time.perf_counter()
    run = await run_fleet_sim(config)
    assert time.perf_counter() - started < 30  # bounded: three cells of 3.5 s, and their set-up
    by_router = {cell.router: cell for cell in run.cells}
    assert set(by_router) == {"fleet", "round-robin"}
    for cell in [run.baseline, *run.cells]:
        assert cell.requests >= 4 and cell.errors == 0, cell
        assert cell.completion_tokens > 0 and cell.ttft_p50_s is not None
    fleet, rr = by_router["fleet"], by_router["round-robin"]
    assert fleet.cache_hit_rate is not None and rr.cache_hit_rate is not None
    # The fleet router keeps a conversation on the node holding its history; round-robin
    # alternates, so half its turns find the history elsewhere.
    assert fleet.cache_hit_rate > rr.cache_hit_rate + 0.05, (fleet, rr)
    document = to_document(run)
    assert [t["nodes"] for t in document["targets"]] == [2, 2]
    assert len(rows(document)) == 3 and summary_lines(document)
    json.dumps(document)  # every number is plain JSON


def test_the_fleet_router_is_the_one_the_gateway_uses() -> None:
    from ember.bench.fleet_sim import ROUTERS

    assert ROUTERS["fleet"] is FleetRouter


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"nodes": (0,)}, "node counts"), ({"routers": ("nope",)}, "unknown router"), ({"duration_s": 0}, "duration"),
     ({"heartbeat_s": -1}, "heartbeat")],
)
def test_bad_settings_are_one_clear_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(FleetSimError, match=message):
        FleetSimConfig(**kwargs)  # type: ignore[arg-type]


def test_the_cli_prints_json_and_refuses_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process (main() is what the `ember` script runs): a subprocess each would cost seconds.
    quick = ["--nodes", "2", "--routers", "fleet", "--duration", "1", "--warmup", "0.5", "--decode-tps", "200",
             "--system-tokens", "60", "--turns", "3"]
    main(["bench", "fleet", *quick, "--json"])
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert document["schema"] == "ember-bench-fleet/1"
    assert [c["router"] for c in document["cells"]] == ["fleet"] and document["errors"] == 0
    assert "N=2 fleet:" in err  # progress on stderr, stdout is the document alone
    for flags, message in ((["--nodes", "two"], "Error: --nodes takes integers"),
                           (["--routers", "random"], "Error: unknown router random"),
                           (["--slots", "0"], "Error: slots and tokens_per_chunk must be >= 1")):
        with pytest.raises(SystemExit) as exited:
            main(["bench", "fleet", *flags])
        assert exited.value.code == 1
        assert capsys.readouterr().err.startswith(message)


def _cell(router: str, nodes: int, tps: float, p90: float) -> CellResult:
    return CellResult(router=router, nodes=nodes, users=4 * nodes, duration_s=8.0, requests=10, errors=0,
                      error_kinds={}, completion_tokens=int(tps * 8), tokens_per_s=tps, ttft_p50_s=p90 / 2,
                      ttft_p90_s=p90, ttft_p99_s=p90, cache_hit_rate=0.9, moved_share=0.0, busiest_share=1.0,
                      driver_cpu=0.1, loop_lag_p99_ms=2.0)


def test_the_report_states_each_target_with_its_verdict() -> None:
    run = FleetSimRun(config=FleetSimConfig(nodes=(2, 4)), baseline=_cell("round-robin", 1, 100.0, 0.1),
                      cells=(_cell("fleet", 2, 190.0, 0.1), _cell("round-robin", 2, 150.0, 0.5),
                             _cell("fleet", 4, 360.0, 0.5), _cell("round-robin", 4, 300.0, 0.4)), wall_s=60.0)
    document = to_document(run)
    verdicts = [(t["nodes"], round(t["value"], 3), t["met"]) for t in document["targets"]]
    assert verdicts == [(2, 0.95, True), (2, 0.8, True), (4, 0.9, False), (4, -0.25, False)]
    table = rows(document)
    assert [row[3] for row in table] == ["1.00", "0.95", "0.75", "0.90", "0.75"]
    assert [row[6] for row in table] == ["-", "-80%", "-", "+25%", "-"]  # fleet's p90 against round-robin's
    lines = summary_lines(document)
    assert "N=4: TTFT p90 >= 60% lower than round-robin: -25% (NOT met)" in lines
    assert not any(line.startswith("warning") for line in lines)
    cells = (replace(run.cells[0], requests=3), *run.cells[1:])
    sparse = FleetSimRun(config=run.config, baseline=replace(run.baseline, requests=3), cells=cells, wall_s=60.0)
    warnings = [line for line in summary_lines(to_document(sparse)) if line.startswith("warning")]
    assert len(warnings) == 1 and "fewer than 10 requests measured in N=2 fleet:" in warnings[0]


async def test_a_full_queue_is_a_503_and_the_slot_comes_back() -> None:
    import asyncio

    node = SimNode("n1", NodeProfile(slots=1, max_queue=0, decode_tps=50.0), model="sim-model")
    await node.start()
    try:
        client = openai.AsyncOpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": "hello"}]
        first = asyncio.create_task(client.chat.completions.create(model="sim-model", messages=messages, max_tokens=10))
        for _ in range(500):  # until the first holds the one slot (bounded: 5 s)
            if node.load().busy:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(openai.InternalServerError) as refused:
            await client.chat.completions.create(model="sim-model", messages=messages, max_tokens=1)
        assert refused.value.status_code == 503
        assert (await first).usage is not None
        assert node.load().busy == 0 and node.counters.rejected == 1
        again = await client.chat.completions.create(model="sim-model", messages=messages, max_tokens=1)
        assert again.choices[0].message.content
    finally:
        await node.close()
