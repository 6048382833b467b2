"""The Ollama API, driven by the official ollama client against the real server and model."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 32}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def test_root_version_health(server) -> None:
    assert httpx.get(server.url("/")).text == "ember is running"
    assert httpx.get(server.url("/health")).json() == {"status": "ok"}
    assert httpx.get(server.url("/api/version")).json()["version"]


def test_list_shows_default_model(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert MODEL in models
    entry = models[MODEL]
    assert entry.size > 90_000_000
    assert entry.details.family == "llama"
    assert entry.details.quantization_level == "Q4_1"
    assert entry.details.format == "gguf"


def test_show(client: ollama.Client) -> None:
    info = client.show(MODEL)
    assert "im_start" in info.template
    assert info.details.parameter_size.endswith("M")
    assert info.modelinfo["general.architecture"] == "llama"
    assert info.modelinfo["llama.context_length"] == 8192
    assert "completion" in info.capabilities


def test_chat(client: ollama.Client) -> None:
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                        options=GREEDY)
    assert "Paris" in reply.message.content
    assert reply.message.role == "assistant"
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.prompt_eval_count > 10
    assert 0 < reply.eval_count <= 32
    assert reply.eval_duration > 0 and reply.total_duration >= reply.eval_duration


def test_chat_stream_ends_with_final_fields(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat(model=MODEL, messages=messages, options=GREEDY)
    parts = list(client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count
    assert parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_generate_uses_template_and_raw_does_not(client: ollama.Client) -> None:
    templated = client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in templated.response
    raw = client.generate(model=MODEL, prompt="The capital of France is", raw=True,
                          options={"temperature": 0, "num_predict": 6})
    assert raw.prompt_eval_count < templated.prompt_eval_count
    assert raw.eval_count <= 6


def test_generate_stop_and_seed(client: ollama.Client) -> None:
    prompt = "Count from one to ten in words."
    free = client.generate(model=MODEL, prompt=prompt, options=GREEDY).response
    stop = free[len(free) // 2: len(free) // 2 + 3]
    stopped = client.generate(model=MODEL, prompt=prompt, options={**GREEDY, "stop": [stop]})
    assert stopped.response == free[: free.find(stop)]
    assert stopped.done_reason == "stop"
    sampled = {"temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 7, "num_predict": 16,
               "repeat_penalty": 1.2}
    a = client.generate(model=MODEL, prompt="Invent a word.", options=sampled).response
    b = client.generate(model=MODEL, prompt="Invent a word.", options=sampled).response
    assert a == b


def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    result = client.embed(model=MODEL, input=["hello", "world"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 576
    assert abs(sum(x * x for x in result.embeddings[0]) - 1.0) < 1e-3
    single = client.embeddings(model=MODEL, prompt="hello")
    assert max(abs(a - b) for a, b in zip(single.embedding, result.embeddings[0])) < 1e-4


def test_ps_load_and_unload(server, client: ollama.Client) -> None:
    loaded = client.generate(model=MODEL, prompt="", keep_alive="5m")  # empty prompt: just load
    assert loaded.done_reason == "load" and loaded.total_duration >= loaded.load_duration
    running = {m.model: m for m in client.ps().models}
    assert MODEL in running
    assert running[MODEL].size > 90_000_000
    unloaded = httpx.post(server.url("/api/generate"), json={"model": MODEL, "keep_alive": 0}).json()
    assert unloaded["done_reason"] == "unload"
    assert MODEL not in [m.model for m in client.ps().models]


def test_copy_and_delete(client: ollama.Client) -> None:
    client.copy(MODEL, "my-copy:v1")
    assert "my-copy:v1" in [m.model for m in client.list().models]
    reply = client.chat(model="my-copy:v1", messages=[{"role": "user", "content": "hi"}],
                        options={"num_predict": 4})
    assert reply.done
    client.delete("my-copy:v1")
    names = [m.model for m in client.list().models]
    assert "my-copy:v1" not in names and MODEL in names  # the shared blob stays for the original
    with pytest.raises(ollama.ResponseError) as info:
        client.delete("my-copy:v1")
    assert info.value.status_code == 404


def test_pull_existing_model_streams_success(client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses[-1] == "success"
    assert client.pull(MODEL).status == "success"


def test_pull_unknown_name_is_404_naming_catalog(server) -> None:
    response = httpx.post(server.url("/api/pull"), json={"model": "no-such-model:7b"})
    assert response.status_code == 404
    assert "catalog" in response.json()["error"]


def test_unknown_model_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert "not found" in info.value.error


def test_stream_is_ndjson(server) -> None:
    with httpx.stream("POST", server.url("/api/generate"), timeout=60,
                      json={"model": MODEL, "prompt": "hi", "options": {"num_predict": 5}}) as response:
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True and "eval_count" in lines[-1]
    assert all("created_at" in line and line["model"] == MODEL for line in lines)
