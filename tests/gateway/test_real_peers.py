"""Each remote provider kind against a real server ember did not write (or, for `ollama`, a second
real ember), with the expected values asked of that server directly.

- kind `openai` -> llama-cpp-python's own OpenAI-compatible server (`python -m llama_cpp.server`)
  on the same GGUF file, behind an API key;
- kind `ollama` -> a second ember (the session's `server`).

At temperature 0 both servers decode greedily, so the text through ember must equal the text the
upstream gives when asked directly with the same max_tokens and seed. What ember adds or maps
(headers, usage, finish_reason, errors, translation between protocols) is checked against what
the upstream itself answered, never against constants of ember's own fake upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
from tests.conftest import DEFAULT_MODEL, ServerHandle, free_port, start_server, stop_process
from tests.gateway.conftest import write_config

pytestmark = pytest.mark.slow

LLAMA_KEY = "sk-llama-test"
ALIAS = "smollm2"  # the model name llama_cpp.server knows the file by
MESSAGES: Any = [{"role": "user", "content": "Name a colour."}]
MAX_TOKENS = 8
SEED = 7


@dataclass
class LlamaServer:
    base_url: str  # the /v1 base
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=LLAMA_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-peer-logs")


@pytest.fixture(scope="module")
def llama(model_path: Path, logs: Path) -> Iterator[LlamaServer]:
    """llama_cpp.server on a free loopback port, one thread, a small context, an API key."""
    pytest.importorskip("sse_starlette", reason="llama-cpp-python[server] is not installed")
    pytest.importorskip("starlette_context", reason="llama-cpp-python[server] is not installed")
    port = free_port()
    log_path = logs / f"llama-server-{port}.log"
    # Its settings are pydantic-settings: keep stray environment variables (HOST, PORT, MODEL...)
    # from overriding the flags.
    env = {k: v for k, v in os.environ.items() if k.upper() not in {"HOST", "PORT", "MODEL", "CONFIG_FILE"}}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", ALIAS,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1",
             "--n_threads_batch", "1", "--api_key", LLAMA_KEY],
            env=env, stdout=log_file, stderr=subprocess.STDOUT)
    handle = LlamaServer(base_url=f"http://127.0.0.1:{port}/v1", process=process, log_path=log_path)
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {process.returncode}:\n{handle.log()}")
            try:
                response = httpx.get(handle.base_url + "/models", timeout=1,
                                     headers={"Authorization": f"Bearer {LLAMA_KEY}"})
                if response.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer /v1/models:\n{handle.log()}")
            time.sleep(0.2)
        yield handle
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def gateway(llama: LlamaServer, server: ServerHandle, logs: Path) -> Iterator[ServerHandle]:
    config = write_config(logs, f"""
[[providers]]
name = "llama"
kind = "openai"
base_url = "{llama.base_url}"
api_key_env = "EMBER_TEST_LLAMA_KEY"

[[providers]]
name = "nokey"
kind = "openai"
base_url = "{llama.base_url}"

[[providers]]
name = "peer"
kind = "ollama"
base_url = "{server.base_url}"

[[routes]]
model = "llama-chat"
targets = ["llama/{ALIAS}"]

[[routes]]
model = "nokey-then-llama"
targets = ["nokey/{ALIAS}", "llama/{ALIAS}"]

[[routes]]
model = "peer-chat"
targets = ["peer/{DEFAULT_MODEL}"]
""")
    home = logs / "gateway-home"
    home.mkdir()
    handle = start_server(home, logs, EMBER_CONFIG=str(config), EMBER_TEST_LLAMA_KEY=LLAMA_KEY)
    try:
        yield handle
    finally:
        handle.stop()


def via(gateway: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url("/v1"), api_key="unused", max_retries=0, timeout=120)


# -- kind openai: llama_cpp.server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_direct(llama: LlamaServer) -> Any:
    """What llama_cpp.server answers by itself, not streamed, at temperature 0."""
    return llama.client().chat.completions.create(model=ALIAS, messages=MESSAGES, max_tokens=MAX_TOKENS,
                                                  temperature=0, seed=SEED)


def test_openai_kind_answers_as_llama_cpp_server_does(gateway: ServerHandle, llama_direct: Any) -> None:
    expected = llama_direct.choices[0]
    assert expected.message.content  # the comparison below means something

    raw = via(gateway).chat.completions.with_raw_response.create(
        model="llama-chat", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    reply = raw.parse()
    assert raw.headers["x-ember-provider"] == "llama"  # the key from api_key_env got it past llama's auth
    assert raw.headers["x-ember-attempts"] == "1"
    assert reply.choices[0].message.content == expected.message.content
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.model == llama_direct.model == ALIAS
    # ember streams from the upstream, and llama_cpp.server's streams carry no usage (it ignores
    # stream_options): ember counts the completion from the chunks, about one a token, and has no
    # prompt count to pass on.
    assert reply.usage is not None and llama_direct.usage is not None
    assert 0 < reply.usage.completion_tokens <= llama_direct.usage.completion_tokens


def test_openai_kind_streams_the_same_text(gateway: ServerHandle, llama_direct: Any) -> None:
    expected = llama_direct.choices[0]
    with via(gateway).chat.completions.with_streaming_response.create(
            model="llama-chat", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, seed=SEED,
            stream=True, stream_options={"include_usage": True}) as response:
        assert response.headers["x-ember-provider"] == "llama"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [expected.finish_reason]
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= llama_direct.usage.completion_tokens


def test_ollama_client_through_ember_to_llama_cpp_server(gateway: ServerHandle, llama_direct: Any) -> None:
    expected = llama_direct.choices[0]
    client = ollama.Client(host=gateway.base_url, timeout=120)
    options = {"temperature": 0, "num_predict": MAX_TOKENS, "seed": SEED}
    reply = client.chat(model="llama-chat", messages=MESSAGES, options=options)
    assert reply.message.content == expected.message.content
    assert reply.done_reason == expected.finish_reason
    parts = list(client.chat(model=f"llama/{ALIAS}", messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == expected.message.content
    assert parts[-1].done and parts[-1].done_reason == expected.finish_reason
    assert parts[-1].eval_count is not None and 0 < parts[-1].eval_count <= MAX_TOKENS


def test_openai_kind_maps_the_upstreams_errors(gateway: ServerHandle, llama: LlamaServer,
                                              llama_direct: Any) -> None:
    # Without the key llama_cpp.server answers 401: not the client's mistake, so a 502 that
    # carries the upstream's status and its words.
    unauthorized = httpx.post(llama.base_url + "/chat/completions", timeout=10,
                              json={"model": ALIAS, "messages": MESSAGES, "max_tokens": 2})
    assert unauthorized.status_code == 401
    detail = unauthorized.json()["detail"]
    with pytest.raises(openai.APIStatusError) as caught:
        via(gateway).chat.completions.create(model=f"nokey/{ALIAS}", messages=MESSAGES, max_tokens=2)
    assert caught.value.status_code == 502
    assert f"upstream answered 401: {detail}" in caught.value.body["message"]  # type: ignore[index]

    # In a route, that target is passed over and the next one answers.
    raw = via(gateway).chat.completions.with_raw_response.create(
        model="nokey-then-llama", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    assert (raw.headers["x-ember-provider"], raw.headers["x-ember-attempts"]) == ("llama", "2")
    assert raw.parse().choices[0].message.content == llama_direct.choices[0].message.content

    # A prompt over llama's 512-token context: streamed (as ember always asks), llama_cpp.server
    # answers 200 and then ends the body without an event (its 400 exists only unstreamed).
    long_messages = [{"role": "user", "content": "word " * 700}]
    with httpx.stream("POST", llama.base_url + "/chat/completions", timeout=60,
                      headers={"Authorization": f"Bearer {LLAMA_KEY}"},
                      json={"model": ALIAS, "messages": long_messages, "max_tokens": 2, "stream": True}) as direct:
        assert direct.status_code == 200 and not [line for line in direct.iter_lines() if line.strip()]
    # ember sees no first token: a 502 that says so, rather than a 200 with an empty answer.
    with pytest.raises(openai.APIStatusError) as caught:
        via(gateway).chat.completions.create(model="llama-chat", messages=long_messages, max_tokens=2)
    assert caught.value.status_code == 502
    assert "ended the stream before it was complete" in caught.value.body["message"]  # type: ignore[index]


def test_a_developer_message_reaches_llama_cpp_server_as_a_system_message(
        gateway: ServerHandle, llama: LlamaServer) -> None:
    # OpenAI's newer name for the system role; llama_cpp.server (like most servers) knows only
    # "system" and refuses the other (a 500 from its validation).
    system = [{"role": "system", "content": "Answer in one word."}, *MESSAGES]
    expected = llama.client().chat.completions.create(model=ALIAS, messages=system, max_tokens=MAX_TOKENS,
                                                      temperature=0, seed=SEED)
    developer = [{"role": "developer", "content": "Answer in one word."}, *MESSAGES]
    reply = via(gateway).chat.completions.create(model="llama-chat", messages=developer,  # type: ignore[arg-type]
                                                 max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    assert reply.choices[0].message.content == expected.choices[0].message.content

    # The Ollama kind sends it the same way (Ollama's templates know "system", not "developer").
    from ember.gateway.remote_ollama import request_body
    from ember.services.types import ChatMessage, TextRequest

    body = request_body(TextRequest(model="m", messages=[ChatMessage("developer", "be brief")]), "m")
    assert body["messages"] == [{"role": "system", "content": "be brief"}]


# -- kind ollama: a second ember ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer_direct(server: ServerHandle) -> Any:
    """What the second ember answers by itself over /api/chat, at temperature 0."""
    return ollama.Client(host=server.base_url, timeout=120).chat(
        model=DEFAULT_MODEL, messages=MESSAGES,
        options={"temperature": 0, "num_predict": MAX_TOKENS, "seed": SEED})


def test_ollama_kind_answers_as_the_peer_does(gateway: ServerHandle, peer_direct: Any) -> None:
    assert peer_direct.message.content
    client = ollama.Client(host=gateway.base_url, timeout=120)
    options = {"temperature": 0, "num_predict": MAX_TOKENS, "seed": SEED}
    reply = client.chat(model="peer-chat", messages=MESSAGES, options=options)
    assert reply.message.content == peer_direct.message.content
    assert reply.done_reason == peer_direct.done_reason
    assert (reply.prompt_eval_count, reply.eval_count) == (peer_direct.prompt_eval_count, peer_direct.eval_count)

    parts = list(client.chat(model="peer-chat", messages=MESSAGES, options=options, stream=True))
    assert "".join(p.message.content or "" for p in parts) == peer_direct.message.content
    final = parts[-1]
    assert final.done and final.done_reason == peer_direct.done_reason
    assert (final.prompt_eval_count, final.eval_count) == (peer_direct.prompt_eval_count, peer_direct.eval_count)

    # The OpenAI client on the same route: the peer's text and counts, in OpenAI's shape.
    raw = via(gateway).chat.completions.with_raw_response.create(
        model="peer-chat", messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0, seed=SEED)
    answer = raw.parse()
    assert raw.headers["x-ember-provider"] == "peer"
    assert answer.choices[0].message.content == peer_direct.message.content
    assert answer.choices[0].finish_reason == peer_direct.done_reason
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        peer_direct.prompt_eval_count, peer_direct.eval_count)


def test_ollama_kind_embeddings_are_the_peers(gateway: ServerHandle, server: ServerHandle) -> None:
    inputs = ["a red apple", "the sea"]
    direct = ollama.Client(host=server.base_url, timeout=120).embed(model=DEFAULT_MODEL, input=inputs)
    through = ollama.Client(host=gateway.base_url, timeout=120).embed(model=f"peer/{DEFAULT_MODEL}", input=inputs)
    assert len(through.embeddings) == 2
    for got, want in zip(through.embeddings, direct.embeddings, strict=True):
        assert list(got) == pytest.approx(list(want), abs=1e-5)
    assert through.prompt_eval_count == direct.prompt_eval_count

    openai_side = via(gateway).embeddings.create(model=f"peer/{DEFAULT_MODEL}", input=inputs, dimensions=16)
    direct_short = httpx.post(server.url("/api/embed"), timeout=120, json={
        "model": DEFAULT_MODEL, "input": inputs, "dimensions": 16}).json()
    for got, want in zip(openai_side.data, direct_short["embeddings"], strict=True):
        assert list(got.embedding) == pytest.approx(want, abs=1e-5)


def test_ollama_kind_passes_on_the_peers_missing_model_error(gateway: ServerHandle, server: ServerHandle) -> None:
    missing = "not-pulled:1b"
    direct = httpx.post(server.url("/api/chat"), timeout=30, json={
        "model": missing, "messages": MESSAGES, "stream": False})
    assert direct.status_code == 404
    peer_message = direct.json()["error"]

    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=gateway.base_url, timeout=60).chat(model=f"peer/{missing}", messages=MESSAGES)
    # Not this gateway's model: the peer's 404 is an upstream failure (a route would fall over to
    # its next target), and the client is told what the peer said.
    assert caught.value.status_code == 502
    assert "upstream answered 404" in caught.value.error and peer_message in caught.value.error
