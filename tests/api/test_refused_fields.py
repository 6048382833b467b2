"""Fields ember cannot honour are refused with a 400 naming them, never silently ignored.

Fields that change nothing (OpenAI's `user`, an empty `images`) are still accepted. Each
refusal happens before the model generates anything, so these tests are cheap.
"""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import openai
import pytest

MODEL = "smollm2:135m"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
# Far past the 4096-token context the session server loads the model with.
LONG = "one two three four five six seven eight nine ten " * 600


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


def ollama_refusal(exc: pytest.ExceptionInfo[ollama.ResponseError], *words: str) -> str:
    assert exc.value.status_code == 400, exc.value
    for word in words:
        assert word in exc.value.error, exc.value.error
    return exc.value.error


def openai_refusal(exc: pytest.ExceptionInfo[openai.BadRequestError], param: str) -> str:
    assert exc.value.status_code == 400
    body: Any = exc.value.body
    assert body["param"] == param and body["code"] == "unsupported_parameter", body
    assert f"'{param}'" in body["message"]
    return str(body["message"])


# -- Ollama -------------------------------------------------------------------------------------


def test_images_on_a_text_only_model(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        oll.generate(model=MODEL, prompt="What is in the picture?", images=[PIXEL])
    ollama_refusal(exc, "'images'", f"model '{MODEL}' does not support images")
    with pytest.raises(ollama.ResponseError) as exc:
        oll.chat(model=MODEL, messages=[{"role": "user", "content": "Describe it.", "images": [PIXEL]}])
    ollama_refusal(exc, "'messages[0].images'", "does not support images")
    # Streamed, the refusal is still a status, before any line.
    with pytest.raises(ollama.ResponseError) as exc:
        next(iter(oll.chat(model=MODEL, stream=True,
                           messages=[{"role": "user", "content": "Describe it.", "images": [PIXEL]}])))
    ollama_refusal(exc, "does not support images")


def test_empty_images_are_no_images(server) -> None:
    body = {"model": MODEL, "prompt": "Hi", "images": [], "stream": False, "options": {"num_predict": 1}}
    assert httpx.post(server.url("/api/generate"), json=body, timeout=120).status_code == 200
    chat = {"model": MODEL, "stream": False, "options": {"num_predict": 1},
            "messages": [{"role": "user", "content": "Hi", "images": None}]}
    assert httpx.post(server.url("/api/chat"), json=chat, timeout=120).status_code == 200


def test_generate_template_context_and_think_are_refused(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        oll.generate(model=MODEL, prompt="Hi", template="{{ .Prompt }}")
    ollama_refusal(exc, "'template'", "raw: true")
    with pytest.raises(ollama.ResponseError) as exc:
        oll.generate(model=MODEL, prompt="And then?", context=[1, 2, 3])
    ollama_refusal(exc, "'context'", "/api/chat")
    with pytest.raises(ollama.ResponseError) as exc:
        oll.chat(model=MODEL, messages=[{"role": "user", "content": "Hi"}], think=True)
    ollama_refusal(exc, "'think'", "does not support thinking")


def test_truncate_on_generate_and_chat(server) -> None:
    # ember never cuts a prompt: an over-long one is a 400 with both token counts, and when the
    # request asked for truncation, the message says that is what ember does not do.
    for truncate, named in ((False, False), (True, True)):
        reply = httpx.post(server.url("/api/generate"), timeout=120,
                           json={"model": MODEL, "prompt": LONG, "stream": False, "truncate": truncate})
        assert reply.status_code == 400, reply.text
        message = reply.json()["error"]
        assert "tokens, but the model's context is 4096 tokens" in message
        assert ("'truncate'" in message) is named, message
    reply = httpx.post(server.url("/api/chat"), timeout=120,
                       json={"model": MODEL, "messages": [{"role": "user", "content": LONG}], "truncate": True})
    assert reply.status_code == 400 and "'truncate'" in reply.json()["error"]


def test_embed_truncate_false(oll: ollama.Client) -> None:
    # 2048 tokens is the embedding context: past it, truncate=false is a 400 naming the lengths,
    # found before anything is decoded. (The default cuts the input to fit, as Ollama's
    # truncate=true does; decoding 2048 tokens is slow on a small machine, so it is not run here.)
    with pytest.raises(ollama.ResponseError) as exc:
        oll.embed(model=MODEL, input=["short", LONG], truncate=False)
    ollama_refusal(exc, "input[1] is", "the embedding context is 2048 tokens")
    fits = oll.embed(model=MODEL, input="a short one", truncate=False)
    assert len(fits.embeddings[0]) > 100


# -- OpenAI -------------------------------------------------------------------------------------


def test_openai_fields_that_would_change_the_answer(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=MODEL, messages=messages, logit_bias={"1": 100})
    openai_refusal(exc, "logit_bias")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=MODEL, messages=messages, modalities=["text", "audio"],
                                    audio={"voice": "alloy", "format": "wav"})
    openai_refusal(exc, "audio")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.chat.completions.create(model=MODEL, messages=messages, reasoning_effort="high")
    openai_refusal(exc, "reasoning_effort")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model=MODEL, prompt="Once upon a time", best_of=3)
    openai_refusal(exc, "best_of")
    with pytest.raises(openai.BadRequestError) as exc:
        oai.completions.create(model=MODEL, prompt="def add(a, b):", suffix="    return c")
    openai_refusal(exc, "suffix")


def test_openai_fields_that_change_nothing_are_accepted(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                        user="someone", logit_bias={}, modalities=["text"], metadata={"a": "b"})
    assert reply.choices[0].finish_reason in ("stop", "length")
