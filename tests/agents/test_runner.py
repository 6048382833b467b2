"""The agent runner end to end: the real server, the real openai client, the scripted upstream as
the agents' model (and, once, the real default model with forced tool calls)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.agents.conftest import MODEL, agent_toml, history, script, start_agent_server, tool_call
from tests.conftest import ServerHandle
from tests.gateway.conftest import UpstreamHandle

AGENTS = f"""
[tools.shell]
allow = ["echo", "sleep"]
timeout = 5

[[agents]]
name = "helper"
model = "{MODEL}"
instructions = "You help."
tools = ["shell"]

[[agents]]
name = "short"
model = "{MODEL}"
tools = ["shell"]
max_steps = 2

[[agents]]
name = "hurried"
model = "{MODEL}"
tools = ["shell"]
deadline = "1s"

[[agents]]
name = "plain"
model = "{MODEL}"
"""


@pytest.fixture(scope="module")
def server(upstream: UpstreamHandle, agent_logs: Path) -> Iterator[ServerHandle]:
    handle = start_agent_server(agent_logs, agent_toml(upstream, AGENTS))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)


def _ember(response: openai.types.chat.ChatCompletion) -> dict:
    extra = response.model_extra or {}
    return extra.get("ember") or {}


def test_two_step_loop(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("shell", argv=["echo", "hello"])]}, {"text": "It said hello."})
    response = client.chat.completions.create(
        model="agent/helper", messages=[{"role": "user", "content": "run echo"}], max_tokens=20
    )
    assert response.choices[0].message.content == "It said hello."
    assert response.choices[0].finish_reason == "stop"
    sent = history(scripted)
    assert len(sent) == 2
    first, second = sent[0]["body"], sent[1]["body"]
    assert first["messages"][0] == {"role": "system", "content": "You help."}
    assert [t["function"]["name"] for t in first["tools"]] == ["shell"]
    tool_message = second["messages"][-1]
    assert tool_message["role"] == "tool"
    assert "hello" in tool_message["content"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "shell"
