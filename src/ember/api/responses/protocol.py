"""Responses API wire models (requests validated here; responses built as plain dicts in render).

Items, parts and tools are loose on purpose (`type: str`, fields optional): parse.py names what is
wrong with one ("input[2] is a 'reasoning' item ...") better than a failed union could. The request
itself keeps unknown top-level fields (`extra="allow"`) so the route can refuse each by name, as
OpenAI does with `unknown_parameter`, instead of answering a question the client did not ask.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ember.api.agent_wire import ModeFields


class _Wire(BaseModel):
    # Inside items: fields a client echoes back from an earlier response (id, status,
    # annotations, logprobs) change nothing and are ignored.
    model_config = ConfigDict(extra="ignore")


class ContentPartIn(_Wire):
    type: str  # input_text, output_text, refusal; input_image, input_file are refused
    text: str | None = None
    refusal: str | None = None
    image_url: str | None = None
    file_id: str | None = None


class InputItem(_Wire):
    """A message (`type` "message" or absent), a function_call or a function_call_output; for
    agent runs an mcp_approval_response, and mcp_call / mcp_approval_request items echoed back
    from an earlier response's output."""

    type: str | None = None
    id: str | None = None  # kept for input_items; never sent to the model
    role: str | None = None
    content: str | list[ContentPartIn] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPartIn] | None = None
    server_label: str | None = None  # mcp_call, mcp_approval_request
    error: Any = None  # mcp_call
    approval_request_id: str | None = None  # mcp_approval_response: the request it answers
    approve: Any = None  # mcp_approval_response: a boolean (parse.py says so when it is not)
    reason: str | None = None  # mcp_approval_response


class ToolIn(_Wire):
    type: str  # function; built-in tools (web_search, file_search, mcp, ...) are refused
    name: str | None = None
    description: str | None = None
    parameters: Any = None  # a JSON schema of the arguments object (checked by the service)
    strict: bool | None = None  # OpenAI's default for Responses function tools is true
    function: Any = None  # the chat-completions shape, refused with a hint


class AllowedTool(_Wire):
    type: str
    name: str | None = None


class ToolChoiceIn(_Wire):
    type: str  # function or allowed_tools; built-in tool types are refused
    name: str | None = None  # function
    mode: str | None = None  # allowed_tools: auto or required
    tools: list[AllowedTool] | None = None  # allowed_tools: the functions the model may call


class FormatIn(_Wire):
    type: str  # text, json_object, json_schema
    name: str | None = None
    description: str | None = None
    schema_: Any = Field(None, alias="schema")
    strict: bool | None = None


class TextConfigIn(_Wire):
    format: FormatIn | None = None
    verbosity: str | None = None  # a hint: accepted and named in X-Ember-Dropped-Fields


class ReasoningIn(_Wire):
    effort: str | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ResponseCreateRequest(ModeFields):
    # ModeFields: ember's agent extension (mode, mode_tools, mode_members); approvals come as
    # mcp_approval_response input items.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[ToolIn] | None = None
    tool_choice: str | ToolChoiceIn | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfigIn | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    stream: bool = False
    store: bool | None = None  # None: stored, as OpenAI does by default
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Accepted and harmless: they route, label or bill a request elsewhere, never change the text.
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    stream_options: dict[str, Any] | None = None
    # Refused where set to something ember cannot do (routes._refuse_unsupported).
    truncation: str | None = None
    background: bool | None = None
    reasoning: ReasoningIn | None = None
    include: list[str] | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    conversation: Any = None
    prompt: Any = None
