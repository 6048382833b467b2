"""Constrained generation on the real SmolLM2 model: every answer parses and validates, and ends with stop.

The model is tiny and writes poor JSON by itself; the grammar forces the shape. Each
answer is judged by json.loads, jsonschema (with formats) and pydantic, over several
prompts, seeds and temperatures, through the worker-process engine and (once) the
in-process one.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field

from ember.engine.grammar import GrammarError, json_object_gbnf, schema_to_gbnf
from ember.engine.llama_engine import LlamaEngine
from ember.engine.process_engine import ProcessEngine, ProcessEngineLoader
from ember.engine.types import GenerationEvent, GenerationRequest, LoadOptions, SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_TOKENS = 200
PROMPTS = [
    "Describe a person as JSON.",
    "Invent a character for a story and give me their record.",
    "Give me a customer record for a small shop.",
]
# (temperature, seed): greedy once, then warm and hot sampling over three seeds; all in one batch.
SAMPLINGS = [(0.0, 1), (0.8, 1), (0.8, 2), (1.5, 2), (1.5, 3)]


class Address(BaseModel):
    model_config = {"extra": "forbid"}
    city: str = Field(min_length=2, max_length=20)
    zip: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    """Nested objects, required, closed objects, an enum, bounds, lengths, a list, Optional and a $ref."""

    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=20)
    age: int = Field(ge=0, le=30)
    height: float = Field(gt=0.5, le=2.5)
    role: Literal["admin", "user", "guest"]
    tags: list[Annotated[str, Field(max_length=15)]] = Field(min_length=1, max_length=3)
    address: Address
    nickname: str | None = Field(default=None, max_length=12)


class Item(BaseModel):
    sku: str = Field(pattern=r"^[A-Z]{3}-[0-9]{3}$")
    quantity: int = Field(ge=1, le=99)
    price: float = Field(ge=0, lt=1000)


class Order(BaseModel):
    """A list of $ref items with item bounds, an anyOf of an enum and an integer, a date and a const."""

    model_config = {"extra": "forbid"}
    version: Literal[2]
    placed: datetime.date
    items: list[Item] = Field(min_length=1, max_length=2)
    status: Literal["open", "paid"] | int = Field(default="open")
    note: str | None = Field(default=None, max_length=10)


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


async def generate(
    engine: ProcessEngine | LlamaEngine,
    prompt: list[int],
    grammar: str | None,
    sampling: SamplingParams,
    max_tokens: int = MAX_TOKENS,
) -> tuple[str, GenerationEvent]:
    parts: list[str] = []
    final: GenerationEvent | None = None
    request = GenerationRequest(prompt_tokens=prompt, max_tokens=max_tokens, grammar=grammar, sampling=sampling)
    async for event in engine.generate(request):
        parts.append(event.text)
        if event.done:
            final = event
    assert final is not None and final.stats is not None
    return "".join(parts), final


def assert_valid(model: type[BaseModel], schema: dict[str, Any], text: str, final: GenerationEvent) -> None:
    assert final.finish_reason == "stop", f"did not finish ({final.finish_reason}): {text!r}"
    assert final.stats is not None and final.stats.completion_tokens < MAX_TOKENS
    instance = json.loads(text)
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    validator.validate(instance)
    model.model_validate_json(text)
    assert text == text.strip() or text.endswith("} ")  # at most the one trailing space the grammar allows


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(smollm2_gguf: Path) -> AsyncIterator[ProcessEngine]:
    loaded = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=1024, num_parallel=len(SAMPLINGS)))
    yield loaded
    await loaded.close()


@pytest.mark.parametrize("model", [Person, Order])
async def test_answers_parse_and_validate_at_every_temperature(engine: ProcessEngine, model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    gbnf = schema_to_gbnf(schema)
    prompts = [await engine.tokenize(chat(p)) for p in PROMPTS]

    async def one(i: int, temperature: float, seed: int) -> tuple[str, GenerationEvent]:
        sampling = SamplingParams(temperature=temperature, seed=seed)
        return await generate(engine, prompts[i % len(prompts)], gbnf, sampling)

    answers = await asyncio.gather(*(one(i, t, s) for i, (t, s) in enumerate(SAMPLINGS)))
    for text, final in answers:
        assert_valid(model, schema, text, final)
    assert len({text for text, _ in answers}) > 3, "sampling should give different answers"


async def test_json_object_grammar_gives_an_object(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(chat("Give me some data about the weather as JSON."))
    answers = await asyncio.gather(
        *(
            generate(engine, prompt, json_object_gbnf(), SamplingParams(temperature=t, seed=s), max_tokens=80)
            for t, s in [(0.8, 2), (1.5, 3)]
        )
    )
    for text, final in answers:
        if final.finish_reason == "stop":  # an object may be left open at max_tokens: its content is free
            assert isinstance(json.loads(text), dict)
        else:
            assert text.startswith("{")
        assert "\n" not in text and "\t" not in text  # strings cannot hold them raw, and structure never does


async def test_complete_grammar_ends_with_stop(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(chat("Is the sky blue? Answer at length."))
    for temperature in (0.0, 1.5):
        text, final = await generate(engine, prompt, 'root ::= "yes" | "no"', SamplingParams(temperature=temperature))
        assert text in ("yes", "no")
        assert final.finish_reason == "stop"
        assert final.stats is not None and final.stats.completion_tokens <= 2


async def test_bad_grammar_fails_before_the_first_event(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(chat("Hello"))
    for gbnf in ("root ::= undefined-rule", 'root ::= "open', ""):
        events = engine.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=8, grammar=gbnf))
        with pytest.raises(GrammarError) as caught:
            await events.__anext__()
        assert caught.value.status_code == 400
    text, final = await generate(engine, prompt, 'root ::= "ok"', SamplingParams(temperature=0.0))
    assert (text, final.finish_reason) == ("ok", "stop")  # the engine serves on


async def test_constrained_and_free_requests_share_a_batch(engine: ProcessEngine) -> None:
    greedy = SamplingParams(temperature=0.0, repeat_penalty=1.0)
    free_prompt = await engine.tokenize(chat("Name three colours."))
    alone, _ = await generate(engine, free_prompt, None, greedy, max_tokens=24)
    schema = Person.model_json_schema()
    person_prompt = await engine.tokenize(chat(PROMPTS[0]))
    (free, _), (constrained, final) = await asyncio.gather(
        generate(engine, free_prompt, None, greedy, max_tokens=24),
        generate(engine, person_prompt, schema_to_gbnf(schema), SamplingParams(temperature=0.8, seed=5)),
    )
    assert free == alone  # the grammar of one request never touches another's sampling
    assert_valid(Person, schema, constrained, final)


async def test_in_process_engine_honours_the_grammar(smollm2_gguf: Path) -> None:
    engine = await asyncio.to_thread(LlamaEngine.open, smollm2_gguf, LoadOptions(num_ctx=1024))
    try:
        schema = Item.model_json_schema()
        prompt = await engine.tokenize(chat("Describe an item in a shop as JSON."))
        text, final = await generate(engine, prompt, schema_to_gbnf(schema), SamplingParams(temperature=0.8, seed=3))
        assert_valid(Item, schema, text, final)
        with pytest.raises(GrammarError):
            await generate(engine, prompt, "root ::= nope", SamplingParams())
    finally:
        await engine.close()
