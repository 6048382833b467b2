"""Anthropic wire requests -> the neutral request (services/types.py).

How Anthropic's shapes map onto the neutral chat, where the issue left it to us:
- `system` (a string or text blocks) is one leading system message; text blocks of one
  message are joined with a blank line between them.
- Consecutive messages of one role are merged into one turn, as Anthropic's API does; the
  first message must be the user's.
- A user turn's `tool_result` blocks become tool messages (in their order, before the turn's
  own text); a result with `is_error` is prefixed "Error: ", since the neutral tool message
  has no error flag. Each must answer a `tool_use` block of an earlier assistant turn.
- An assistant turn's `tool_use` blocks become its tool calls, `input` as JSON text.
- A conversation that ends with an assistant turn asks Anthropic's models to continue that
  text (prefill); ember's chat templates always open a new turn, so that is a 400.
- Images become ImagePart attachments: a route may carry them to a model that reads them;
  a local model refuses them (services/generation.py).
Everything here raises BadRequest / UnsupportedParameter naming the wire field.
"""

from __future__ import annotations

import json
from typing import Any

from ember.api import agent_wire
from ember.api.anthropic.protocol import ContentBlockIn, MessageIn, MessagesRequest, PromptRequest, ToolChoiceIn
from ember.engine.types import SamplingParams
from ember.errors import BadRequest, UnsupportedParameter
from ember.services.types import (
    ChatMessage,
    ContentPart,
    ImagePart,
    RequestContext,
    ResponseFormat,
    TextRequest,
    Tool,
    ToolCall,
    ToolChoice,
)
from ember.services.validation import check_schema, validate_request

_BLOCKS = "text, image, tool_use and tool_result"
MAX_STOP_SEQUENCES = 64


def text_request(body: PromptRequest, context: RequestContext) -> TextRequest:
    """The neutral request of a messages.create (or, without its sampling fields, of a
    messages.count_tokens: the same prompt, so the same token count)."""
    _refuse_unsupported(body)
    tools = _tools(body)
    choice, parallel = _tool_choice(body.tool_choice, tools)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling = SamplingParams()
    agent = agent_wire.AgentRequest()
    if isinstance(body, MessagesRequest):
        max_tokens, stop, sampling = body.max_tokens, _stops(body.stop_sequences), _sampling(body)
        agent = agent_wire.agent_fields(body.model, body)
    request = TextRequest(
        model=body.model,
        messages=_system(body.system) + chat_messages(body.messages),
        max_tokens=max_tokens,
        stop=stop,
        sampling=sampling,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response_format=_response_format(body),
        context=context,
        mode=agent.mode,
        mode_tools=agent.mode_tools,
        mode_members=agent.mode_members,
        approvals=agent.approvals,
    )
    validate_request(request)  # the checks every protocol shares (tool names, schemas, ...)
    return request


def _refuse_unsupported(body: PromptRequest) -> None:
    thinking = body.thinking
    if thinking is not None and thinking.type != "disabled":
        raise UnsupportedParameter(
            f"thinking of type '{thinking.type}' is not supported: model '{body.model}' does not reason "
            '(send thinking {"type": "disabled"} or leave it out)',
            param="thinking",
        )
    if body.output_config is not None and body.output_config.effort is not None:
        raise UnsupportedParameter(
            f"output_config.effort is not supported: model '{body.model}' does not reason",
            param="output_config.effort",
        )
    remote_only = (
        ("mcp_servers", body.mcp_servers),
        ("container", body.container),
        ("context_management", body.context_management),
    )
    for field, value in remote_only:
        if value:
            raise UnsupportedParameter(f"'{field}' is not supported: it runs on Anthropic's servers", param=field)


def _sampling(body: MessagesRequest) -> SamplingParams:
    # Unset fields keep ember's defaults, as /v1/chat/completions does, so the same request
    # gets the same answer through either API.
    defaults = SamplingParams()
    return SamplingParams(
        temperature=body.temperature if body.temperature is not None else defaults.temperature,
        top_p=body.top_p if body.top_p is not None else defaults.top_p,
        top_k=body.top_k if body.top_k is not None else defaults.top_k,
        min_p=defaults.min_p,
    )


def _stops(stops: list[str] | None) -> tuple[str, ...]:
    if not stops:
        return ()
    if len(stops) > MAX_STOP_SEQUENCES:
        raise BadRequest(f"at most {MAX_STOP_SEQUENCES} stop_sequences, not {len(stops)}", param="stop_sequences")
    for i, stop in enumerate(stops):
        if not stop:
            raise BadRequest(f"stop_sequences[{i}] is empty", param=f"stop_sequences[{i}]")
    return tuple(stops)


def _system(system: str | list[ContentBlockIn] | None) -> list[ChatMessage]:
    if system is None:
        return []
    if isinstance(system, str):
        text = system
    else:
        for j, block in enumerate(system):
            if block.type != "text":
                raise BadRequest(
                    f"system[{j}] is a '{block.type}' block: system takes text blocks only", param=f"system[{j}].type"
                )
        text = "\n\n".join(_text(block, f"system[{j}]") for j, block in enumerate(system))
    return [ChatMessage(role="system", content=text)] if text else []


# -- messages ---------------------------------------------------------------------------------


def chat_messages(messages: list[MessageIn]) -> list[ChatMessage]:
    if not messages:
        raise BadRequest("messages must contain at least one message", param="messages")
    if messages[0].role != "user":
        raise BadRequest("the first message must be from the user, not the assistant", param="messages[0].role")
    if messages[-1].role == "assistant":
        raise UnsupportedParameter(
            f"messages[{len(messages) - 1}]: the conversation ends with an assistant message (a prefill to "
            "continue); ember answers in a new assistant turn, so the last message must be the user's",
            param=f"messages[{len(messages) - 1}].role",
        )
    out: list[ChatMessage] = []
    calls: dict[str, str] = {}  # tool_use id -> tool name, from the turns so far
    i = 0
    while i < len(messages):
        # One turn: this message and the ones of the same role right after it (merged).
        turn: list[tuple[str, ContentBlockIn]] = []
        role = messages[i].role
        while i < len(messages) and messages[i].role == role:
            turn += [(f"messages[{i}].content[{j}]", b) for j, b in enumerate(_blocks(messages[i], i))]
            i += 1
        out += _assistant_turn(turn, calls) if role == "assistant" else _user_turn(turn, calls)
    return out


def _blocks(message: MessageIn, i: int) -> list[ContentBlockIn]:
    if isinstance(message.content, str):
        return [ContentBlockIn(type="text", text=message.content)]
    if not message.content:
        raise BadRequest(
            f"messages[{i}].content is empty: send a string or at least one block", param=f"messages[{i}].content"
        )
    return message.content


def _user_turn(turn: list[tuple[str, ContentBlockIn]], calls: dict[str, str]) -> list[ChatMessage]:
    results: list[ChatMessage] = []
    texts: list[str] = []
    attachments: list[ContentPart] = []
    for where, block in turn:
        if block.type == "text":
            texts.append(_text(block, where))
        elif block.type == "image":
            attachments.append(_image(block, where))
        elif block.type == "tool_result":
            results.append(_tool_result(block, where, calls))
        elif block.type == "tool_use":
            raise BadRequest(
                f"{where} is a tool_use block in a user message: only the assistant calls tools", param=f"{where}.type"
            )
        else:
            raise _unknown_block(block, where)
    if texts or attachments or not results:
        results.append(ChatMessage(role="user", content="\n\n".join(texts), attachments=tuple(attachments)))
    return results


def _assistant_turn(turn: list[tuple[str, ContentBlockIn]], calls: dict[str, str]) -> list[ChatMessage]:
    texts: list[str] = []
    tool_calls: list[ToolCall] = []
    for where, block in turn:
        if block.type == "text":
            texts.append(_text(block, where))
        elif block.type == "tool_use":
            tool_calls.append(_tool_use(block, where, calls))
        elif block.type in ("tool_result", "image"):
            raise BadRequest(
                f"{where} is a {block.type} block in an assistant message: it belongs in a user message",
                param=f"{where}.type",
            )
        else:
            raise _unknown_block(block, where)
    return [ChatMessage(role="assistant", content="\n\n".join(texts), tool_calls=tuple(tool_calls))]


def _unknown_block(block: ContentBlockIn, where: str) -> BadRequest:
    if block.type in ("thinking", "redacted_thinking"):
        return UnsupportedParameter(
            f"{where} is a '{block.type}' block: ember's models do not reason", param=f"{where}.type"
        )
    return UnsupportedParameter(
        f"{where} is a '{block.type}' block: ember takes {_BLOCKS} blocks", param=f"{where}.type"
    )


def _text(block: ContentBlockIn, where: str) -> str:
    if not isinstance(block.text, str):
        raise BadRequest(f"{where} is a text block without a 'text' string", param=f"{where}.text")
    return block.text


def _image(block: ContentBlockIn, where: str) -> ImagePart:
    source = block.source if isinstance(block.source, dict) else {}
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("data"), str) and isinstance(source.get("media_type"), str):
        return ImagePart(source=f"data:{source['media_type']};base64,{source['data']}")
    if kind == "url" and isinstance(source.get("url"), str):
        return ImagePart(source=source["url"])
    raise BadRequest(
        f'{where}.source must be {{"type": "base64", "media_type", "data"}} or {{"type": "url", "url"}}',
        param=f"{where}.source",
    )


def _tool_use(block: ContentBlockIn, where: str, calls: dict[str, str]) -> ToolCall:
    if not isinstance(block.id, str) or not block.id:
        raise BadRequest(f"{where} is a tool_use block without an 'id'", param=f"{where}.id")
    if not isinstance(block.name, str) or not block.name:
        raise BadRequest(f"{where} is a tool_use block without a 'name'", param=f"{where}.name")
    if not isinstance(block.input, dict):
        raise BadRequest(f"{where}.input must be an object (the call's arguments)", param=f"{where}.input")
    if block.id in calls:
        raise BadRequest(f"{where}: the tool_use id '{block.id}' is used twice", param=f"{where}.id")
    calls[block.id] = block.name
    return ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input, ensure_ascii=False))


def _tool_result(block: ContentBlockIn, where: str, calls: dict[str, str]) -> ChatMessage:
    ident = block.tool_use_id
    if not isinstance(ident, str) or not ident:
        raise BadRequest(f"{where} is a tool_result block without a 'tool_use_id'", param=f"{where}.tool_use_id")
    if ident not in calls:
        raise BadRequest(
            f"{where} is a tool_result for tool_use_id '{ident}', which no earlier tool_use block has",
            param=f"{where}.tool_use_id",
        )
    texts: list[str] = []
    attachments: list[ContentPart] = []
    content: Any = block.content
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, raw in enumerate(content):
            part = ContentBlockIn.model_validate(raw) if isinstance(raw, dict) and "type" in raw else None
            if part is not None and part.type == "text":
                texts.append(_text(part, f"{where}.content[{k}]"))
            elif part is not None and part.type == "image":
                attachments.append(_image(part, f"{where}.content[{k}]"))
            else:
                kind = part.type if part is not None else type(raw).__name__
                raise BadRequest(
                    f"{where}.content[{k}] is a '{kind}' block: a tool_result holds text and image blocks",
                    param=f"{where}.content[{k}]",
                )
    elif content is not None:
        raise BadRequest(f"{where}.content must be a string or a list of blocks", param=f"{where}.content")
    text = "\n\n".join(texts)
    return ChatMessage(
        role="tool",
        content=f"Error: {text}" if block.is_error else text,
        attachments=tuple(attachments),
        tool_call_id=ident,
        name=calls[ident],
    )


# -- tools and formats ------------------------------------------------------------------------


def _tools(body: PromptRequest) -> tuple[Tool, ...]:
    tools: list[Tool] = []
    for i, tool in enumerate(body.tools or ()):
        if tool.type not in (None, "custom"):
            raise UnsupportedParameter(
                f"tools[{i}] is a '{tool.type}' server tool, which runs on Anthropic's servers; "
                "ember takes client tools (name, description, input_schema)",
                param=f"tools[{i}].type",
            )
        if tool.input_schema is None:
            raise BadRequest(f"missing required field 'tools[{i}].input_schema'", param=f"tools[{i}].input_schema")
        check_schema(tool.input_schema, f"tools[{i}].input_schema", want_object=True)
        tools.append(
            Tool(
                name=tool.name,
                description=tool.description or "",
                parameters=tool.input_schema,
                strict=bool(tool.strict),
            )
        )
    return tuple(tools)


def _tool_choice(choice: ToolChoiceIn | None, tools: tuple[Tool, ...]) -> tuple[ToolChoice, bool]:
    """The neutral choice, and whether parallel calls are allowed."""
    if choice is None:
        return ToolChoice(), True
    parallel = not choice.disable_parallel_tool_use
    if choice.type in ("any", "tool") and not tools:
        raise BadRequest(f"tool_choice '{choice.type}' needs at least one tool in tools", param="tool_choice")
    if choice.type == "tool":
        if not choice.name:
            raise BadRequest("tool_choice of type 'tool' needs the tool's 'name'", param="tool_choice.name")
        return ToolChoice(mode="function", name=choice.name), parallel
    if choice.type == "any":  # at least one call
        return ToolChoice(mode="required"), parallel
    return ToolChoice(mode=choice.type), parallel


def _response_format(body: PromptRequest) -> ResponseFormat:
    form = body.output_config.format if body.output_config is not None else None
    if form is None:
        return ResponseFormat()
    check_schema(form.schema_, "output_config.format.schema", want_object=False)
    return ResponseFormat(type="json_schema", schema=form.schema_, strict=True)
