"""`dimensions` on a local model's embeddings, as OpenAI's text-embedding-3 models define it:
the leading `dimensions` components of the full vector, renormalised to unit length (the full
vectors are unit length too); more dimensions than the model has is a 400."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import openai
import pytest

MODEL = "smollm2:135m"
FULL = 576  # SmolLM2-135M's embedding length
TEXTS = ["the cat sat on the mat", "quarterly tax filing deadlines"]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def full(client: openai.OpenAI) -> list[list[float]]:
    return [d.embedding for d in client.embeddings.create(model=MODEL, input=TEXTS).data]


def norm(vector: list[float]) -> float:
    return math.sqrt(sum(x * x for x in vector))


def leading(vector: list[float], n: int) -> list[float]:
    head = vector[:n]
    return [x / norm(head) for x in head]


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_full_vectors_are_unit_length(full: list[list[float]]) -> None:
    assert [len(v) for v in full] == [FULL, FULL]
    assert all(abs(norm(v) - 1.0) < 1e-3 for v in full)


@pytest.mark.parametrize("dimensions", [1, 64, 575, FULL])
def test_shortened_is_the_renormalised_head(client: openai.OpenAI, full: list[list[float]], dimensions: int) -> None:
    result = client.embeddings.create(model=MODEL, input=TEXTS, dimensions=dimensions)
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [dimensions, dimensions]
    for vector, whole in zip(vectors, full, strict=True):
        assert abs(norm(vector) - 1.0) < 1e-5
        assert close(vector, leading(whole, dimensions))
    assert result.usage.prompt_tokens > 0


def test_shortened_base64(client: openai.OpenAI, full: list[list[float]]) -> None:
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=TEXTS[0], dimensions=64,
                                                     encoding_format="base64")
    decoded = list(struct.unpack("<64f", base64.b64decode(raw.http_response.json()["data"][0]["embedding"])))
    assert close(decoded, leading(full[0], 64))


def test_ollama_embed_takes_dimensions(server, full: list[list[float]]) -> None:
    body = httpx.post(server.url("/api/embed"), timeout=120,
                      json={"model": MODEL, "input": TEXTS, "dimensions": 64}).json()
    assert [len(v) for v in body["embeddings"]] == [64, 64]
    assert all(close(v, leading(w, 64)) for v, w in zip(body["embeddings"], full, strict=True))


@pytest.mark.parametrize("dimensions", [FULL + 1, 100_000])
def test_more_dimensions_than_the_model_has_is_400(client: openai.OpenAI, dimensions: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=TEXTS, dimensions=dimensions)
    error = info.value.body
    assert isinstance(error, dict) and error.get("param") == "dimensions", error
    assert str(dimensions) in error["message"] and str(FULL) in error["message"], error


def test_more_dimensions_than_the_model_has_is_400_on_ollama(server) -> None:
    response = httpx.post(server.url("/api/embed"), timeout=120,
                          json={"model": MODEL, "input": TEXTS, "dimensions": FULL + 1})
    assert response.status_code == 400, response.text
    assert str(FULL) in response.json()["error"]


@pytest.mark.parametrize("dimensions", [0, -3])
def test_dimensions_below_one_is_400(client: openai.OpenAI, dimensions: int) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=TEXTS, dimensions=dimensions)
    assert "dimensions" in str(info.value)
