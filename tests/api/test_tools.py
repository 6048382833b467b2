"""Tool calling on the real default model (SmolLM2, whose template knows no tools: the generic
envelope), through the real server with the real openai and ollama clients.

A 135M model does not choose tools wisely; what is tested is the mechanics the grammar
guarantees: the calls' shape, names and schema-valid arguments, tool_choice and
parallel_tool_calls honoured, streaming that reassembles to the same call, history round trips.
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

MODEL = "smollm2:135m"

WEATHER_PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 24},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 24}, "hours24": {"type": "boolean"}},
    "required": ["zone", "hours24"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "description": "The current time in a time zone", "parameters": TIME_PARAMS},
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def valid_call(call) -> dict:
    """The call's arguments, checked against its tool's schema."""
    assert call.type == "function" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_a_named_function_is_called_with_valid_arguments(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        temperature=0,
        max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert not choice.message.content
    [call] = choice.message.tool_calls
    assert call.function.name == "get_time"
    valid_call(call)


def test_required_gives_at_least_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        temperature=0,
        max_tokens=120,
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls
    if choice.finish_reason == "tool_calls":
        for call in choice.message.tool_calls:
            valid_call(call)
    else:  # the model went on calling until max_tokens: the calls before the last are whole
        assert choice.finish_reason == "length"
        for call in choice.message.tool_calls[:-1]:
            valid_call(call)


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    valid_call(call)
    auto = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    assert len(auto.choices[0].message.tool_calls or []) <= 1


def test_none_gives_plain_content(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="none",
        temperature=0,
        max_tokens=24,
    )
    choice = reply.choices[0]
    assert not choice.message.tool_calls
    assert choice.message.content and "tool_calls" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_streamed_call_reassembles_to_the_non_streamed_one(client: openai.OpenAI) -> None:
    request = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 80,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls
    deltas, content = [], []
    with client.chat.completions.stream(**request) as stream:
        for event in stream:
            if event.type == "chunk":
                for choice in event.chunk.choices:
                    deltas.extend(choice.delta.tool_calls or ())
                    content.append(choice.delta.content or "")
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    [streamed] = final.message.tool_calls
    [expected] = whole
    assert (streamed.function.name, streamed.function.arguments) == (
        expected.function.name,
        expected.function.arguments,
    )
    valid_call(streamed)
    # The first delta of the call names it; the later ones carry argument fragments only.
    first, *rest = deltas
    assert (first.index, first.type, first.function.name) == (0, "function", "get_weather") and first.id
    assert rest and all(d.id is None and d.type is None and d.function.name is None for d in rest)
    assert "".join((d.function.arguments or "") for d in deltas) == expected.function.arguments
    assert "".join(content) == ""  # none of the envelope's JSON leaked as content


def test_a_tool_result_round_trips(client: openai.OpenAI) -> None:
    first = (
        client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=TOOLS,
            temperature=0,
            max_tokens=80,
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        .choices[0]
        .message
    )
    [call] = first.tool_calls
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "clear"}'},
    ]
    follow_up = client.chat.completions.create(
        model=MODEL,
        messages=history,
        tools=TOOLS,
        temperature=0,
        max_tokens=40,
    ).choices[0]
    assert follow_up.finish_reason in ("stop", "length", "tool_calls")
    assert follow_up.message.content or follow_up.message.tool_calls
    plain = client.chat.completions.create(model=MODEL, messages=history, temperature=0, max_tokens=16).choices[0]
    assert plain.message.content and not plain.message.tool_calls


def test_a_schema_the_grammar_cannot_enforce_is_a_400_naming_the_tool(client: openai.OpenAI) -> None:
    bad = {
        "type": "function",
        "function": {
            "name": "odd",
            "parameters": {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 3}}}},
        },
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=ASK, tools=[TOOLS[0], bad], max_tokens=8)
    assert "'odd'" in caught.value.message and "not" in caught.value.message
    assert caught.value.body["param"] == "tools[1].function.parameters"


def get_weather(city: str, unit: str) -> str:
    """The current weather in a city.

    Args:
        city: The city's name
        unit: celsius or fahrenheit

    Returns:
        The weather
    """
    return f"18 degrees {unit} in {city}"


def test_ollama_client_with_a_python_function(ollama_client: ollama.Client) -> None:
    """Ollama has no tool_choice (auto: the envelope lets the model answer or call); a call comes
    whole, with arguments as an object, in both the streamed and the non-streamed answer."""
    messages = [{"role": "user", "content": "Call the tool get_weather with city Paris."}]
    options = {"temperature": 0, "num_predict": 100}  # room for the calls it makes: a cut call is no object
    reply = ollama_client.chat(model=MODEL, messages=messages, tools=[get_weather], options=options)
    calls = reply.message.tool_calls or []
    assert calls, reply.message.content  # this prompt, at temperature 0, makes the model call
    assert not reply.message.content
    whole(calls, reply.done_reason)
    chunks = list(ollama_client.chat(model=MODEL, messages=messages, tools=[get_weather], options=options, stream=True))
    streamed = [call for chunk in chunks for call in chunk.message.tool_calls or []]
    assert streamed and chunks[-1].done
    whole(streamed, chunks[-1].done_reason)


@pytest.mark.parametrize("num_predict", [14, 22])  # cut after the name; cut in the arguments
def test_ollama_client_takes_a_call_cut_off_by_num_predict(ollama_client: ollama.Client, num_predict: int) -> None:
    """A call cut off mid-arguments is no object, which Ollama's clients refuse: it comes back as
    the text the model wrote, with done_reason length, and the client parses the reply."""
    messages = [{"role": "user", "content": "Call the tool get_weather with city Paris."}]
    options = {"temperature": 0, "num_predict": num_predict}
    reply = ollama_client.chat(model=MODEL, messages=messages, tools=[get_weather], options=options)
    assert reply.done_reason == "length"
    assert not reply.message.tool_calls
    assert "get_weather" in (reply.message.content or "")
    chunks = list(ollama_client.chat(model=MODEL, messages=messages, tools=[get_weather], options=options, stream=True))
    assert chunks[-1].done_reason == "length"
    assert not any(chunk.message.tool_calls for chunk in chunks)
    assert "".join(chunk.message.content or "" for chunk in chunks) == reply.message.content


def whole(calls, done_reason: str | None) -> None:
    """Each call is whole: its arguments an object (a last call cut by num_predict may not be)."""
    assert done_reason in ("stop", "length")
    for call in calls if done_reason == "stop" else calls[:-1]:
        assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
        assert set(call.function.arguments) == {"city", "unit"}


def test_ollama_history_with_a_call_and_its_result(ollama_client: ollama.Client) -> None:
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}],
        },
        {"role": "tool", "tool_name": "get_weather", "content": "18 degrees celsius in Paris"},
    ]
    reply = ollama_client.chat(
        model=MODEL, messages=messages, tools=[get_weather], options={"temperature": 0, "num_predict": 40}
    )
    assert reply.done and (reply.message.content or reply.message.tool_calls)
    for call in reply.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
