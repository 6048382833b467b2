"""Batch lines over Redis Streams (jobs/redis_queue.py) against a real Redis-compatible server.

First the queue alone, as two nodes would use it (two queue objects, two consumers): each line
handed out once, a dead node's lines taken over after the idle time and not before while their
holder is alive, a late result from the node thought dead dropped. Then two real ember servers
on one Redis, one killed mid-batch.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from ember.jobs.records import Line, LineResult
from ember.jobs.redis_queue import RedisLineQueue

URL = "/v1/chat/completions"


def _lines(batch_id: str, count: int) -> list[Line]:
    deadline = time.time() + 3600
    return [Line(batch_id, i, f"req-{i}", "", URL, '{"model": "m"}', deadline) for i in range(count)]


def _result(line: Line, text: str = "ok", failed: bool = False) -> LineResult:
    return LineResult(line.batch_id, line.index, line.custom_id, failed, text)


@pytest_asyncio.fixture(loop_scope="function")
async def queues(redis_server) -> AsyncIterator[tuple[RedisLineQueue, RedisLineQueue]]:
    """Two nodes' queues on one Redis, under a key prefix of this test's own."""
    prefix = f"test:{secrets.token_hex(4)}:"
    first = RedisLineQueue(redis_server.url, min_idle=0.6, prefix=prefix)
    second = RedisLineQueue(redis_server.url, min_idle=0.6, prefix=prefix)
    yield first, second
    await first.aclose()
    await second.aclose()  # twice is harmless: a test may have closed it to play a dead node


async def test_each_line_goes_to_one_node_and_enqueue_is_idempotent(queues) -> None:
    a, b = queues
    lines = _lines("batch_1", 7)
    await a.enqueue("batch_1", lines)
    await a.enqueue("batch_1", lines)  # a restart enqueues again: nothing more waits
    assert (await b.counts("batch_1")).waiting == 7
    got_a = await a.claim("node-a", 4)
    got_b = await b.claim("node-b", 10)
    assert len(got_a) == 4 and len(got_b) == 3
    assert sorted(c.line.index for c in got_a + got_b) == list(range(7))
    assert await a.claim("node-a", 1) == []
    assert got_b[0].line == lines[got_b[0].line.index]
    counts = await a.counts("batch_1")
    assert (counts.waiting, counts.running) == (0, 7)
    for claim in got_a + got_b:
        assert await (a if claim in got_a else b).complete(claim, _result(claim.line, failed=claim.line.index == 2))
    counts = await b.counts("batch_1")
    assert (counts.waiting, counts.running, counts.completed, counts.failed) == (0, 0, 6, 1)
    results = await a.results("batch_1")
    assert [r.index for r in results] == list(range(7))
    assert [r.custom_id for r in results if r.failed] == ["req-2"]


async def test_a_silent_nodes_lines_are_taken_over_and_its_late_results_dropped(queues, redis_server) -> None:
    a, b = queues
    lines = _lines("batch_2", 4)
    await a.enqueue("batch_2", lines)
    held_by_b = await b.claim("node-b", 2)
    held_by_a = await a.claim("node-a", 1)
    # Before the idle time nothing moves, whatever the caller asks (0 is "a lone node's start").
    assert await a.reclaim(0) == 0
    # node-b dies (its connection and its background task stop); node-a stays alive: its queue
    # keeps its own claim fresh and, past the idle time, takes node-b's lines back to waiting.
    await b.aclose()
    taken = await a.claim("node-a", 10)
    deadline = time.monotonic() + 10
    while len(taken) < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        taken += await a.claim("node-a", 10)
    assert sorted(c.line.index for c in taken) == sorted([c.line.index for c in held_by_b] + [3])
    assert {c.attempts for c in taken if c.line.index != 3} == {1}
    for claim in taken + held_by_a:
        assert await a.complete(claim, _result(claim.line, "from a"))
    late = RedisLineQueue(redis_server.url, prefix=a.prefix)
    for claim in held_by_b:  # node-b comes back late: its answers are not kept
        assert not await late.complete(claim, _result(claim.line, "from b"))
    await late.aclose()
    results = await a.results("batch_2")
    assert [r.index for r in results] == [0, 1, 2, 3]
    assert {r.text for r in results} == {"from a"}
    counts = await a.counts("batch_2")
    assert (counts.unfinished, counts.completed) == (0, 4)


async def test_drop_keeps_claimed_lines_and_forget_removes_everything(queues) -> None:
    a, b = queues
    await a.enqueue("batch_3", _lines("batch_3", 5))
    await a.enqueue("batch_4", _lines("batch_4", 2))
    running = await b.claim("node-b", 2)
    assert {c.line.batch_id for c in running} == {"batch_3"}  # the oldest batch first
    assert await a.waiting() == 5
    assert await a.drop("batch_3") == 3
    assert await a.waiting() == 2
    assert await b.complete(running[0], _result(running[0].line))
    counts = await a.counts("batch_3")
    assert (counts.waiting, counts.running, counts.completed) == (0, 1, 1)
    await a.forget("batch_3")
    assert await a.counts("batch_3") == type(counts)()
    assert await a.results("batch_3") == []
    assert not await b.complete(running[1], _result(running[1].line))  # nothing recreated
    assert await a.results("batch_3") == []
    assert [c.line.batch_id for c in await b.claim("node-b", 5)] == ["batch_4", "batch_4"]
