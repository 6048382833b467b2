"""The agents' part of ember.toml: `[[agents]]`, `[agents_defaults]`, `[[mcp_servers]]`, `[tools.*]`.

Read once at start, before ember binds (app.py), beside the gateway's part of the same file; a
bad value fails `ember serve` with the file, the line and what is wrong, in the gateway's words
(gateway/config.py `config_error`).

Invariants, checked here so that a run never meets them:
- every name in an agent's `tools` is a built-in whose table is configured, or
  "<server>__<tool>" of a configured `[[mcp_servers]]` (its tool list is only known once the
  server runs; "<server>__*" means all of them);
- an agent's `mode` is a registered mode (agents/modes/); its `model` is not another agent
  ("agent/..."); a swarm's `members` are configured agents, itself not among them;
- agent names are unique and fit a model name ("agent/NAME").
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ember.agents.tools.builtin_config import BUILTIN_TOOL_NAMES, BuiltinToolsConfig
from ember.agents.tools.mcp_config import SEPARATOR, McpServerConfig
from ember.agents.types import AgentLimits, AgentSpec
from ember.config import parse_duration
from ember.errors import ConfigError
from ember.gateway.config import config_error

AGENT_PREFIX = "agent/"  # an agent is asked for as a model named "agent/NAME"

ToolChoiceName = str  # "auto", "none", "required", or a tool's name (that tool, forced)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _seconds(value: Any) -> Any:
    """ "90s", "2m" or a number of seconds; anything else is left for pydantic to refuse."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(str(exc)) from exc
    return value


class AutoApproveRule(_Strict):
    """`[[agents.auto_approve]]`: a call of `tool` whose JSON arguments match `arguments` (a
    regex searched in the arguments' JSON text) runs without asking a human. The approvals gate
    reads these from `AgentSpec.options["auto_approve"]` as plain dicts."""

    tool: str = Field(min_length=1)  # a tool name (the gate may accept a glob)
    arguments: str = ".*"

    @field_validator("arguments")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"arguments is not a valid regular expression: {exc}") from exc
        return value


class AgentsDefaults(_Strict):
    """`[agents_defaults]`: the limits of an agent that sets none, and of a plain model run in a
    `mode` by a request (which has no table of its own)."""

    max_steps: int = Field(8, ge=1, le=1000)
    max_tool_calls: int = Field(16, ge=0, le=10000)
    deadline: float = Field(120.0, gt=0)
    tool_concurrency: int = Field(4, ge=1, le=64)
    max_handoffs: int = Field(4, ge=0, le=100)

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> Any:
        return _seconds(value)

    def limits(self) -> AgentLimits:
        return AgentLimits(
            max_steps=self.max_steps,
            max_tool_calls=self.max_tool_calls,
            deadline=self.deadline,
            tool_concurrency=self.tool_concurrency,
            max_handoffs=self.max_handoffs,
        )


class AgentConfig(_Strict):
    """One `[[agents]]` table. Unset limits take `[agents_defaults]`'s."""

    # No ":": "mode:<mode>" names the agent a plain model's mode run gets.
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=64)
    model: str = Field(min_length=1)  # a local model, a route, or "provider/model"
    instructions: str = ""
    tools: list[str] = Field(default_factory=list)
    mode: str = "tools"
    max_steps: int | None = Field(None, ge=1, le=1000)
    max_tool_calls: int | None = Field(None, ge=0, le=10000)
    deadline: float | None = Field(None, gt=0)
    tool_concurrency: int | None = Field(None, ge=1, le=64)
    members: list[str] = Field(default_factory=list)  # swarm
    max_handoffs: int | None = Field(None, ge=0, le=100)  # swarm
    require_approval: list[str] = Field(default_factory=list)  # tool names that wait for a human
    auto_approve: list[AutoApproveRule] = Field(default_factory=list)
    # The tools mode: the first model call's tool_choice, and every later one's.
    first_tool_choice: ToolChoiceName = "auto"
    tool_choice: ToolChoiceName = "auto"
    # Mode settings (reflection: threshold, rounds; planning: max_plan_steps...), passed through.
    threshold: float | None = Field(None, ge=0, le=1)
    rounds: int | None = Field(None, ge=0, le=20)
    max_plan_steps: int | None = Field(None, ge=1, le=50)

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: Any) -> Any:
        return _seconds(value)

    @field_validator("model")
    @classmethod
    def _not_an_agent(cls, model: str) -> str:
        if model.startswith(AGENT_PREFIX):
            raise ValueError(f"an agent's model is a model or a route, not another agent ({model!r})")
        return model

    def spec(self, defaults: AgentsDefaults) -> AgentSpec:
        limits = AgentLimits(
            max_steps=self.max_steps or defaults.max_steps,
            max_tool_calls=defaults.max_tool_calls if self.max_tool_calls is None else self.max_tool_calls,
            deadline=self.deadline or defaults.deadline,
            tool_concurrency=self.tool_concurrency or defaults.tool_concurrency,
            max_handoffs=defaults.max_handoffs if self.max_handoffs is None else self.max_handoffs,
        )
        options: dict[str, Any] = {
            "first_tool_choice": self.first_tool_choice,
            "tool_choice": self.tool_choice,
            "require_approval": list(self.require_approval),
            "auto_approve": [rule.model_dump() for rule in self.auto_approve],
        }
        for key in ("threshold", "rounds", "max_plan_steps"):
            value = getattr(self, key)
            if value is not None:
                options[key] = value
        return AgentSpec(
            name=self.name,
            model=self.model,
            instructions=self.instructions,
            tools=tuple(self.tools),
            mode=self.mode,
            limits=limits,
            members=tuple(self.members),
            options=options,
        )


class AgentsConfig(_Strict):
    agents: list[AgentConfig] = Field(default_factory=list)
    agents_defaults: AgentsDefaults = Field(default_factory=AgentsDefaults)
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)
    tools: BuiltinToolsConfig = Field(default_factory=BuiltinToolsConfig)

    @model_validator(mode="after")
    def _consistent(self) -> AgentsConfig:
        from ember.agents.modes import MODES

        servers = [s.name for s in self.mcp_servers]
        for i, name in enumerate(servers):
            if name in servers[:i]:
                raise ValueError(f"mcp_servers[{i}].name: mcp server name '{name}' is used twice")
        names = [a.name for a in self.agents]
        for i, agent in enumerate(self.agents):
            if agent.name in names[:i]:
                raise ValueError(f"agents[{i}].name: agent '{agent.name}' is defined twice")
            if agent.mode not in MODES:
                raise ValueError(f"agents[{i}].mode: unknown mode '{agent.mode}' (modes: {', '.join(sorted(MODES))})")
            for tool in agent.tools:
                problem = tool_problem(tool, self.tools, servers)
                if problem:
                    raise ValueError(f"agents[{i}].tools: {problem}")
            for tool in agent.require_approval:
                if not _names(agent.tools, tool):
                    raise ValueError(f"agents[{i}].require_approval: '{tool}' is not one of the agent's tools")
            for choice in ("first_tool_choice", "tool_choice"):
                value = getattr(agent, choice)
                if value not in ("auto", "none", "required") and not _names(agent.tools, value):
                    raise ValueError(
                        f"agents[{i}].{choice}: {value!r} is not auto, none, required or one of the agent's tools"
                    )
            if agent.members and agent.mode != "swarm":
                raise ValueError(f"agents[{i}].members: only a swarm agent has members (mode is '{agent.mode}')")
            for member in agent.members:
                if member == agent.name:
                    raise ValueError(f"agents[{i}].members: agent '{agent.name}' cannot be its own member")
                if member not in names:
                    raise ValueError(f"agents[{i}].members: '{member}' is not a configured agent")
        return self

    def specs(self) -> dict[str, AgentSpec]:
        return {agent.name: agent.spec(self.agents_defaults) for agent in self.agents}


def _names(tools: list[str], name: str) -> bool:
    """Whether an agent's tool list reaches `name` (itself, or its server's "<server>__*")."""
    server, sep, _ = name.partition(SEPARATOR)
    return name in tools or (bool(sep) and f"{server}{SEPARATOR}*" in tools)


def tool_problem(tool: str, builtins: BuiltinToolsConfig, servers: list[str]) -> str | None:
    """Why `tool` cannot be one of an agent's tools, or None when it can."""
    if tool in BUILTIN_TOOL_NAMES:
        why = builtins.unavailable(tool)
        return f"tool '{tool}' {why}" if why else None
    server, sep, name = tool.partition(SEPARATOR)
    if sep and name and server in servers:
        return None
    hint = f"built-ins: {', '.join(BUILTIN_TOOL_NAMES)}; MCP tools are '<server>__<tool>' of a [[mcp_servers]] name"
    if sep and server not in servers:
        return f"unknown tool '{tool}': no [[mcp_servers]] is named '{server}' ({hint})"
    return f"unknown tool '{tool}' ({hint})"


_KEYS = ("agents", "agents_defaults", "mcp_servers", "tools")


def load_agents_config(path: Path | None) -> AgentsConfig:
    """The agents config from ember.toml, or an empty one when there is no file. The file's
    syntax and its unknown top-level keys are the gateway loader's to report (it runs first)."""
    if path is None:
        return AgentsConfig()
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        return AgentsConfig.model_validate({k: data[k] for k in _KEYS if k in data})
    except ValidationError as exc:
        raise config_error(path, text, exc) from exc
