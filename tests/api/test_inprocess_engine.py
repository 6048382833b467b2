"""EMBER_ENGINE=inprocess through the real server: llama-cpp-python's Llama inside the server
process answers chat (streamed and not), generate and embeddings for the real openai and
ollama clients, and no worker process is ever started."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server

pytestmark = pytest.mark.slow  # a server of its own, a dozen generations

MODEL = DEFAULT_MODEL
GREEDY = {"temperature": 0, "num_predict": 8}
MESSAGES = [{"role": "user", "content": "Name a colour."}]


def descendants(pid: int) -> dict[int, str]:
    """{pid: command line} of every live descendant of pid, read from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        # The command name is in parentheses and may hold spaces: the ppid follows the last ")".
        parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in found:
                try:
                    found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                todo.append(child)
    return found


def workers(server: ServerHandle) -> list[str]:
    return [cmd for cmd in descendants(server.process.pid).values() if "ember.engine.worker" in cmd]


@pytest.fixture(scope="module")
def inprocess(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("inprocess")
    # Its own home: the session servers' state (usage, audit chain) stays theirs.
    home = base / "home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    handle = start_server(home, base, EMBER_ENGINE="inprocess", EMBER_NUM_CTX="1024")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def oai(inprocess: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=inprocess.url("/v1"), api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oll(inprocess: ServerHandle) -> ollama.Client:
    return ollama.Client(host=inprocess.base_url, timeout=120)


def test_openai_chat_stream_and_not(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    text = whole.choices[0].message.content
    assert text and text.strip()
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert 0 < whole.usage.completion_tokens <= 8 and whole.usage.prompt_tokens > 0

    chunks = list(oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The in-process engine re-evaluates the whole prompt each time: greedy answers repeat exactly.
    assert streamed == text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_ollama_chat_stream_and_not(oll: ollama.Client) -> None:
    whole = oll.chat(model=MODEL, messages=MESSAGES, options=GREEDY)
    assert whole.done and whole.message.content.strip()
    parts = list(oll.chat(model=MODEL, messages=MESSAGES, options=GREEDY, stream=True))
    assert parts[-1].done and parts[-1].eval_count == whole.eval_count
    assert "".join(p.message.content for p in parts) == whole.message.content


def test_ollama_generate(oll: ollama.Client) -> None:
    result = oll.generate(model=MODEL, prompt="The sky is", options=GREEDY)
    assert result.done and result.response.strip()
    assert 0 < result.eval_count <= 8 and result.prompt_eval_count > 0
    raw = oll.generate(model=MODEL, prompt="1, 2, 3,", raw=True, options=GREEDY, stream=True)
    assert "".join(p.response for p in raw).strip()


def test_embeddings_both_apis(oai: openai.OpenAI, oll: ollama.Client) -> None:
    data = oai.embeddings.create(model=MODEL, input=["I love my cat", "I adore my kitten", "Tax deadlines"]).data
    a, b, c = (d.embedding for d in data)
    assert len(a) == 576 and all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in (a, b, c))
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    assert dot(a, b) > dot(a, c)
    again = oll.embed(model=MODEL, input="I love my cat").embeddings[0]
    assert max(abs(x - y) for x, y in zip(again, a, strict=True)) < 1e-4
    short = oai.embeddings.create(model=MODEL, input="I love my cat", dimensions=32).data[0].embedding
    assert len(short) == 32


def test_one_slot_and_no_worker_process(inprocess: ServerHandle, oll: ollama.Client) -> None:
    oll.generate(model=MODEL, prompt="Hi", options={"num_predict": 2})  # loaded, whatever ran before
    (model,) = httpx.get(inprocess.url("/api/ps"), timeout=10).json()["models"]
    # EMBER_NUM_PARALLEL is 4 by default; the Llama object serves one request at a time.
    assert model["name"] == MODEL and model["slots"] == 1 and model["context_length"] == 1024
    assert workers(inprocess) == []
    assert descendants(inprocess.process.pid) == {}


def test_the_process_engine_does_start_workers(server: ServerHandle) -> None:
    """The check above can see workers: the default engine's server has one."""
    httpx.post(server.url("/api/generate"), json={"model": MODEL}, timeout=120).raise_for_status()
    assert workers(server)
