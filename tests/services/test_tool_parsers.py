"""Tool-call parsers of each template family on canned model outputs, fed whole, split at every
position, and one character at a time: the same content and calls every way, and text that may
begin a marker never shown as content."""

from __future__ import annotations

import itertools
import json

import pytest

from ember.engine.types import GenerationStats
from ember.services.tools.families import Family, detect_family, knows_tool_role, parser_for
from ember.services.tools.jsonstream import CallSlots, StringDecoder, new_call_id
from ember.services.types import AnswerBuilder, GenerationEvent, ToolCallDelta

STATS = GenerationStats(prompt_tokens=0, completion_tokens=0, prompt_eval_seconds=0, eval_seconds=0)


def ids():
    counter = itertools.count(1)
    return lambda: f"call_{next(counter)}"


def parse(family: Family, pieces: list[str], limit: int | None = None):
    """Feed the pieces; the answer (content, [(id, name, arguments)]) and what each feed returned."""
    parser = parser_for(family, CallSlots(limit, ids()))
    builder = AnswerBuilder()
    fed = []
    for piece in pieces:
        text, deltas = parser.feed(piece)
        fed.append((text, deltas))
        builder.add(GenerationEvent(text=text, tool_calls=deltas))
    text, deltas = parser.finish()
    fed.append((text, deltas))
    builder.add(GenerationEvent(text=text, tool_calls=deltas, done=True, stats=STATS))
    answer = builder.answer()
    return (answer.text, [(c.id, c.name, c.arguments) for c in answer.tool_calls]), fed


def splits(text: str):
    """The text whole, cut in two at every position, and one character at a time."""
    yield [text]
    for i in range(1, len(text)):
        yield [text[:i], text[i:]]
    yield list(text)


def check_deltas(fed) -> None:
    """Each call's first delta has id and name, and no later one repeats them."""
    seen: set[int] = set()
    for _, deltas in fed:
        for delta in deltas:
            assert isinstance(delta, ToolCallDelta)
            if delta.index in seen:
                assert delta.id is None and delta.name is None
            else:
                assert delta.id is not None and delta.name is not None
                seen.add(delta.index)


CASES: list[tuple[Family, str, str, list[tuple[str, str]]]] = [
    # (family, model output, content, [(name, arguments)])
    (
        "hermes",
        'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
        '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>',
        "Let me look.",
        [("get_weather", '{"city": "Paris", "unit": "c"}'), ("get_time", '{"zone": "CET"}')],
    ),
    ("hermes", "Just text, with a < sign and <b>tags</b>.", "Just text, with a < sign and <b>tags</b>.", []),
    (
        "hermes",
        '<tool_call>\n{"arguments": {"q": "a}b"}, "name": "search"}\n</tool_call>',
        "",
        [("search", '{"q": "a}b"}')],
    ),
    ("hermes", "I <tool_ think <tool_call>not json", "I <tool_ think <tool_call>not json", []),
    ("hermes", '<tool_call>{"name": "f", "arguments": "{\\"x\\": 1}"}</tool_call> done', "done", [("f", '{"x": 1}')]),
    (
        "llama3",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", '{"city": "Paris"}')],
    ),
    (
        "llama3",
        '{"type": "function", "name": "f", "parameters": {"n": 1}}; {"name": "g", "parameters": {}}',
        "",
        [("f", '{"n": 1}'), ("g", "{}")],
    ),
    (
        "llama3",
        'Sure <|python_tag|>{"name": "f", "parameters": {"n": [1, {"m": null}]}}',
        "Sure",
        [("f", '{"n": [1, {"m": null}]}')],
    ),
    ("llama3", '{"answer": 42} is my reply', '{"answer": 42} is my reply', []),
    ("llama3", "Paris is the capital {of France}.", "Paris is the capital {of France}.", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}, '
        '{"name": "get_time", "arguments": {}}]',
        "",
        [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")],
    ),
    ("mistral", '[{"name": "f", "arguments": {"a": 1}}]', "", [("f", '{"a": 1}')]),
    ("mistral", "[1, 2] are numbers", "[1, 2] are numbers", []),
    ("mistral", 'Calling. [TOOL_CALLS] {"name": "f", "arguments": {"a": true}}', "Calling.", [("f", '{"a": true}')]),
    (
        "generic",
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par\\"is", "n": [1, {"k": "}"}]}}, '
        '{"name": "get_time", "arguments": {}}]}',
        "",
        [("get_weather", '{"city": "Par\\"is", "n": [1, {"k": "}"}]}'), ("get_time", "{}")],
    ),
    ("generic", '{"response": "Hi \\"you\\"\\n\\u00e9\\ud83d\\ude00 \\\\ end"}', 'Hi "you"\né😀 \\ end', []),
    ("generic", '{ "response" : "a" , "extra": [1, "]"] }', "a", []),
    ("generic", "plain text, not an envelope", "plain text, not an envelope", []),
]


@pytest.mark.parametrize(("family", "output", "content", "calls"), CASES)
def test_canned_output_every_split(family: Family, output: str, content: str, calls) -> None:
    expected = (content, [(f"call_{i + 1}", name, args) for i, (name, args) in enumerate(calls)])
    for pieces in splits(output):
        answer, fed = parse(family, pieces)
        assert answer == expected, pieces
        check_deltas(fed)


@pytest.mark.parametrize(
    ("family", "marker"), [("hermes", "<tool_call>"), ("llama3", "<|python_tag|>"), ("mistral", "[TOOL_CALLS]")]
)
def test_a_marker_cut_anywhere_is_held_back(family: Family, marker: str) -> None:
    """Content before a marker comes out at once; no piece of the marker is ever shown."""
    call = '{"name": "f", "arguments": {"x": 1}}' if family != "mistral" else '[{"name": "f", "arguments": {"x": 1}}]'
    for cut in range(1, len(marker)):
        parser = parser_for(family, CallSlots(None, ids()))
        shown, _ = parser.feed("Hello " + marker[:cut])
        assert shown == "Hello"
        more, deltas = parser.feed(marker[cut:] + call)
        rest, last = parser.finish()
        assert more == rest == ""
        assert [(d.name, d.arguments) for d in deltas + last if d.name] == [("f", "")]
        assert "".join(d.arguments for d in deltas + last) == '{"x": 1}'


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
def test_a_marker_prefix_that_is_not_a_marker_comes_out_in_the_end(family: Family) -> None:
    marker = {"hermes": "<tool_call>", "llama3": "<|python_tag|>", "mistral": "[TOOL_CALLS]"}[family]
    parser = parser_for(family, CallSlots(None, ids()))
    shown, _ = parser.feed("a " + marker[:3])
    assert shown == "a"
    rest, deltas = parser.finish()
    assert (rest, deltas) == (" " + marker[:3], ())


def test_arguments_stream_as_they_come() -> None:
    """The first delta of a call names it; argument fragments follow as the text arrives."""
    parser = parser_for("hermes", CallSlots(None, ids()))
    assert parser.feed('<tool_call>{"name": "get_w') == ("", ())
    text, deltas = parser.feed('eather", "arguments": {"ci')
    assert text == ""
    assert deltas == (ToolCallDelta(index=0, id="call_1", name="get_weather"), ToolCallDelta(index=0, arguments='{"ci'))
    assert parser.feed('ty": "Paris"}}') == ("", (ToolCallDelta(index=0, arguments='ty": "Paris"}'),))
    assert parser.finish() == ("", ())


def test_generic_response_text_streams_before_the_string_closes() -> None:
    parser = parser_for("generic", CallSlots(None, ids()))
    assert parser.feed('{"response": "Hel') == ("Hel", ())
    assert parser.feed("lo\\") == ("lo", ())  # the escape is held until it is complete
    assert parser.feed("n wor") == ("\n wor", ())
    assert parser.feed('ld"}') == ("ld", ())
    assert parser.finish() == ("", ())


def test_generic_cut_off_envelope_shows_no_json() -> None:
    """An envelope cut by max_tokens: a call begun is kept, the envelope's syntax is never content."""
    (content, calls), _ = parse("generic", ['{"tool_calls": [{"name": "f", "arguments": {"city": "Pa'])
    assert content == "" and calls == [("call_1", "f", '{"city": "Pa')]
    (content, calls), _ = parse("generic", ['{"tool_calls": [{"na'])
    assert (content, calls) == ("", [])
    (content, calls), _ = parse("generic", ['{"response": "It is'])
    assert (content, calls) == ("It is", [])


@pytest.mark.parametrize(
    ("family", "output"),
    [
        (
            "hermes",
            '<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": {}}'
            "</tool_call>",
        ),
        ("generic", '{"tool_calls": [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]}'),
        ("mistral", '[TOOL_CALLS][{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}]'),
        ("llama3", '{"name": "a", "parameters": {}}; {"name": "b", "parameters": {}}'),
    ],
)
def test_a_limit_of_one_call_keeps_the_first(family: Family, output: str) -> None:
    for pieces in ([output], list(output)):
        (content, calls), _ = parse(family, pieces, limit=1)
        assert (content, calls) == ("", [("call_1", "a", "{}")])


def test_string_decoder_escapes_split_anywhere() -> None:
    raw = 'a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\ud83d\\ude00\\udc00x\\ud800y"tail'
    expected = json.loads('"a\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u0041\\ud83d\\ude00"') + "\ufffdx\ufffdy"
    for pieces in splits(raw):
        decoder, out, consumed = StringDecoder(), [], 0
        for piece in pieces:
            if decoder.closed:
                break
            text, used = decoder.feed(piece)
            out.append(text)
            consumed += used
        assert decoder.closed and "".join(out) == expected
        assert consumed == raw.index('"tail') + 1


def test_call_ids_are_fresh_and_openai_shaped() -> None:
    seen = {new_call_id() for _ in range(100)}
    assert len(seen) == 100
    for call_id in seen:
        assert call_id.startswith("call_") and len(call_id) == 29 and int(call_id[5:], 16) >= 0


# --- family detection ---------------------------------------------------------------------------

QWEN_LIKE = "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools> <tool_call>{% endif %}"
LLAMA_LIKE = "{% if tools %}{{ tools }}{% endif %}<|start_header_id|>ipython<|end_header_id|>"
MISTRAL_LIKE = "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def test_family_detection() -> None:
    assert detect_family(QWEN_LIKE) == "hermes"
    assert detect_family(LLAMA_LIKE) == "llama3"
    assert detect_family(MISTRAL_LIKE) == "mistral"
    assert detect_family(CHATML) == "generic"
    assert detect_family("<tool_call> mentioned, but the template takes no tool list") == "generic"
    assert knows_tool_role("{% if m['role'] == 'tool' %}") and not knows_tool_role(CHATML)


def test_the_default_models_template_is_generic(model_home) -> None:
    from ember.runtime.store import ModelStore

    meta = ModelStore(model_home).get("smollm2:135m").metadata  # read once, when it was pulled
    assert meta.chat_template and detect_family(meta.chat_template) == "generic"
