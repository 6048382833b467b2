"""Structured output on the local model: every answer parses and validates against its schema.

The real openai SDK's `chat.completions.parse(response_format=Model)` and the real ollama
client's `format=Model.model_json_schema()`, over several prompts, seeds and temperatures; a
schema ember cannot enforce is a 400 naming the keyword.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import jsonschema
import ollama
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "smollm2:135m"


class Address(BaseModel):
    city: str = Field(min_length=1, max_length=20)
    zip_code: int = Field(ge=1000, le=99999)


class Person(BaseModel):
    name: str = Field(min_length=1, max_length=24)
    age: int = Field(ge=0, le=120)
    mood: Literal["happy", "sad", "calm"]
    score: float = Field(ge=0, le=1)
    tags: list[str] = Field(min_length=1, max_length=3)
    home: Address
    nickname: str | None = None


PROMPTS = ["Describe a person called Ada.", "Invent a character for a story.", "Who lives in Oslo?"]


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused")


@pytest.mark.parametrize(
    ("prompt", "temperature", "seed"), [(PROMPTS[0], 0.0, 1), (PROMPTS[1], 0.8, 2), (PROMPTS[2], 1.5, 3)]
)
def test_openai_parse_returns_a_valid_object(client: openai.OpenAI, prompt: str, temperature: float, seed: int) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        response_format=Person,
        temperature=temperature,
        seed=seed,
        max_tokens=300,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"  # whitespace is bounded: the object closes before the limit
    assert isinstance(choice.message.parsed, Person)
    jsonschema.validate(json.loads(choice.message.content or ""), Person.model_json_schema())


def test_json_object_mode_gives_an_object(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List three colours."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=200,
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_streamed_structured_output_equals_the_whole_answer(client: openai.OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "temperature": 0,
        "max_tokens": 300,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": Person.model_json_schema()},
        },
    }
    whole = client.chat.completions.create(**ask).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(**ask, stream=True) if c.choices]
    assert "".join(parts) == whole
    Person.model_validate_json(whole or "")


@pytest.mark.parametrize(("prompt", "temperature", "seed"), [(PROMPTS[0], 0.0, 4), (PROMPTS[2], 1.0, 5)])
def test_ollama_format_schema_gives_a_valid_object(server: Any, prompt: str, temperature: float, seed: int) -> None:
    reply = ollama.Client(host=server.base_url).chat(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        format=Person.model_json_schema(),
        options={"temperature": temperature, "seed": seed, "num_predict": 300},
    )
    assert reply.done_reason == "stop"
    Person.model_validate_json(reply.message.content or "")


def test_ollama_format_json_on_generate(server: Any) -> None:
    reply = ollama.Client(host=server.base_url).generate(
        model=MODEL, prompt="Three fruits as JSON.", format="json", options={"temperature": 0, "num_predict": 200}
    )
    assert isinstance(json.loads(reply.response), dict)


def test_a_schema_ember_cannot_enforce_is_a_400_naming_the_keyword(server: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}},
    }
    openai_reply = httpx.post(
        server.url("/v1/chat/completions"),
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
        },
        timeout=60,
    )
    assert openai_reply.status_code == 400
    error = openai_reply.json()["error"]
    assert "uniqueItems" in error["message"] and error["type"] == "invalid_request_error"
    ollama_reply = httpx.post(
        server.url("/api/chat"),
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "format": schema, "stream": False},
        timeout=60,
    )
    assert ollama_reply.status_code == 400 and "uniqueItems" in ollama_reply.json()["error"]
