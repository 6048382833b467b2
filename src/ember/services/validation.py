"""Checks of a neutral request that hold whatever protocol it came in: each failure is a 400
naming the offending field, raised before anything is generated."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ember.errors import BadRequest
from ember.services.types import CHAT_ROLES, ChatMessage, TextRequest

MAX_TOP_LOGPROBS = 20


def validate_request(request: TextRequest) -> None:
    """Messages, tools, tool choice, the tool-call history, the response format, logprobs."""
    if request.messages is not None:
        validate_messages(request.messages)
    names = set()
    for i, tool in enumerate(request.tools):
        if not tool.name:
            raise BadRequest(f"tools[{i}] has no name", param=f"tools[{i}].name")
        if tool.name in names:
            raise BadRequest(f"tools[{i}]: the name '{tool.name}' is used twice", param=f"tools[{i}].name")
        names.add(tool.name)
        check_schema(tool.parameters, f"tools[{i}].parameters", want_object=True)
    choice = request.tool_choice
    if choice.mode == "function" and choice.name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise BadRequest(
            f"tool_choice names the function '{choice.name}', which is not in tools (tools: {known})",
            param="tool_choice",
        )
    if choice.mode == "required" and not names:
        raise BadRequest("tool_choice 'required' needs at least one tool in tools", param="tool_choice")
    if request.messages is not None:
        _check_tool_history(request.messages)
    form = request.response_format
    if form.type == "json_schema":
        if form.schema is None:
            raise BadRequest("response_format json_schema needs a schema", param="response_format")
        check_schema(form.schema, "response_format.schema", want_object=False)
    if request.logprobs is not None and not 0 <= request.logprobs.top <= MAX_TOP_LOGPROBS:
        raise BadRequest(
            f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {request.logprobs.top}", param="top_logprobs"
        )


def validate_messages(messages: list[ChatMessage]) -> None:
    if not messages:
        raise BadRequest("messages must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise BadRequest(
                f"messages[{i}].role '{message.role}' is not one of {', '.join(sorted(CHAT_ROLES))}",
                param=f"messages[{i}].role",
            )


def check_schema(schema: Any, where: str, *, want_object: bool) -> None:
    """A JSON schema (draft 2020-12 meta-schema); tool parameters must describe an object."""
    if not isinstance(schema, dict):
        raise BadRequest(f"{where} must be a JSON schema (an object), not {type(schema).__name__}", param=where)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = "".join(f"[{p!r}]" for p in exc.path)
        raise BadRequest(
            f"{where} is not a valid JSON schema: {exc.message}" + (f" (at {path})" if path else ""), param=where
        ) from None
    if want_object and schema.get("type", "object") != "object":
        raise BadRequest(f"{where} must describe an object (type 'object'), not {schema.get('type')!r}", param=where)


def _check_tool_history(messages: list[ChatMessage]) -> None:
    """Every tool result answers a call an earlier assistant message made."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        if message.role == "assistant":
            calls.update(call.id for call in message.tool_calls if call.id)
        elif message.role == "tool" and message.tool_call_id is not None and message.tool_call_id not in calls:
            raise BadRequest(
                f"messages[{i}] is a tool result for tool_call_id '{message.tool_call_id}', "
                "which no earlier assistant message called",
                param=f"messages[{i}].tool_call_id",
            )
