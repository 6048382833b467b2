"""Agent runs on the wire, without a server: each protocol's render of a constructed agent answer
(steps, pending approvals, the agent finish reasons) parses with that protocol's own SDK types,
and the extension fields' checks. The end-to-end runs are tests/api/test_agents_wire.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic.types
import ollama
import openai.types.chat
import openai.types.responses
import pytest
from pydantic import TypeAdapter

from ember.api import agent_wire
from ember.api.anthropic import render as anthropic_render
from ember.api.ollama import render as ollama_render
from ember.api.openai import render as openai_render
from ember.api.openai.protocol import ChatCompletionRequest
from ember.api.responses import parse as responses_parse
from ember.api.responses import render as responses_render
from ember.api.responses.protocol import ResponseCreateRequest
from ember.engine.types import GenerationStats
from ember.errors import BadRequest
from ember.services.types import AgentStep, Answer, GenerationEvent, PendingApproval, TextRequest

STATS = GenerationStats(prompt_tokens=7, completion_tokens=3, prompt_eval_seconds=0.01, eval_seconds=0.02)
LABEL = agent_wire.RunLabel(agent="helper", mode="tools")
TOOL = AgentStep(index=1, kind="tool", agent="helper", name="fs__read", arguments='{"path": "a"}', result="hi")
FAILED = AgentStep(index=2, kind="tool", agent="helper", name="shell", arguments="{}", result="boom", is_error=True)
MODEL = AgentStep(index=0, kind="model", agent="helper", name="up/gpt-test", tokens_in=5, tokens_out=2, seconds=0.1)
PENDING = PendingApproval(
    approval_id="apr_1", run_id="run_1", agent="helper", tool="shell", arguments='{"cmd": "ls"}', call_id="call_9"
)


def answer(finish: Any = "stop", text: str = "done", pending: tuple[PendingApproval, ...] = ()) -> Answer:
    return Answer(
        text=text,
        tool_calls=(),
        logprobs=(),
        finish_reason=finish,
        stats=STATS,
        steps=(MODEL, TOOL, FAILED),
        pending=pending,
        run_id="run_1",
    )


def test_trace_is_the_same_object_everywhere() -> None:
    ember = agent_wire.answer_trace(LABEL, answer("approval", "", (PENDING,)))
    assert ember["run_id"] == "run_1" and ember["agent"] == "helper" and ember["finish_reason"] == "approval"
    assert [s["kind"] for s in ember["steps"]] == ["model", "tool", "tool"]
    assert ember["steps"][1] | {"seconds": 0} == {
        "index": 1,
        "kind": "tool",
        "agent": "helper",
        "name": "fs__read",
        "arguments": '{"path": "a"}',
        "result": "hi",
        "is_error": False,
        "seconds": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "cost": 0.0,
        "detail": {},
    }
    assert ember["pending_approvals"] == [
        {"id": "apr_1", "tool": "shell", "arguments": '{"cmd": "ls"}', "call_id": "call_9", "agent": "helper"}
    ]
    closing = agent_wire.event_trace(LABEL, GenerationEvent(done=True, finish_reason="stop", run_id="r"))
    assert "steps" not in closing and closing["pending_approvals"] == []


@pytest.mark.parametrize(
    ("finish", "openai_reason", "anthropic_reason", "ollama_reason", "status"),
    [
        ("approval", "stop", "pause_turn", "stop", "completed"),
        ("max_steps", "length", "max_tokens", "length", "incomplete"),
        ("deadline", "length", "max_tokens", "length", "incomplete"),
    ],
)
def test_agent_finish_reasons_are_ones_the_clients_know(
    finish: Any, openai_reason: str, anthropic_reason: str, ollama_reason: str, status: str
) -> None:
    assert openai_render.finish_reason(finish) == openai_reason
    assert anthropic_render.stop_reason(finish, None, has_calls=False) == anthropic_reason
    assert ollama_render.done_reason(finish) == ollama_reason
    assert responses_render.status_of(finish) == status


def test_chat_completion_with_trace_parses_in_the_openai_sdk() -> None:
    done = answer("approval", "", (PENDING,))
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "agent/helper",
        "choices": [openai_render.chat_choice(0, done, False)],
        "ember": agent_wire.answer_trace(LABEL, done),
    }
    parsed = openai.types.chat.ChatCompletion.model_validate(body)
    assert parsed.choices[0].finish_reason == "stop"
    assert (parsed.model_extra or {})["ember"]["pending_approvals"][0]["id"] == "apr_1"


def test_anthropic_message_with_trace_parses_in_the_anthropic_sdk() -> None:
    message = anthropic_render.message("msg_1", "agent/helper", answer("approval", "", (PENDING,)), LABEL)
    parsed = anthropic.types.Message.model_validate(message)
    assert parsed.stop_reason == "pause_turn"
    assert (parsed.model_extra or {})["ember"]["finish_reason"] == "approval"


def test_anthropic_stream_sends_steps_as_their_own_events() -> None:
    async def events() -> AsyncIterator[GenerationEvent]:
        yield GenerationEvent(step=TOOL)
        yield GenerationEvent(text="done")
        yield GenerationEvent(done=True, finish_reason="stop", stats=STATS, run_id="run_1")

    async def collect() -> list[dict[str, Any]]:
        return [e async for e in anthropic_render.stream_events("msg_1", "agent/helper", 7, events(), LABEL)]

    out = asyncio.run(collect())
    steps = [e for e in out if e["type"] == "ember_step"]
    assert [s["step"]["name"] for s in steps] == ["fs__read"]
    delta = next(e for e in out if e["type"] == "message_delta")
    assert delta["ember"]["run_id"] == "run_1" and delta["delta"]["stop_reason"] == "end_turn"
    adapter: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for event in out:
        if event["type"] not in ("ember_step", "ping"):  # ping: the SDK skips it before parsing
            adapter.validate_python(event)


def test_ollama_done_object_with_trace_parses_in_the_ollama_client() -> None:
    done = answer("max_steps", "")
    body = {
        "model": "agent/helper",
        "created_at": "2026-01-01T00:00:00Z",
        **ollama_render.answer_fields(done, chat=True, want_logprobs=False),
        "done": True,
        "done_reason": ollama_render.done_reason(done.finish_reason),
        "ember": agent_wire.answer_trace(LABEL, done),
    }
    parsed = ollama.ChatResponse.model_validate(body)
    assert parsed.done_reason == "length" and parsed.done


def test_responses_output_items_parse_in_the_openai_sdk() -> None:
    done = answer("approval", "", (PENDING,))
    output = responses_render.output_items(done)
    assert [i["type"] for i in output] == ["mcp_call", "mcp_call", "mcp_approval_request"]
    assert output[0]["server_label"] == "fs" and output[0]["name"] == "read" and output[0]["output"] == "hi"
    assert output[1]["server_label"] == "ember" and output[1]["error"]["content"] == "boom"
    assert output[2]["id"] == "apr_1"
    base = {"id": "resp_1", "object": "response", "created_at": 1, "model": "agent/helper", "tools": []}
    base |= {"parallel_tool_calls": True, "tool_choice": "auto"}
    body = responses_render.response_object(
        base, status="completed", output=output, stats=STATS, ember=agent_wire.answer_trace(LABEL, done)
    )
    parsed = openai.types.responses.Response.model_validate(body)
    assert [type(i).__name__ for i in parsed.output] == ["McpCall", "McpCall", "McpApprovalRequest"]
    assert (parsed.model_extra or {})["ember"]["run_id"] == "run_1"


def test_responses_stream_adds_a_finished_item_per_tool_step() -> None:
    base = {"id": "resp_1", "object": "response", "created_at": 1, "model": "agent/helper", "tools": []}
    base |= {"parallel_tool_calls": True, "tool_choice": "auto"}
    renderer = responses_render.StreamRenderer(base)
    events = renderer.start()
    events += renderer.feed(GenerationEvent(step=MODEL))
    events += renderer.feed(GenerationEvent(step=TOOL))
    final = GenerationEvent(done=True, finish_reason="approval", stats=STATS, run_id="run_1", pending=(PENDING,))
    closing, response = renderer.finish(final, {"run_id": "run_1"})
    events += closing
    kinds = [(e["type"], e.get("item", {}).get("type")) for e in events]
    assert kinds[2:] == [
        ("response.output_item.added", "mcp_call"),
        ("response.output_item.done", "mcp_call"),
        ("response.output_item.added", "mcp_approval_request"),
        ("response.output_item.done", "mcp_approval_request"),
        ("response.completed", None),
    ]
    assert [s.kind for s in renderer.steps] == ["model", "tool"]
    assert response["ember"] == {"run_id": "run_1"}
    adapter: TypeAdapter[Any] = TypeAdapter(openai.types.responses.ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)


def _fields(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "up/gpt-test", "messages": [], **body})


@pytest.mark.parametrize(
    ("model", "body", "param"),
    [
        ("up/gpt-test", {"mode_tools": ["shell"]}, "mode_tools"),
        ("up/gpt-test", {"mode_members": ["a"]}, "mode_members"),
        ("up/gpt-test", {"mode": "tools", "mode_tools": ["a", "a"]}, "mode_tools"),
        (
            "up/gpt-test",
            {"approvals": [{"id": "a", "approve": True}, {"id": "a", "approve": False}]},
            "approvals[1].id",
        ),
    ],
)
def test_extension_fields_that_would_change_nothing_are_refused(model: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        agent_wire.agent_fields(model, _fields(**body))
    assert caught.value.param == param


def test_extension_fields_parse() -> None:
    fields = _fields(
        mode="swarm", mode_tools=["shell"], mode_members=["a", "b"], approvals=[{"id": "apr_1", "approve": False}]
    )
    parsed = agent_wire.agent_fields("up/gpt-test", fields)
    assert parsed.mode == "swarm" and parsed.mode_tools == ("shell",) and parsed.mode_members == ("a", "b")
    assert parsed.approvals[0].approval_id == "apr_1" and parsed.approvals[0].approve is False
    with pytest.raises(BadRequest, match="approvals"):
        agent_wire.check_routed(TextRequest(model="up/gpt-test", messages=[], approvals=parsed.approvals))
    agent_wire.check_routed(TextRequest(model="up/gpt-test", messages=[]))  # no fields: nothing to refuse


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "mcp_approval_response", "approve": True}], "input[0].approval_request_id"),
        ([{"type": "mcp_approval_response", "approval_request_id": "a", "approve": 1}], "input[0].approve"),
        (
            [
                {"type": "mcp_approval_response", "approval_request_id": "a", "approve": True},
                {"type": "mcp_approval_response", "approval_request_id": "a", "approve": False},
            ],
            "input[1].approval_request_id",
        ),
    ],
)
def test_responses_approval_items_are_checked(items: list[dict[str, Any]], param: str) -> None:
    body = ResponseCreateRequest.model_validate({"model": "agent/helper", "input": items})
    with pytest.raises(BadRequest) as caught:
        responses_parse.approval_decisions(body)
    assert caught.value.param == param


def test_responses_echoed_agent_items_add_nothing_to_the_prompt() -> None:
    items = [
        {"role": "user", "content": "list"},
        {"type": "mcp_approval_request", "id": "apr_1", "server_label": "ember", "name": "fs_list", "arguments": "{}"},
        {"type": "mcp_approval_response", "approval_request_id": "apr_1", "approve": True, "reason": "ok"},
    ]
    body = ResponseCreateRequest.model_validate({"model": "agent/helper", "input": items})
    messages, origins = responses_parse.input_messages(body, {})
    assert [m.role for m in messages] == ["user"] and origins == ["input[0]"]
    (decision,) = responses_parse.approval_decisions(body)
    assert decision.approval_id == "apr_1" and decision.approve and decision.reason == "ok"
    listed = responses_render.input_items(body)
    assert [i["type"] for i in listed] == ["message", "mcp_approval_request", "mcp_approval_response"]
    assert listed[1]["id"] == "apr_1" and listed[2]["approval_request_id"] == "apr_1"
