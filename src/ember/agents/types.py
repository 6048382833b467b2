"""What the parts of the agent runtime agree on: tools, modes, a run's state, approvals.

The runner (agents/runner.py) drives a mode (agents/modes/*) through a `ModeContext`; the
context reaches models only through the gateway and tools only through `AgentTool`s, which
come from the built-ins (agents/tools/builtin.py) and MCP servers (agents/tools/mcp.py). A tool
that needs a human's approval parks the run (`ApprovalGate`, agents/approvals/), and a later
request resumes it from its `RunState`.

Invariants:
- `AgentTool.call` never raises for the tool's own failure (bad arguments, a crash, a timeout,
  a dead MCP server): it returns a `ToolOutcome` with `is_error=True` and a message the model
  can read. Only cancellation propagates.
- A `RunState` is plain data (JSON-able through agents/approvals/), enough to continue the run
  after a restart: the mode is called again with the saved messages and `mode_state`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ember.services.types import (
    AgentStep,
    Answer,
    ApprovalDecision,
    ChatMessage,
    FinishReason,
    PendingApproval,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
)

# -- tools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it (name, description, JSON schema) and as the runner runs it."""

    name: str  # [A-Za-z0-9_-]{1,64}; an MCP tool is "<server>__<tool>"
    description: str
    parameters: dict[str, Any]  # a JSON schema of the arguments object
    timeout: float = 30.0  # seconds; the runner also cancels a call a little after this
    require_approval: bool = False
    source: str = "builtin"  # "builtin" or "mcp:<server>"

    def as_tool(self) -> Tool:
        """The neutral function definition handed to the model."""
        return Tool(name=self.name, description=self.description, parameters=self.parameters)


@dataclass(frozen=True)
class ToolOutcome:
    """What a tool call gave back: the text fed to the model as the tool's result."""

    content: str
    is_error: bool = False


class AgentTool(Protocol):
    """One callable tool. See the module's invariants: a failure is an outcome, not a raise."""

    @property
    def spec(self) -> ToolSpec: ...

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome: ...


class ToolSource(Protocol):
    """A set of tools with a life: the built-ins, or one MCP server (started, listed, closed)."""

    name: str

    async def start(self) -> None: ...

    async def tools(self) -> list[AgentTool]: ...

    async def aclose(self) -> None: ...


# -- agents -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentLimits:
    max_steps: int = 8  # model calls in one run (critiques, plans and syntheses included)
    max_tool_calls: int = 16
    deadline: float = 120.0  # seconds for the whole run, approval waits excluded
    tool_concurrency: int = 4  # tool calls of one model turn run at once, at most
    max_handoffs: int = 4  # swarm


@dataclass(frozen=True)
class AgentSpec:
    """A resolved agent: what a run of it needs (agents/config.py builds these from ember.toml;
    a plain model with a `mode` gets one named "mode:<mode>" with no tools but those asked for)."""

    name: str
    model: str  # a local model or a route, as the gateway resolves names
    instructions: str = ""
    tools: tuple[str, ...] = ()  # tool names this agent may call (all it can reach)
    mode: str = "tools"
    limits: AgentLimits = field(default_factory=AgentLimits)
    members: tuple[str, ...] = ()  # swarm: the agents it may hand over to (their names)
    options: dict[str, Any] = field(default_factory=dict)  # mode settings (threshold, rounds...)


# -- modes ------------------------------------------------------------------------------------


RunFinish = FinishReason  # "stop", "length", "max_steps", "deadline", "approval", ...


@dataclass
class ModeOutcome:
    """How a mode ended: the final answer's text (already streamed when it came from a `final`
    model call) and why it ended."""

    text: str
    finish_reason: RunFinish = "stop"


class ModeContext(Protocol):
    """What a mode may do. Every call counts against the agent's limits and adds to the trace;
    a limit reached raises `RunLimit`, a tool needing approval raises `ApprovalPending` (after
    the run was parked), and the runner turns both into the run's end."""

    @property
    def agent(self) -> AgentSpec: ...  # the agent running now (swarm: the active member)

    @property
    def state(self) -> dict[str, Any]: ...  # the mode's own progress; JSON-able; kept across a pause

    def agent_named(self, name: str) -> AgentSpec: ...

    def tools_for(self, agent: AgentSpec) -> list[Tool]: ...

    def switch_to(self, agent: AgentSpec) -> None: ...  # swarm: make another member the active one

    async def call_model(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        response_format: ResponseFormat | None = None,
        final: bool = False,  # stream this call's text to the client as it comes
        kind: Literal["model", "critique", "plan"] = "model",
        # At least this many tokens (a critique or a plan must fit its schema whole, whatever
        # max_tokens the client gave for its answer); None: the client's max_tokens.
        min_tokens: int | None = None,
    ) -> Answer: ...

    async def run_tools(self, calls: Sequence[ToolCall]) -> list[ChatMessage]: ...  # "tool" messages

    def record(self, step: AgentStep) -> None: ...  # a mode's own step (a score, a plan, a handoff)

    def next_index(self) -> int: ...  # the index the next recorded step takes


class Mode(Protocol):
    name: str

    async def run(self, ctx: ModeContext, messages: list[ChatMessage]) -> ModeOutcome: ...


class RunLimit(Exception):
    """A limit of the run was reached; `reason` is the finish reason the run ends with."""

    def __init__(self, reason: Literal["max_steps", "deadline"], message: str) -> None:
        super().__init__(message)
        self.reason: Literal["max_steps", "deadline"] = reason
        self.message = message


class ApprovalPending(Exception):
    """The run is parked until a human decides on these calls."""

    def __init__(self, pending: Sequence[PendingApproval]) -> None:
        super().__init__(f"{len(pending)} tool call(s) wait for approval")
        self.pending = tuple(pending)


# -- a run and its approvals ------------------------------------------------------------------


@dataclass
class RunState:
    """A parked run: enough to continue it after a restart."""

    run_id: str
    agent: str  # the AgentSpec's name (the active one, for a swarm: `active`)
    active: str
    mode: str
    model: str  # the name the client asked for ("agent/NAME" or the plain model)
    messages: list[ChatMessage]  # the conversation so far, the assistant's pending calls last
    mode_state: dict[str, Any]
    steps: list[AgentStep]
    tool_calls_used: int
    key_name: str | None
    pending: list[PendingApproval]  # the calls waiting, in the order the model made them
    created: float
    elapsed: float  # seconds the run has spent working, approval waits excluded


Decision = Literal["approved", "denied", "pending"]


class ApprovalGate(Protocol):
    """agents/approvals/: decides, parks and resumes. Every decision goes to the audit chain."""

    def auto_decision(self, agent: AgentSpec, call: ToolCall) -> Decision:
        """ "approved" when an auto-approve rule matches the call's arguments, else "pending"."""
        ...

    async def park(self, run: RunState) -> None:
        """Save the run (its `pending` filled in) so it survives a restart."""
        ...

    async def resume(
        self,
        decisions: Sequence[ApprovalDecision],
        key_name: str | None,
        *,
        model: str | None = None,
        check: Callable[[RunState], None] | None = None,
    ) -> RunState:
        """The parked run these decisions answer, with each pending call's decision applied
        (`decision_of`); a decision for an unknown id or another key's run is a NotFound, a run
        that still has undecided calls a BadRequest naming the ids, a run already resumed a
        Conflict. With `model` (the follow-up's model name), a run parked under another name
        is a BadRequest; `check` may raise for anything else the follow-up gets wrong about
        the run. On any of these the run stays parked; after success it is not."""
        ...

    def decision_of(self, approval_id: str) -> tuple[Decision, str | None]:
        """The decision taken on one approval (by request, CLI or admin API) and its reason."""
        ...
