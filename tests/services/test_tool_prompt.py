"""The messages chat templates get for tools and tool histories, rendered with templates that
read them as the Qwen 2.5, Llama 3.1 and Mistral templates do (written here, shortened), and
with ember's ChatML fallback for the generic envelope."""

from __future__ import annotations

import json
import re

from ember.runtime.chat_template import CHATML_TEMPLATE, render_chat
from ember.services.tools.prompt import envelope_instructions, envelope_messages, family_messages, template_tools
from ember.services.types import ChatMessage, Tool, ToolCall, ToolChoice

WEATHER = Tool(
    "get_weather",
    "The weather in a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Tool("get_time", "The time in a zone", {"type": "object", "properties": {"zone": {"type": "string"}}})
HISTORY = [
    ChatMessage(role="developer", content="Be brief."),
    ChatMessage(role="user", content="Weather and time in Paris?"),
    ChatMessage(
        role="assistant",
        tool_calls=(
            ToolCall("call_a1", "get_weather", '{"city": "Paris"}'),
            ToolCall("call_b2", "get_time", '{"zone": "CET"}'),
        ),
    ),
    ChatMessage(role="tool", content="18 C", tool_call_id="call_a1"),
    ChatMessage(role="tool", content="14:05", tool_call_id="call_b2", name="get_time"),
]

# Reads tools, tool_calls[].function.{name,arguments} and tool results as Qwen 2.5's does.
HERMES_LIKE = """\
{%- if tools %}<|im_start|>system
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
Call tools as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}{% set call = tool_call.function %}
<tool_call>
{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

# One call per assistant message, results under the ipython role, as Llama 3.1's does.
LLAMA_LIKE = """\
{%- for message in messages %}
{%- if message.tool_calls %}
{%- if message.tool_calls | length != 1 %}{{ raise_exception("one tool call per message") }}{% endif %}
{%- set call = message.tool_calls[0].function %}
<|start_header_id|>assistant<|end_header_id|>
{{- '{"name": "' + call.name + '", "parameters": ' + call.arguments | tojson + '}' }}<|eom_id|>
{%- elif message.role == "tool" %}<|start_header_id|>ipython<|end_header_id|>{{ message.content }}<|eot_id|>
{%- else %}<|start_header_id|>{{ message.role }}<|end_header_id|>{{ message.content }}<|eot_id|>
{%- endif %}
{%- endfor %}"""

# Nine-character alphanumeric ids or an exception, as Mistral's do.
MISTRAL_LIKE = """\
{%- for message in messages %}
{%- if message.tool_calls %}[TOOL_CALLS][
{%- for call in message.tool_calls %}
{%- if call.id | length != 9 or not call.id.isalnum() %}{{ raise_exception("ids are 9 alphanumerics") }}{% endif %}
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}, "id": "{{ call.id }}"}
{%- endfor %}]</s>
{%- elif message.role == "tool" %}
{%- if message.tool_call_id | length != 9 %}{{ raise_exception("ids are 9 alphanumerics") }}{% endif %}
[TOOL_RESULTS]{"call_id": "{{ message.tool_call_id }}", "content": {{ message.content | tojson }}}[/TOOL_RESULTS]
{%- else %}[INST]{{ message.content }}[/INST]
{%- endif %}
{%- endfor %}"""


def test_hermes_history_and_tools() -> None:
    prompt = render_chat(HERMES_LIKE, family_messages(HISTORY, "hermes"), tools=template_tools((WEATHER, TIME)))
    assert json.dumps(template_tools((WEATHER,))[0]) in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert '{"name": "get_time", "arguments": {"zone": "CET"}}' in prompt
    assert "<tool_response>\n18 C\n</tool_response>" in prompt and "<tool_response>\n14:05\n</tool_response>" in prompt
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt  # developer is system


def test_templates_without_tools_get_no_tools_variable() -> None:
    prompt = render_chat(HERMES_LIKE, family_messages(HISTORY[:2], "hermes"))
    assert "Call tools as" not in prompt


def test_llama3_gets_one_call_per_message() -> None:
    prompt = render_chat(LLAMA_LIKE, family_messages(HISTORY, "llama3"))
    assert prompt.count('{"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>') == 1
    assert prompt.count('{"name": "get_time", "parameters": {"zone": "CET"}}<|eom_id|>') == 1
    assert "<|start_header_id|>ipython<|end_header_id|>18 C<|eot_id|>" in prompt


def test_mistral_ids_are_nine_alphanumerics_and_match_their_results() -> None:
    prompt = render_chat(MISTRAL_LIKE, family_messages(HISTORY, "mistral"))
    call_ids = re.findall(r'"id": "(\w+)"', prompt)
    result_ids = re.findall(r'"call_id": "(\w+)"', prompt)
    assert len(call_ids) == 2 and call_ids == result_ids
    assert all(len(i) == 9 and i.isalnum() for i in call_ids)


def test_arguments_that_are_not_json_are_passed_as_text() -> None:
    messages = [ChatMessage(role="assistant", tool_calls=(ToolCall("call_1", "f", "not json"),))]
    [entry] = family_messages(messages, "hermes")
    assert entry["tool_calls"][0]["function"]["arguments"] == "not json"


def test_generic_envelope_prompt_and_history() -> None:
    instructions = envelope_instructions((WEATHER, TIME), ToolChoice(), parallel=True)
    messages = envelope_messages(HISTORY, instructions=instructions, tool_role=False)
    assert messages[0] == {"role": "system", "content": "Be brief.\n\n" + instructions}
    assert json.loads(messages[2]["content"]) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {"zone": "CET"}},
        ]
    }
    # Both results in one user message, each under the name of the call it answers.
    assert messages[3:] == [
        {"role": "user", "content": "The tool get_weather returned: 18 C\nThe tool get_time returned: 14:05"}
    ]
    prompt = render_chat(CHATML_TEMPLATE, messages)
    assert '{"name":"get_weather",' in prompt and '{"response":"<your answer>"}' in prompt


def test_generic_envelope_instructions_follow_tool_choice() -> None:
    auto = envelope_instructions((WEATHER,), ToolChoice(), parallel=False)
    assert '"response"' in auto and "one tool at a time" in auto
    required = envelope_instructions((WEATHER,), ToolChoice(mode="required"), parallel=True)
    assert '"response"' not in required and "Call one or more" in required
    named = envelope_instructions((TIME,), ToolChoice(mode="function", name="get_time"), parallel=True)
    assert 'Call the tool "get_time"' in named and '"name":"get_time"' in named


def test_generic_answers_are_envelopes_only_while_tools_are_offered() -> None:
    history = [
        ChatMessage(role="user", content="Hi"),
        ChatMessage(role="assistant", content="Hello!"),
        ChatMessage(role="user", content="Again"),
    ]
    offered = envelope_messages(history, instructions="TOOLS", tool_role=False)
    assert offered[0] == {"role": "system", "content": "TOOLS"}
    assert json.loads(offered[2]["content"]) == {"response": "Hello!"}
    plain = envelope_messages(history, instructions=None, tool_role=False)
    assert plain == [{"role": m.role, "content": m.content} for m in history]


def test_generic_results_and_a_following_question_are_one_user_turn() -> None:
    messages = envelope_messages(
        [*HISTORY, ChatMessage(role="user", content="And tomorrow?")], instructions=None, tool_role=False
    )
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"].endswith("returned: 14:05\n\nAnd tomorrow?")


def test_generic_tool_role_where_the_template_has_one() -> None:
    messages = envelope_messages(HISTORY, instructions=None, tool_role=True)
    assert messages[-2:] == [{"role": "tool", "content": "18 C"}, {"role": "tool", "content": "14:05"}]
