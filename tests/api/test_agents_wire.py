"""Agents on every protocol's wire, end to end: the real server, the real openai, anthropic and
ollama clients (httpx where the ollama client cannot send or show ember's fields), and the
scripted fake upstream as the agents' model. One scripted tool step, then an answer: the answer
arrives, the trace is in each protocol's place, each SDK parses all of it; a plain model in a
mode; the listings; bad extension values as each protocol's 400; a pending approval and the
follow-up that resumes the run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from tests.agents.conftest import MODEL, agent_toml, history, script, start_agent_server, tool_call
from tests.conftest import ServerHandle
from tests.gateway.conftest import UpstreamHandle, start_upstream

AGENTS = f"""
[tools.fs]
root = "files"

[[agents]]
name = "helper"
model = "{MODEL}"
instructions = "You help."
tools = ["fs_read", "fs_list"]

[[agents]]
name = "careful"
model = "{MODEL}"
tools = ["fs_list"]
require_approval = ["fs_list"]
"""
ASK = [{"role": "user", "content": "what does the note say?"}]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamHandle]:
    handle = start_upstream(tmp_path_factory.mktemp("agents-wire-upstream"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def server(upstream: UpstreamHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    logs = tmp_path_factory.mktemp("agents-wire")
    home = logs / "home"
    (home / "files").mkdir(parents=True)
    (home / "files" / "note.txt").write_text("the note says 42\n", encoding="utf-8")
    handle = start_agent_server(logs, agent_toml(upstream, AGENTS), home=home)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def scripted(upstream: UpstreamHandle) -> Iterator[UpstreamHandle]:
    """A tool step (fs_read of the note), then the answer."""
    upstream.reset()
    script(upstream, {"tool_calls": [tool_call("fs_read", path="note.txt")]}, {"text": "It says 42."})
    yield upstream
    upstream.reset()


@pytest.fixture
def gated(upstream: UpstreamHandle) -> Iterator[UpstreamHandle]:
    """A call of fs_list, which agent/careful must have approved, then the answer."""
    upstream.reset()
    script(upstream, {"tool_calls": [tool_call("fs_list")]}, {"text": "One file."})
    yield upstream
    upstream.reset()


def _openai(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)


def _anthropic(server: ServerHandle) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="none", max_retries=0)


def _extra(model: Any) -> dict[str, Any]:
    return dict(model.model_extra or {})


def _check_trace(ember: dict[str, Any], *, steps: bool = True) -> None:
    assert ember["agent"] == "helper" and ember["mode"] == "tools" and ember["finish_reason"] == "stop"
    assert ember["run_id"].startswith("run_") and ember["pending_approvals"] == []
    if steps:
        assert [s["kind"] for s in ember["steps"]] == ["model", "tool", "model"]
        tool = ember["steps"][1]
        assert tool["name"] == "fs_read" and "42" in tool["result"] and not tool["is_error"]
        assert json.loads(tool["arguments"]) == {"path": "note.txt"}


def _tool_steps(steps: list[dict[str, Any]]) -> list[str]:
    return [s["name"] for s in steps if s["kind"] == "tool"]


# -- one tool step, then the answer, on each protocol ------------------------------------------


def test_chat_completions(scripted: UpstreamHandle, server: ServerHandle) -> None:
    completion = _openai(server).chat.completions.create(model="agent/helper", messages=ASK, max_tokens=20)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "It says 42."
    assert completion.choices[0].finish_reason == "stop"
    _check_trace(_extra(completion)["ember"])


def test_chat_completions_stream(scripted: UpstreamHandle, server: ServerHandle) -> None:
    steps: list[dict[str, Any]] = []
    closing: dict[str, Any] = {}
    with _openai(server).chat.completions.stream(model="agent/helper", messages=ASK, max_tokens=20) as stream:  # type: ignore[arg-type]
        for event in stream:
            if event.type == "chunk":
                ember = _extra(event.chunk).get("ember", {})
                if "step" in ember:
                    assert event.chunk.choices == []
                    steps.append(ember["step"])
                elif ember:
                    closing = ember
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "It says 42."
    assert _tool_steps(steps) == ["fs_read"] and [s["index"] for s in steps] == [0, 1, 2]
    _check_trace(closing, steps=False)
    assert "steps" not in closing


def test_ollama_chat(scripted: UpstreamHandle, server: ServerHandle) -> None:
    client = ollama.Client(host=server.base_url)
    reply = client.chat(model="agent/helper", messages=ASK)
    assert reply.message.content == "It says 42." and reply.done_reason == "stop"
    # The ollama client drops fields it does not know: the trace is read as JSON.
    script(scripted, {"tool_calls": [tool_call("fs_read", path="note.txt")]}, {"text": "It says 42."})
    body = {"model": "agent/helper", "messages": ASK, "stream": False}
    raw = httpx.post(server.url("/api/chat"), json=body, timeout=30).json()
    assert raw["message"]["content"] == "It says 42."
    _check_trace(raw["ember"])


def test_ollama_chat_stream(scripted: UpstreamHandle, server: ServerHandle) -> None:
    parts = list(ollama.Client(host=server.base_url).chat(model="agent/helper", messages=ASK, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "It says 42." and parts[-1].done
    script(scripted, {"tool_calls": [tool_call("fs_read", path="note.txt")]}, {"text": "It says 42."})
    with httpx.stream("POST", server.url("/api/chat"), json={"model": "agent/helper", "messages": ASK}) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    stepping = [line for line in lines if "step" in line.get("ember", {})]
    assert _tool_steps([line["ember"]["step"] for line in stepping]) == ["fs_read"]
    assert all(line["message"] == {"role": "assistant", "content": ""} and not line["done"] for line in stepping)
    assert lines[-1]["done"] and lines[-1]["done_reason"] == "stop"
    _check_trace(lines[-1]["ember"], steps=False)


def test_anthropic_messages(scripted: UpstreamHandle, server: ServerHandle) -> None:
    message = _anthropic(server).messages.create(model="agent/helper", max_tokens=20, messages=ASK)  # type: ignore[arg-type]
    assert message.content[0].type == "text" and message.content[0].text == "It says 42."
    assert message.stop_reason == "end_turn"
    _check_trace(_extra(message)["ember"])


def test_anthropic_messages_stream(scripted: UpstreamHandle, server: ServerHandle) -> None:
    steps: list[dict[str, Any]] = []
    closing: dict[str, Any] = {}
    with _anthropic(server).messages.stream(model="agent/helper", max_tokens=20, messages=ASK) as stream:  # type: ignore[arg-type]
        for event in stream:
            if event.type == "ember_step":  # type: ignore[comparison-overlap]
                steps.append(_extra(event)["step"])
            elif event.type == "message_delta":
                closing = _extra(event)["ember"]
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "It says 42."
    assert _tool_steps(steps) == ["fs_read"]
    _check_trace(closing, steps=False)


def test_responses(scripted: UpstreamHandle, server: ServerHandle) -> None:
    client = _openai(server)
    response = client.responses.create(model="agent/helper", input="what does the note say?", max_output_tokens=20)
    assert response.output_text == "It says 42." and response.status == "completed"
    assert [item.type for item in response.output] == ["mcp_call", "message"]
    call = response.output[0]
    assert call.type == "mcp_call" and call.server_label == "ember" and call.name == "fs_read"
    assert call.output is not None and "42" in call.output and call.error is None
    _check_trace(_extra(response)["ember"])
    stored = client.responses.retrieve(response.id)  # stored with its items and trace
    assert [item.type for item in stored.output] == ["mcp_call", "message"] and "ember" in _extra(stored)
    # A follow-up on the stored response is that conversation plus the new input.
    script(scripted, {"text": "You are welcome."})
    follow = client.responses.create(
        model="agent/helper", input="thanks", previous_response_id=response.id, max_output_tokens=20
    )
    assert follow.output_text == "You are welcome."
    sent = history(scripted)[-1]["body"]["messages"]
    assert [m["role"] for m in sent][-3:] == ["user", "assistant", "user"] and sent[-2]["content"] == "It says 42."


def test_responses_stream(scripted: UpstreamHandle, server: ServerHandle) -> None:
    with _openai(server).responses.stream(
        model="agent/helper", input="what does the note say?", max_output_tokens=20
    ) as stream:
        added = [event.item.type for event in stream if event.type == "response.output_item.added"]
        final = stream.get_final_response()
    assert added == ["mcp_call", "message"]
    assert final.output_text == "It says 42." and [i.type for i in final.output] == ["mcp_call", "message"]
    _check_trace(_extra(final)["ember"])


def test_plain_model_in_a_mode(scripted: UpstreamHandle, server: ServerHandle) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_list")]}, {"text": "One file."})
    response = _openai(server).responses.create(
        model=MODEL, input="list", max_output_tokens=20, extra_body={"mode": "tools", "mode_tools": ["fs_list"]}
    )
    assert response.output_text == "One file."
    ember = _extra(response)["ember"]
    assert ember["agent"] == "mode:tools" and ember["mode"] == "tools" and _tool_steps(ember["steps"]) == ["fs_list"]
    assert [t["function"]["name"] for t in history(scripted)[0]["body"]["tools"]] == ["fs_list"]
    # Without the fields nothing changes: one model call, no trace.
    script(scripted, {"text": "Plain."})
    plain = _openai(server).chat.completions.create(model=MODEL, messages=ASK, max_tokens=20)  # type: ignore[arg-type]
    assert plain.choices[0].message.content == "Plain." and "ember" not in _extra(plain)
    assert "tools" not in history(scripted)[-1]["body"]


# -- listing ------------------------------------------------------------------------------------


def test_agents_are_listed(server: ServerHandle) -> None:
    client = _openai(server)
    cards = {m.id: m for m in client.models.list()}
    assert cards["agent/helper"].owned_by == "ember-agent" and "agent/careful" in cards
    assert client.models.retrieve("agent/helper").owned_by == "ember-agent"
    tags = {m.model: m for m in ollama.Client(host=server.base_url).list().models}
    details = tags["agent/helper"].details
    assert details is not None and details.parent_model == MODEL and details.family == "tools"
    assert details.format == "agent"
    shown = ollama.Client(host=server.base_url).show("agent/helper")
    assert shown.details is not None and shown.details.parent_model == MODEL


# -- bad extension values: 400s in each protocol's error format -------------------------------


def test_bad_values_are_400s_in_each_format(upstream: UpstreamHandle, server: ServerHandle) -> None:
    upstream.reset()
    chat = {"model": "agent/helper", "messages": ASK}
    response = httpx.post(
        server.url("/v1/chat/completions"), json={**chat, "approvals": [{"id": "a", "approve": "yes"}]}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "approvals[0].approve"
    response = httpx.post(server.url("/v1/chat/completions"), json={**chat, "n": 2}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"
    response = httpx.post(server.url("/api/chat"), json={**chat, "approvals": [{"id": "a", "approve": 1}]}, timeout=30)
    assert response.status_code == 400 and "approvals[0].approve" in response.json()["error"]
    response = httpx.post(server.url("/api/chat"), json={**chat, "mode_tools": "fs_list"}, timeout=30)
    assert response.status_code == 400 and "mode_tools" in response.json()["error"]
    response = httpx.post(server.url("/api/chat"), json={**chat, "model": MODEL, "mode_tools": ["fs_list"]}, timeout=30)
    assert response.status_code == 400 and "needs a 'mode'" in response.json()["error"]
    response = httpx.post(server.url("/v1/messages"), json={**chat, "max_tokens": 5, "mode": 5}, timeout=30)
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"
    response = httpx.post(server.url("/v1/messages"), json={**chat, "max_tokens": 5, "mode": "dreaming"}, timeout=30)
    assert response.status_code == 400 and "mode" in response.json()["error"]["message"]
    item = {"type": "mcp_approval_response", "approval_request_id": "apr_x", "approve": "yes"}
    response = httpx.post(
        server.url("/v1/responses"), json={"model": "agent/helper", "input": [ASK[0], item]}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "input[1].approve"
    response = httpx.post(
        server.url("/v1/responses"), json={"model": "agent/helper", "input": [{**item, "approve": True}]}, timeout=30
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "input"
    response = httpx.post(
        server.url("/v1/responses"),
        json={"model": "agent/helper", "input": "x", "approvals": [{"id": "apr_x", "approve": True}]},
        timeout=30,
    )
    assert response.status_code == 400 and "mcp_approval_response" in response.json()["error"]["message"]
    response = httpx.post(server.url("/v1/completions"), json={"model": "agent/helper", "prompt": "x"}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"
    response = httpx.post(server.url("/api/generate"), json={"model": "agent/helper", "prompt": "x"}, timeout=30)
    assert response.status_code == 400 and "/api/chat" in response.json()["error"]
    # An empty chat preloads a model: an agent has nothing to load, an unknown one is a 404.
    loaded = httpx.post(server.url("/api/chat"), json={"model": "agent/helper", "messages": []}, timeout=30)
    assert loaded.status_code == 200 and loaded.json()["done_reason"] == "load"
    missing = httpx.post(server.url("/api/chat"), json={"model": "agent/nobody", "messages": []}, timeout=30)
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]
    assert history(upstream) == []  # all refused before any model call


# -- a pending approval, and the follow-up that resumes the run --------------------------------


def _pending(ember: dict[str, Any]) -> dict[str, Any]:
    assert ember["finish_reason"] == "approval" and ember["agent"] == "careful"
    (pending,) = ember["pending_approvals"]
    assert pending["tool"] == "fs_list" and pending["id"] and pending["call_id"]
    return pending


def test_approval_on_chat_completions(gated: UpstreamHandle, server: ServerHandle) -> None:
    client = _openai(server)
    paused = client.chat.completions.create(model="agent/careful", messages=ASK, max_tokens=20)  # type: ignore[arg-type]
    assert paused.choices[0].finish_reason == "stop"  # ember ran no tool the client must run
    pending = _pending(_extra(paused)["ember"])
    done = client.chat.completions.create(
        model="agent/careful",
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=20,
        extra_body={"approvals": [{"id": pending["id"], "approve": True}]},
    )
    assert done.choices[0].message.content == "One file."
    ember = _extra(done)["ember"]
    assert ember["run_id"] == _extra(paused)["ember"]["run_id"] and ember["finish_reason"] == "stop"
    assert "fs_list" in _tool_steps(ember["steps"])


def test_approval_on_ollama_chat(gated: UpstreamHandle, server: ServerHandle) -> None:
    body: dict[str, Any] = {"model": "agent/careful", "messages": ASK, "stream": False}
    paused = httpx.post(server.url("/api/chat"), json=body, timeout=30).json()
    assert paused["done_reason"] == "stop"
    pending = _pending(paused["ember"])
    body["approvals"] = [{"id": pending["id"], "approve": True}]
    with httpx.stream("POST", server.url("/api/chat"), json={**body, "stream": True}, timeout=30) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert "".join(line["message"]["content"] for line in lines) == "One file."
    assert lines[-1]["ember"]["run_id"] == paused["ember"]["run_id"]


def test_approval_on_anthropic_messages(gated: UpstreamHandle, server: ServerHandle) -> None:
    client = _anthropic(server)
    closing: dict[str, Any] = {}
    with client.messages.stream(model="agent/careful", max_tokens=20, messages=ASK) as stream:  # type: ignore[arg-type]
        for event in stream:
            if event.type == "message_delta":
                closing = _extra(event)["ember"]
        paused = stream.get_final_message()
    assert paused.stop_reason == "pause_turn"
    pending = _pending(closing)
    done = client.messages.create(
        model="agent/careful",
        max_tokens=20,
        messages=ASK,  # type: ignore[arg-type]
        extra_body={"approvals": [{"id": pending["id"], "approve": True}]},
    )
    assert done.content[0].type == "text" and done.content[0].text == "One file."
    assert done.stop_reason == "end_turn" and _extra(done)["ember"]["run_id"] == closing["run_id"]


def test_approval_on_responses(gated: UpstreamHandle, server: ServerHandle) -> None:
    client = _openai(server)
    paused = client.responses.create(model="agent/careful", input="list the files", max_output_tokens=20)
    assert paused.status == "completed"
    assert [item.type for item in paused.output] == ["message", "mcp_approval_request"]  # the message says why
    request = paused.output[-1]
    assert request.type == "mcp_approval_request" and request.name == "fs_list" and request.server_label == "ember"
    assert request.id == _pending(_extra(paused)["ember"])["id"]
    with client.responses.stream(
        model="agent/careful",
        previous_response_id=paused.id,
        input=[{"type": "mcp_approval_response", "approval_request_id": request.id, "approve": True}],
        max_output_tokens=20,
    ) as stream:
        added = [event.item.type for event in stream if event.type == "response.output_item.added"]
        done = stream.get_final_response()
    assert added == ["mcp_call", "message"] and done.output_text == "One file."
    assert [item.type for item in done.output] == ["mcp_call", "message"]
    assert _extra(done)["ember"]["run_id"] == _extra(paused)["ember"]["run_id"]
    items = client.responses.input_items.list(done.id).data
    assert [item.type for item in items] == ["mcp_approval_response"]
    # The conversation goes on from the resumed run's answer (the paused note is no turn of it).
    script(gated, {"text": "Bye."})
    client.responses.create(model="agent/careful", input="thanks", previous_response_id=done.id, max_output_tokens=20)
    sent = [(m["role"], m["content"]) for m in history(gated)[-1]["body"]["messages"]]
    assert sent[-3:] == [("user", "list the files"), ("assistant", "One file."), ("user", "thanks")]


def test_denied_approval_ends_the_run(gated: UpstreamHandle, server: ServerHandle, tmp_path: Path) -> None:
    client = _openai(server)
    paused = client.chat.completions.create(model="agent/careful", messages=ASK, max_tokens=20)  # type: ignore[arg-type]
    pending = _pending(_extra(paused)["ember"])
    done = client.chat.completions.create(
        model="agent/careful",
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=20,
        extra_body={"approvals": [{"id": pending["id"], "approve": False, "reason": "not now"}]},
    )
    ember = _extra(done)["ember"]
    assert ember["pending_approvals"] == [] and ember["run_id"] == _extra(paused)["ember"]["run_id"]
    assert any(s["kind"] == "approval" for s in ember["steps"]), ember["steps"]
