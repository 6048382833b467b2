"""Responses API requests -> the neutral request's parts (services/types.py).

What only the Responses shapes can get wrong is refused here, each with the `input[i]...` path
of the offending field; checks every protocol shares are services/validation.py's.
"""

from __future__ import annotations

import re

from ember.api.responses.protocol import ContentPartIn, InputItem, ResponseCreateRequest, ToolChoiceIn
from ember.errors import BadRequest, UnsupportedParameter
from ember.services.types import (
    ApprovalDecision,
    ChatMessage,
    ContentPart,
    ImagePart,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from ember.services.validation import check_schema

MESSAGE_ROLES = ("user", "assistant", "system", "developer")
# `include` values ember honours: encrypted reasoning is empty for models that do not reason.
HARMLESS_INCLUDES = frozenset({"reasoning.encrypted_content"})
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512
_FORMAT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for a json_schema format's name
# An agent run's output items, sent back as input (a client that keeps `input += output`): the
# run keeps its own record of them (its RunState and trace), so they add nothing to the prompt.
AGENT_ECHOES = frozenset({"mcp_call", "mcp_approval_request"})
APPROVAL_RESPONSE = "mcp_approval_response"


def refuse_unsupported(body: ResponseCreateRequest) -> None:
    """A field that would change the answer but that ember cannot act on is a 400 naming it,
    never a quiet answer to another question; an unknown field is one too (as at OpenAI)."""
    unknown = next(iter(body.model_extra or {}), None)
    if unknown is not None:
        hint = " (on /v1/responses approvals are mcp_approval_response input items)" if unknown == "approvals" else ""
        raise BadRequest(f"unknown parameter '{unknown}'{hint}", param=unknown, code="unknown_parameter")
    if body.background:
        raise UnsupportedParameter(
            "'background' responses are not supported: send the request without it (or stream it)", param="background"
        )
    reasoning = body.reasoning
    if reasoning is not None and reasoning.effort not in (None, "none"):
        raise UnsupportedParameter(
            f"'reasoning.effort' {reasoning.effort!r} is not supported: model '{body.model}' does not reason",
            param="reasoning.effort",
        )
    if reasoning is not None and (reasoning.summary or reasoning.generate_summary):
        raise UnsupportedParameter(
            f"'reasoning.summary' is not supported: model '{body.model}' does not reason", param="reasoning.summary"
        )
    for i, value in enumerate(body.include or ()):
        if value not in HARMLESS_INCLUDES:
            raise UnsupportedParameter(f"include[{i}] {value!r} is not supported", param=f"include[{i}]")
    if body.truncation not in (None, "disabled"):
        raise UnsupportedParameter(
            "'truncation' 'auto' is not supported: a prompt over the context is refused, never cut", param="truncation"
        )
    if body.top_logprobs:
        raise UnsupportedParameter("'top_logprobs' is not supported on /v1/responses", param="top_logprobs")
    if body.max_tool_calls is not None:
        raise UnsupportedParameter("'max_tool_calls' is not supported", param="max_tool_calls")
    if body.conversation is not None:
        raise UnsupportedParameter(
            "'conversation' is not supported: continue with previous_response_id", param="conversation"
        )
    if body.prompt is not None:
        raise UnsupportedParameter("'prompt' (stored prompt templates) is not supported", param="prompt")
    _check_metadata(body.metadata or {})


def _check_metadata(metadata: dict[str, str]) -> None:
    if len(metadata) > _METADATA_PAIRS:
        raise BadRequest(f"metadata has {len(metadata)} pairs, at most {_METADATA_PAIRS}", param="metadata")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY:
            raise BadRequest(f"metadata key {key[:20]!r}... is longer than {_METADATA_KEY}", param="metadata")
        if len(value) > _METADATA_VALUE:
            raise BadRequest(f"metadata[{key!r}] is longer than {_METADATA_VALUE} characters", param="metadata")


def input_messages(body: ResponseCreateRequest, earlier_calls: dict[str, str]) -> tuple[list[ChatMessage], list[str]]:
    """The request's `input` as messages, and for each the field it came from ("input[2]"), for
    errors the service raises about a message. `earlier_calls` (call_id -> function name) are
    the calls of the conversation it continues; a function_call_output must answer one of
    those or a function_call earlier in this input."""
    if body.input is None:
        raise BadRequest("missing required field 'input'", param="input")
    if isinstance(body.input, str):
        if not body.input:
            raise BadRequest("input must not be empty", param="input")
        return [ChatMessage(role="user", content=body.input)], ["input"]
    if not body.input:
        raise BadRequest("input must contain at least one item", param="input")
    calls = dict(earlier_calls)
    messages: list[ChatMessage] = []
    origins: list[str] = []
    for i, item in enumerate(body.input):
        kind = item.type or ("message" if item.role is not None else None)
        if kind == "message":
            messages.append(_message(i, item))
        elif kind == "function_call":
            call = _function_call(i, item)
            calls[call.id] = call.name
            _add_call(messages, call)
        elif kind == "function_call_output":
            messages.append(_function_output(i, item, calls))
        elif kind in AGENT_ECHOES or kind == APPROVAL_RESPONSE:
            pass  # see AGENT_ECHOES; the approvals are approval_decisions'
        elif kind is None:
            raise BadRequest(f"input[{i}] has neither a type nor a role", param=f"input[{i}].type")
        else:
            raise BadRequest(
                f"input[{i}] is a '{kind}' item: ember takes message, function_call, function_call_output "
                "and (for agent runs) mcp_approval_response items",
                param=f"input[{i}].type",
            )
        origins += [f"input[{i}]"] * (len(messages) - len(origins))
    return messages, origins


def approval_decisions(body: ResponseCreateRequest) -> tuple[ApprovalDecision, ...]:
    """The input's mcp_approval_response items: the decisions a paused agent run resumes with."""
    out: list[ApprovalDecision] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(body.input if isinstance(body.input, list) else ()):
        if item.type != APPROVAL_RESPONSE:
            continue
        ident = item.approval_request_id
        if not ident:
            raise BadRequest(
                f"input[{i}] is an mcp_approval_response without 'approval_request_id'",
                param=f"input[{i}].approval_request_id",
            )
        if not isinstance(item.approve, bool):
            raise BadRequest(
                f"input[{i}].approve must be true or false, not {item.approve!r}", param=f"input[{i}].approve"
            )
        if ident in seen:
            raise BadRequest(
                f"input[{i}] answers approval request '{ident}', which input[{seen[ident]}] answers already",
                param=f"input[{i}].approval_request_id",
            )
        seen[ident] = i
        out.append(ApprovalDecision(approval_id=ident, approve=item.approve, reason=item.reason))
    return tuple(out)


def _message(i: int, item: InputItem) -> ChatMessage:
    if item.role not in MESSAGE_ROLES:
        raise BadRequest(
            f"input[{i}].role {item.role!r} is not one of {', '.join(MESSAGE_ROLES)}", param=f"input[{i}].role"
        )
    if item.content is None:
        raise BadRequest(f"input[{i}] is a message without content", param=f"input[{i}].content")
    texts, attachments = _parts(item.content, f"input[{i}].content")
    return ChatMessage(role=item.role, content="".join(texts), attachments=tuple(attachments))


def _parts(content: str | list[ContentPartIn], where: str) -> tuple[list[str], list[ContentPart]]:
    if isinstance(content, str):
        return [content], []
    texts: list[str] = []
    attachments: list[ContentPart] = []
    for j, part in enumerate(content):
        if part.type in ("input_text", "output_text"):
            if part.text is None:
                raise BadRequest(f"{where}[{j}] is an '{part.type}' part without text", param=f"{where}[{j}].text")
            texts.append(part.text)
        elif part.type == "refusal":
            texts.append(part.refusal or "")
        elif part.type == "input_image" and part.image_url:
            attachments.append(ImagePart(source=part.image_url))  # the provider decides if it can see it
        else:
            what = "an input_image by file_id" if part.type == "input_image" else f"a '{part.type}' part"
            raise UnsupportedParameter(
                f"{where}[{j}] is {what}: ember takes input_text, output_text and input_image (image_url) parts",
                param=f"{where}[{j}].type",
            )
    return texts, attachments


def _function_call(i: int, item: InputItem) -> ToolCall:
    for field in ("call_id", "name"):
        if not getattr(item, field):
            raise BadRequest(f"input[{i}] is a function_call without '{field}'", param=f"input[{i}].{field}")
    assert item.call_id is not None and item.name is not None
    return ToolCall(id=item.call_id, name=item.name, arguments=item.arguments or "{}")


def _add_call(messages: list[ChatMessage], call: ToolCall) -> None:
    """Calls of one turn join the assistant message just before them, as chat completions
    carry them: one assistant message with its text and its calls."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = ChatMessage(
            role="assistant", content=last.content, attachments=last.attachments, tool_calls=(*last.tool_calls, call)
        )
    else:
        messages.append(ChatMessage(role="assistant", tool_calls=(call,)))


def _function_output(i: int, item: InputItem, calls: dict[str, str]) -> ChatMessage:
    if not item.call_id:
        raise BadRequest(f"input[{i}] is a function_call_output without 'call_id'", param=f"input[{i}].call_id")
    if item.call_id not in calls:
        raise BadRequest(
            f"input[{i}] is the output of call_id '{item.call_id}', which no earlier function_call made",
            param=f"input[{i}].call_id",
        )
    if item.output is None:
        raise BadRequest(f"input[{i}] is a function_call_output without 'output'", param=f"input[{i}].output")
    texts, attachments = _parts(item.output, f"input[{i}].output")
    return ChatMessage(
        role="tool",
        content="".join(texts),
        attachments=tuple(attachments),
        tool_call_id=item.call_id,
        name=calls[item.call_id],
    )


def tools(body: ResponseCreateRequest, *, narrowed: bool = True) -> tuple[Tool, ...]:
    """The function tools; `narrowed`: only those an `allowed_tools` tool choice allows."""
    allowed = _allowed_tools(body) if narrowed else None
    out = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type != "function":
            raise UnsupportedParameter(
                f"tools[{i}] is a '{tool.type}' tool: ember runs no built-in tools; declare a function tool",
                param=f"tools[{i}].type",
            )
        if not tool.name:
            hint = " (Responses tools are flat: {type, name, parameters}, not {type, function: {...}})"
            raise BadRequest(
                f"tools[{i}] has no name" + (hint if tool.function is not None else ""), param=f"tools[{i}].name"
            )
        if allowed is not None and tool.name not in allowed:
            continue  # allowed_tools: the model is offered only those
        out.append(
            Tool(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}},
                strict=tool.strict is not False,
            )
        )
    return tuple(out)


def _allowed_tools(body: ResponseCreateRequest) -> set[str] | None:
    """The names an `allowed_tools` tool choice lets the model call (None: every tool)."""
    choice = body.tool_choice
    if not isinstance(choice, ToolChoiceIn) or choice.type != "allowed_tools":
        return None
    declared = {t.name for t in body.tools or () if t.type == "function"}
    names = set()
    for i, tool in enumerate(choice.tools or ()):
        if tool.type != "function" or not tool.name:
            raise UnsupportedParameter(
                f"tool_choice.tools[{i}] must be a function with a name ({{type: function, name}})",
                param=f"tool_choice.tools[{i}]",
            )
        if tool.name not in declared:
            raise BadRequest(
                f"tool_choice.tools[{i}] names the function '{tool.name}', which is not in tools",
                param=f"tool_choice.tools[{i}].name",
            )
        names.add(tool.name)
    if not names:
        raise BadRequest("tool_choice of type 'allowed_tools' needs at least one tool", param="tool_choice.tools")
    return names


def tool_choice(body: ResponseCreateRequest) -> ToolChoice:
    choice: str | ToolChoiceIn | None = body.tool_choice
    if choice is None or choice == "auto":
        return ToolChoice()
    if choice == "none":
        return ToolChoice(mode="none")
    if choice == "required":
        return ToolChoice(mode="required")
    if isinstance(choice, str):
        raise BadRequest(
            f"tool_choice {choice!r} is not one of auto, none, required or {{type: function, name}}",
            param="tool_choice",
        )
    if choice.type == "allowed_tools":  # the tools themselves are narrowed in tools()
        if choice.mode not in ("auto", "required"):
            raise BadRequest(f"tool_choice.mode {choice.mode!r} is not one of auto, required", param="tool_choice.mode")
        return ToolChoice(mode="required" if choice.mode == "required" else "auto")
    if choice.type != "function":
        raise UnsupportedParameter(
            f"tool_choice of type '{choice.type}' is not supported: use auto, none, required, a function "
            "or allowed_tools",
            param="tool_choice.type",
        )
    if not choice.name:
        raise BadRequest("tool_choice of type 'function' needs a name", param="tool_choice.name")
    return ToolChoice(mode="function", name=choice.name)


def response_format(body: ResponseCreateRequest) -> ResponseFormat:
    form = body.text.format if body.text is not None else None
    if form is None or form.type == "text":
        return ResponseFormat()
    if form.type == "json_object":
        return ResponseFormat(type="json_object")
    if form.type != "json_schema":
        raise BadRequest(
            f"text.format.type {form.type!r} is not one of text, json_object, json_schema", param="text.format.type"
        )
    if form.schema_ is None:
        raise BadRequest(
            "text.format.schema is missing: a json_schema format needs the JSON schema the answer must follow",
            param="text.format.schema",
        )
    if not form.name or not _FORMAT_NAME.fullmatch(form.name):
        raise BadRequest(
            "text.format.name must be 1 to 64 letters, digits, underscores or dashes", param="text.format.name"
        )
    check_schema(form.schema_, "text.format.schema", want_object=False)
    return ResponseFormat(type="json_schema", schema=form.schema_, name=form.name, strict=bool(form.strict))
