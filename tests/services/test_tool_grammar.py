"""The grammars that hold tool-call answers, and the plan a request gets: GBNF built from the
tools' schemas, compiled by llama.cpp for the default model's vocabulary."""

from __future__ import annotations

import re
from pathlib import Path

import llama_cpp
import pytest

from ember.engine.grammar import GrammarCompiler, GrammarError
from ember.runtime.chat_template import CHATML_TEMPLATE
from ember.services.tools.generic import GenericParser
from ember.services.tools.grammar import envelope_grammar, family_grammar
from ember.services.tools.hermes import HermesParser
from ember.services.tools.plan import plan_tools
from ember.services.types import ChatMessage, TextRequest, Tool, ToolCall, ToolChoice

WEATHER = Tool(
    "get_weather",
    "",
    {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}}, "required": ["city"]},
)
ORDER = Tool(
    "order",
    "",
    {
        "type": "object",
        "$defs": {
            "Item": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "n": {"type": "integer", "minimum": 1}},
                "required": ["sku", "n"],
            }
        },
        "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "maxItems": 3}},
        "required": ["items"],
    },
)
ODD = Tool("odd", "", {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 3}}}})
TOOLS = (WEATHER, ORDER)
CHOICES = [ToolChoice(), ToolChoice(mode="required"), ToolChoice(mode="function", name="order")]
QWEN_LIKE = "{% if tools %}{{ tools | tojson }} <tool_call>{% endif %}{{ messages[0]['content'] }}"


class Vocabulary:
    """The default model's vocabulary (no weights), to compile grammars for."""

    def __init__(self, path: Path) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self._model
        self._compiler = GrammarCompiler(llama_cpp.llama_model_get_vocab(self._model))

    def check_grammar(self, gbnf: str) -> None:
        self._compiler.check(gbnf)

    def close(self) -> None:
        self._compiler.close()
        llama_cpp.llama_model_free(self._model)


@pytest.fixture(scope="module")
def vocabulary(model_path: Path):
    vocab = Vocabulary(model_path)
    yield vocab
    vocab.close()


def rule(gbnf: str, name_end: str) -> str:
    [line] = [line for line in gbnf.splitlines() if re.match(rf"\S*{re.escape(name_end)} ::= ", line)]
    return line


@pytest.mark.parametrize("choice", CHOICES, ids=lambda c: c.mode)
@pytest.mark.parametrize("parallel", [True, False])
def test_envelope_grammars_compile(vocabulary, choice: ToolChoice, parallel: bool) -> None:
    gbnf = envelope_grammar(TOOLS, choice, parallel)
    vocabulary.check_grammar(gbnf)
    assert ('"\\"response\\""' in gbnf) == (choice.mode == "auto")
    assert ('"\\"get_weather\\""' in gbnf) == (choice.mode != "function")
    calls = rule(gbnf, "tool-calls")
    assert ('","' in calls) == (parallel and choice.mode != "function")  # more than one call allowed
    assert "Item" in gbnf  # the $ref, rebased into the combined schema, resolved
    assert 'space ::= ""' in gbnf.splitlines()  # compact JSON, as the envelope's prompt shows it


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral"])
@pytest.mark.parametrize("choice", CHOICES[1:], ids=lambda c: c.mode)
def test_family_grammars_compile_in_their_own_format(vocabulary, family, choice: ToolChoice) -> None:
    gbnf = family_grammar(family, TOOLS, choice, parallel=True)
    assert gbnf is not None
    vocabulary.check_grammar(gbnf)
    root = rule(gbnf, "root")
    start = {"hermes": 'root ::= "<tool_call>\\n"', "mistral": 'root ::= "[TOOL_CALLS]"', "llama3": "root ::= "}
    assert root.startswith(start[family])
    assert ('"\\"parameters\\""' in gbnf) == (family == "llama3")
    assert 'space ::= " "?' in gbnf.splitlines()  # a family's own format keeps its spaces
    assert family_grammar(family, TOOLS, ToolChoice(), parallel=True) is None  # auto: the model is free


def test_an_unenforceable_schema_is_a_400_naming_the_tool() -> None:
    with pytest.raises(GrammarError) as caught:
        envelope_grammar((WEATHER, ODD), ToolChoice(), parallel=True)
    assert caught.value.param == "tools[1].function.parameters"
    assert "'odd'" in caught.value.message and "'not'" in caught.value.message
    assert caught.value.status_code == 400
    # A tool that cannot be called is not held to the grammar.
    envelope_grammar((WEATHER, ODD), ToolChoice(mode="function", name="get_weather"), parallel=True)


def request(*messages: ChatMessage, tools=TOOLS, choice: ToolChoice | None = None) -> TextRequest:
    return TextRequest(model="m", messages=list(messages), tools=tools, tool_choice=choice or ToolChoice())


ASK = ChatMessage(role="user", content="Weather in Paris?")


def test_plans() -> None:
    assert plan_tools(request(ASK, tools=()), CHATML_TEMPLATE) is None  # the plain path
    generic = plan_tools(request(ASK), CHATML_TEMPLATE)
    assert generic is not None and generic.family == "generic" and generic.grammar and generic.tools is None
    assert isinstance(generic.parser(), GenericParser) and generic.messages[0]["role"] == "system"
    none = plan_tools(request(ASK, choice=ToolChoice(mode="none")), CHATML_TEMPLATE)
    assert none is not None and none.grammar is None and none.parser() is None
    assert none.messages == [{"role": "user", "content": "Weather in Paris?"}]
    hermes_auto = plan_tools(request(ASK), QWEN_LIKE)
    assert hermes_auto is not None and hermes_auto.grammar is None and hermes_auto.tools
    assert isinstance(hermes_auto.parser(), HermesParser)
    hermes_forced = plan_tools(request(ASK, choice=ToolChoice(mode="required")), QWEN_LIKE)
    assert hermes_forced is not None and hermes_forced.grammar and hermes_forced.grammar.startswith("root ::= ")
    history = request(
        ASK,
        ChatMessage(role="assistant", tool_calls=(ToolCall("call_1", "get_weather", "{}"),)),
        ChatMessage(role="tool", content="18", tool_call_id="call_1"),
        tools=(),
    )
    replay = plan_tools(history, QWEN_LIKE)
    assert replay is not None and replay.parser() is None and replay.tools is None
    assert replay.messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {}}
