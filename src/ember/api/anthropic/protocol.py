"""Anthropic Messages API wire models: requests validated here; responses built as plain dicts
by render.py.

Anthropic's API refuses fields it does not know ("Extra inputs are not permitted"), and so does
this one at the top level: a field ember does not know might change what the answer means. The
fields the SDK sends that change nothing here (metadata, service_tier, cache_control, ...) are
declared and ignored; the ones that would change the answer and that ember cannot act on are
declared and refused by parse.py, naming them. Content blocks are one loose model whose fields
parse.py checks per block type, so an unknown or malformed block gets a sentence, not a
pydantic union dump.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ember.api.agent_wire import AgentFields


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentBlockIn(_Wire):
    """Any content block: text, image, tool_use, tool_result (others are refused by type)."""

    type: str
    text: Any = None  # text
    source: Any = None  # image: {"type": "base64", "media_type", "data"} or {"type": "url", "url"}
    id: Any = None  # tool_use
    name: Any = None  # tool_use
    input: Any = None  # tool_use: the call's arguments, an object
    tool_use_id: Any = None  # tool_result
    content: Any = None  # tool_result: a string or a list of text and image blocks
    is_error: bool | None = None  # tool_result


class MessageIn(_Wire):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockIn]


class ToolDef(_Wire):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: Any = None  # a JSON schema of an object; required of client tools (parse.py)
    # None or "custom": a client tool; anything else is a server tool Anthropic runs itself.
    type: str | None = None
    strict: bool | None = None


class ToolChoiceIn(_Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None  # with type "tool"
    disable_parallel_tool_use: bool | None = None


class ThinkingIn(_Wire):
    type: str  # "disabled" is taken; "enabled" and "adaptive" are refused
    budget_tokens: int | None = None


class Metadata(_Strict):
    user_id: str | None = None


class OutputFormatIn(_Strict):
    type: Literal["json_schema"]
    schema_: Any = Field(alias="schema")


class OutputConfigIn(_Strict):
    effort: str | None = None  # refused: no model ember serves reasons
    format: OutputFormatIn | None = None


class PromptRequest(_Strict):
    """What a prompt is made of: the fields messages.create and messages.count_tokens share."""

    model: str = Field(min_length=1)
    messages: list[MessageIn]
    system: str | list[ContentBlockIn] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoiceIn | None = None
    thinking: ThinkingIn | None = None
    output_config: OutputConfigIn | None = None
    # Taken and ignored: prompt-caching hints (ember reuses prompt prefixes by itself), and
    # placement and accounting fields that do not change the answer.
    cache_control: Any = None
    speed: str | None = None
    inference_geo: str | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None
    # Refused unless empty: features that run on Anthropic's side.
    mcp_servers: list[Any] | None = None
    container: Any = None
    context_management: Any = None


class MessagesRequest(PromptRequest, AgentFields):
    # AgentFields: ember's agent extension (mode, mode_tools, mode_members, approvals); the
    # anthropic SDK sends them in extra_body. count_tokens takes none of them.
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=1)
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None


class CountTokensRequest(PromptRequest):
    pass
