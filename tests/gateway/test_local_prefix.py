"""`local/NAME` reaches this node's own model NAME, as `provider/model` reaches any provider."""

from __future__ import annotations

import httpx
import ollama
import openai
import pytest

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def test_openai_client_reaches_the_local_provider(oai: openai.OpenAI) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model=f"local/{MODEL}", messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0)
    assert raw.headers["x-ember-provider"] == "local"
    assert raw.parse().choices[0].finish_reason in ("stop", "length")
    embedded = oai.embeddings.create(model=f"local/{MODEL}", input="hello")
    assert len(embedded.data[0].embedding) > 100
    with pytest.raises(openai.NotFoundError) as exc:
        oai.chat.completions.create(model="local/nope", messages=[{"role": "user", "content": "Hi"}])
    body: dict[str, str] = exc.value.body  # type: ignore[assignment]
    assert body["code"] == "model_not_found" and "model 'nope:latest' not found" in body["message"]


def test_ollama_client_reaches_the_local_provider(oll: ollama.Client, server) -> None:
    reply = httpx.post(server.url("/api/chat"), timeout=120, json={
        "model": f"local/{MODEL}", "stream": False, "options": {"num_predict": 2, "temperature": 0},
        "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-ember-provider"] == "local"
    streamed = list(oll.generate(model=f"local/{MODEL}", prompt="Hi", stream=True, options={"num_predict": 2}))
    assert streamed[-1].done
    assert oll.generate(model=f"local/{MODEL}").done_reason == "load"  # no prompt: loads the model
    assert len(oll.embed(model=f"local/{MODEL}", input="hello").embeddings) == 1
    with pytest.raises(ollama.ResponseError) as exc:
        oll.chat(model="local/nope", messages=[{"role": "user", "content": "Hi"}])
    assert exc.value.status_code == 404 and "model 'nope:latest' not found" in exc.value.error
