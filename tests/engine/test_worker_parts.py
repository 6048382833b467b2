"""The model-free parts of the worker engine: prefix matching, text merging, exit reasons."""

from __future__ import annotations

import asyncio
import socket

from hypothesis import given
from hypothesis import strategies as st

from ember.engine.batching import common_prefix
from ember.engine.ipc import Step, Update, connection_from_fd
from ember.engine.process_engine import _describe_exit, _merge_ready
from ember.engine.types import GenerationStats
from ember.engine.worker import Outbox

STATS = GenerationStats(prompt_tokens=3, completion_tokens=2, prompt_eval_seconds=0.1, eval_seconds=0.2)


@given(st.lists(st.integers(0, 3), max_size=700), st.lists(st.integers(0, 3), max_size=700))
def test_common_prefix_is_the_length_of_the_shared_start(a: list[int], b: list[int]) -> None:
    n = common_prefix(a, b)
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]


def test_common_prefix_of_long_equal_runs() -> None:
    tokens = list(range(1000))
    assert common_prefix(tokens, tokens + [5]) == 1000
    assert common_prefix(tokens, tokens[:600] + [-1]) == 600


def test_outbox_merges_text_per_request_until_sent() -> None:
    ours, theirs = socket.socketpair()
    sender, receiver = connection_from_fd(ours.detach()), connection_from_fd(theirs.detach())
    outbox = Outbox()
    outbox.add([Update(rid=1, text="Hel"), Update(rid=2, text="a")])
    outbox.add([Update(rid=1, text="lo"), Update(rid=2, text="b", finish="stop", stats=STATS)])
    outbox.flush(sender, wait=True)
    assert not outbox
    message = receiver.recv()
    assert isinstance(message, Step)
    assert message.updates == [Update(rid=1, text="Hello"), Update(rid=2, text="ab", finish="stop", stats=STATS)]
    sender.close()
    receiver.close()


async def test_queued_updates_fold_into_one_event() -> None:
    pending: asyncio.Queue[object] = asyncio.Queue()
    for text in ("b", "c"):
        pending.put_nowait(Update(rid=7, text=text))
    pending.put_nowait(Update(rid=7, text="d", finish="length", stats=STATS))
    pending.put_nowait(Update(rid=7, text="never merged past the end"))
    merged = _merge_ready(Update(rid=7, text="a"), pending)  # type: ignore[arg-type]
    assert merged == Update(rid=7, text="abcd", finish="length", stats=STATS)
    assert pending.qsize() == 1


def test_exit_reasons_read_well() -> None:
    assert _describe_exit(-9, None) == "killed by signal 9 (SIGKILL)"
    assert _describe_exit(-11, None) == "killed by signal 11 (SIGSEGV)"
    assert _describe_exit(1, None) == "exit code 1"
    assert _describe_exit(1, "Traceback...\nMemoryError: out of memory\n") == "error: MemoryError: out of memory"
