"""Ollama wire models for /api/*. Unknown fields are ignored, as Ollama does; the routes refuse
known ones ember cannot honour (images, template, context, think) rather than ignore them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from ember.api.agent_wire import AgentFields
from ember.config import parse_duration


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Options(BaseModel):
    """Runtime options with Ollama's names; ones ember has no use for are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    num_ctx: int | None = Field(None, ge=1)
    num_predict: int | None = None
    temperature: float | None = Field(None, ge=0)
    top_k: int | None = None
    top_p: float | None = Field(None, ge=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_thread: int | None = Field(None, ge=1)
    num_gpu: int | None = None


# "5m", 300, "-1" (forever), 0 (unload right after): Ollama's keep_alive forms.
KeepAlive = Annotated[float | None, BeforeValidator(parse_duration)]


class _ModelNamed(_Wire):
    """Ollama once called the field `name`; both spellings are accepted."""

    model: str = ""

    @model_validator(mode="before")
    @classmethod
    def _legacy_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("model") and data.get("name"):
            data = {**data, "model": data["name"]}
        return data

    @field_validator("model")
    @classmethod
    def _required(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model is required")
        return value


class _Run(_ModelNamed):
    stream: bool = True
    options: Options = Field(default_factory=Options)
    keep_alive: KeepAlive = None
    format: Any = None  # "json", or a JSON schema object
    logprobs: bool = False
    top_logprobs: int | None = None  # 0..20, checked by the service
    think: bool | str | None = None  # refused when asked for: no model ember serves thinks
    truncate: bool | None = None  # ember never truncates a prompt (an over-long one is a 400)


class FunctionCall(_Wire):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)  # an object, not JSON text as in OpenAI


class ToolCallIn(_Wire):
    function: FunctionCall


class Message(_Wire):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None  # an assistant's calls
    tool_name: str | None = None  # a tool result: the function it comes from


class FunctionDef(_Wire):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: Any = None  # a JSON schema of the arguments object (checked by the service)


class ToolDef(_Wire):
    type: str = "function"
    function: FunctionDef


class ChatRequest(_Run, AgentFields):
    # AgentFields: ember's agent extension (mode, mode_tools, mode_members, approvals). The ollama
    # python client's chat() has no way to send extra fields: post them with httpx.
    messages: list[Message] = Field(default_factory=list)
    tools: list[ToolDef] | None = None


class GenerateRequest(_Run):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[str] | None = None


class EmbedRequest(_ModelNamed):
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True  # cut each input to the embedding context; False: an over-long one is a 400
    options: Options = Field(default_factory=Options)
    keep_alive: KeepAlive = None
    dimensions: int | None = Field(None, ge=1)


class EmbeddingsRequest(_ModelNamed):
    prompt: str = ""
    options: Options = Field(default_factory=Options)
    keep_alive: KeepAlive = None


class ShowRequest(_ModelNamed):
    verbose: bool = False


class DeleteRequest(_ModelNamed):
    pass


class CopyRequest(_Wire):
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)


class PullRequest(_ModelNamed):
    stream: bool = True
    insecure: bool = False
    destination: str | None = None  # ember's addition: the name to store a URL or hf:// pull under
