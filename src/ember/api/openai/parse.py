"""OpenAI wire requests -> the neutral request (services/types.py). Checks that hold for every
protocol are the service's (services/validation.py); what only OpenAI's shapes can get wrong
is refused here."""

from __future__ import annotations

from ember.api.openai.protocol import (
    ChatCompletionRequest,
    ChatMessageIn,
    CompletionRequest,
    FunctionDef,
    NamedFunction,
    NamedToolChoice,
    ResponseFormatIn,
)
from ember.errors import BadRequest, UnsupportedParameter
from ember.services.types import (
    ChatMessage,
    ContentPart,
    ImagePart,
    LogprobOptions,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)
from ember.services.validation import MAX_TOP_LOGPROBS, check_schema


def chat_messages(messages: list[ChatMessageIn]) -> list[ChatMessage]:
    return [_message(i, m) for i, m in enumerate(messages)]


def _message(i: int, message: ChatMessageIn) -> ChatMessage:
    texts: list[str] = []
    attachments: list[ContentPart] = []
    if isinstance(message.content, str):
        texts.append(message.content)
    for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "image_url" and part.image_url is not None:
            attachments.append(ImagePart(source=part.image_url.url))
        else:
            raise UnsupportedParameter(
                f"messages[{i}].content[{j}] is a '{part.type}' part: ember takes text and image_url parts",
                param=f"messages[{i}].content[{j}].type",
            )
    calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments) for c in message.tool_calls or ()]
    if message.function_call is not None:  # the legacy single call has no id: make a stable one
        calls.append(
            ToolCall(id=f"call_{i}", name=message.function_call.name, arguments=message.function_call.arguments)
        )
    if message.role == "tool" and not message.tool_call_id:
        raise BadRequest(f"messages[{i}] has role 'tool' but no tool_call_id", param=f"messages[{i}].tool_call_id")
    return ChatMessage(
        role=message.role,
        content="".join(texts),
        attachments=tuple(attachments),
        tool_calls=tuple(calls),
        tool_call_id=message.tool_call_id,
        name=message.name if message.role == "tool" else None,
    )


def tools(body: ChatCompletionRequest) -> tuple[Tool, ...]:
    if body.tools and body.functions:
        raise BadRequest("send either tools or the legacy functions, not both", param="functions")
    functions: list[FunctionDef] = [t.function for t in body.tools or ()] + list(body.functions or ())
    return tuple(
        Tool(
            name=f.name,
            description=f.description or "",
            parameters=f.parameters if f.parameters is not None else {"type": "object", "properties": {}},
            strict=bool(f.strict),
        )
        for f in functions
    )


def tool_choice(body: ChatCompletionRequest) -> ToolChoice:
    choice: str | NamedToolChoice | NamedFunction | None = body.tool_choice
    if choice is None:
        choice = body.function_call
    if choice is None:
        return ToolChoice()
    if isinstance(choice, NamedToolChoice):
        return ToolChoice(mode="function", name=choice.function.name)
    if isinstance(choice, NamedFunction):
        return ToolChoice(mode="function", name=choice.name)
    if choice == "none":
        return ToolChoice(mode="none")
    return ToolChoice(mode="required") if choice == "required" else ToolChoice()


def response_format(value: ResponseFormatIn | None) -> ResponseFormat:
    if value is None or value.type == "text":
        return ResponseFormat()
    if value.type == "json_object":
        return ResponseFormat(type="json_object")
    spec = value.json_schema
    if spec is None or spec.schema_ is None:
        where = "response_format.json_schema" + (".schema" if spec is not None else "")
        raise BadRequest(
            f"{where} is missing: a json_schema response format needs the JSON schema the answer must follow",
            param=where,
        )
    check_schema(spec.schema_, "response_format.json_schema.schema", want_object=False)  # OpenAI's name
    return ResponseFormat(type="json_schema", schema=spec.schema_, name=spec.name, strict=bool(spec.strict))


def chat_logprobs(body: ChatCompletionRequest) -> LogprobOptions | None:
    if not body.logprobs:
        if body.top_logprobs:
            raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return LogprobOptions(top=body.top_logprobs or 0)


def completion_logprobs(body: CompletionRequest) -> LogprobOptions | None:
    if body.logprobs is not None and body.logprobs > MAX_TOP_LOGPROBS:  # the legacy name of top_logprobs
        raise BadRequest(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}, not {body.logprobs}", param="logprobs")
    return None if body.logprobs is None else LogprobOptions(top=body.logprobs)
