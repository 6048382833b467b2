"""OpenAI wire models (requests validated here; responses built as plain dicts in routes)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.api.agent_wire import AgentFields


class _Wire(BaseModel):
    # Clients send fields that change nothing here (user, metadata, store, ...): accept and
    # ignore them. Fields that would change the answer are declared, and refused by the routes.
    model_config = ConfigDict(extra="ignore")


class ImageURL(_Wire):
    url: str


class ContentPart(_Wire):
    type: str  # text, image_url; input_audio and file are refused
    text: str | None = None
    image_url: ImageURL | None = None


class FunctionCall(_Wire):
    name: str
    arguments: str = ""  # JSON text, as OpenAI sends it


class ToolCallIn(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessageIn(_Wire):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's calls
    tool_call_id: str | None = None  # a tool result: the call it answers
    function_call: FunctionCall | None = None  # the legacy form of one call


class FunctionDef(_Wire):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: Any = None  # a JSON schema of the arguments object (checked by the service)
    strict: bool | None = None


class ToolDef(_Wire):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Wire):
    name: str = Field(min_length=1)


class NamedToolChoice(_Wire):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Wire):
    name: str = "response"
    description: str | None = None
    schema_: Any = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(_Wire):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Wire):
    include_usage: bool = False


class _Sampling(_Wire):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    logit_bias: dict[str, float] | None = None  # refused unless empty
    # Sampling extensions llama-server and vLLM accept on their OpenAI APIs, with llama.cpp's
    # meanings, so a client (or a benchmark) can ask every server for the same sampling.
    top_k: int | None = Field(None, ge=0)  # 0: off
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, gt=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0, le=10)  # 1: off
    repetition_penalty: float | None = Field(None, gt=0, le=10)  # vLLM's name for repeat_penalty
    repeat_last_n: int | None = Field(None, ge=-1)  # -1: the whole context

    def repeat_penalty_value(self) -> float | None:
        """repeat_penalty, or vLLM's repetition_penalty: both are one setting."""
        both = self.repeat_penalty is not None and self.repetition_penalty is not None
        if both and self.repeat_penalty != self.repetition_penalty:
            raise ValueError("repeat_penalty and repetition_penalty are one setting: send one, or the same value")
        return self.repeat_penalty if self.repeat_penalty is not None else self.repetition_penalty

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(_Sampling, AgentFields):
    # AgentFields: ember's agent extension (mode, mode_tools, mode_members, approvals); the
    # openai SDK sends them in extra_body.
    messages: list[ChatMessageIn]
    max_completion_tokens: int | None = Field(None, ge=0)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = None  # the legacy form of tools
    function_call: Literal["auto", "none"] | NamedFunction | None = None  # ... and of tool_choice
    response_format: ResponseFormatIn | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None  # 0..20, checked by the service
    # Refused when asked for: no model ember serves speaks or reasons.
    modalities: list[str] | None = None
    audio: Any = None
    reasoning_effort: str | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=0)  # OpenAI's legacy default
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)  # refused past n: ember does not rank candidates
    logprobs: int | None = Field(None, ge=0)  # alternatives per token, 0..20 (checked by the service)


class EmbeddingRequest(_Wire):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
