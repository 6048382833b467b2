"""Batch lines over Redis Streams (jobs/redis_queue.py) against a real Redis-compatible server.

First the queue alone, as two nodes would use it (two queue objects, two consumers): each line
handed out once, a dead node's lines taken over after the idle time and not before while their
holder is alive, a late result from the node thought dead dropped. Then two real ember servers
on one Redis, one killed mid-batch.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from ember.jobs.records import Line, LineResult
from ember.jobs.redis_queue import RedisLineQueue
from tests.conftest import DEFAULT_MODEL as MODEL
from tests.conftest import ServerHandle, start_server
from tests.guard import copy_home

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


# -- two real nodes ---------------------------------------------------------------------------------


def _node_holds(redis_url: str, batch_id: str, pid: int) -> int:
    """Lines of the batch pending in the consumer of the ember process `pid` (runner names carry it)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        consumers = client.xinfo_consumers(f"ember:batch:{{{batch_id}}}:lines", "ember")
    except redis.ResponseError:
        return 0  # not enqueued yet
    finally:
        client.close()
    return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in c["name"].decode())


def _chat_lines(count: int) -> bytes:
    lines = []
    for i in range(count):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i + 3}."}], "max_tokens": 6,
                "temperature": 0}
        lines.append(json.dumps({"custom_id": f"line-{i}", "method": "POST", "url": URL, "body": body}))
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.slow
def test_two_nodes_share_a_batch_and_one_killed_mid_batch_loses_nothing(
    model_home: Path, tmp_path: Path, redis_server
) -> None:
    env = {"EMBER_REDIS_URL": redis_server.url, "EMBER_BATCH_CLAIM_IDLE": "2s", "EMBER_NUM_PARALLEL": "2"}

    def node(name: str) -> ServerHandle:
        handle = start_server(copy_home(model_home, tmp_path / name), tmp_path, **env)
        # The model loaded before the batch, so both nodes take lines at once.
        httpx.post(handle.url("/v1/chat/completions"), timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}).raise_for_status()
        return handle

    with ThreadPoolExecutor(2) as pool:  # the two starts overlap
        starting = [pool.submit(node, "a"), pool.submit(node, "b")]
    if any(future.exception() for future in starting):
        for future in starting:
            if future.exception() is None:
                future.result().stop()
        raise next(f.exception() for f in starting if f.exception())  # type: ignore[misc]
    creator, other = (future.result() for future in starting)
    try:
        client = openai.OpenAI(base_url=creator.url("/v1"), api_key="none", max_retries=0)
        count = 8
        upload = client.files.create(file=("lines.jsonl", _chat_lines(count)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint=URL, completion_window="24h")

        # The other node works lines of a batch it does not hold: it has no record of it.
        assert httpx.get(other.url(f"/v1/batches/{batch.id}"), timeout=10).status_code == 404
        deadline = time.monotonic() + 120
        while _node_holds(redis_server.url, batch.id, other.process.pid) == 0:
            assert time.monotonic() < deadline, "the second node never took a line"
            assert client.batches.retrieve(batch.id).status in ("validating", "in_progress")
            time.sleep(0.05)
        other.process.send_signal(signal.SIGKILL)  # that pid only: the node dies holding lines
        other.process.wait(10)

        deadline = time.monotonic() + 240
        while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "expired"):
            assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
            time.sleep(0.2)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
            count, count, 0)
        assert batch.output_file_id is not None and batch.error_file_id is None
        output = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]
        assert [line["custom_id"] for line in output] == [f"line-{i}" for i in range(count)]  # each once, in order
        assert all(line["response"]["status_code"] == 200 and line["error"] is None for line in output)
        assert "took over" in creator.log()  # the dead node's lines were reclaimed, not lost
    finally:
        creator.stop()
        other.stop()
