"""The protocol-neutral request, message, tool and event types.

Each API package parses its wire format into these and renders these back; the gateway, its
providers, the cache, jobs and agents see only these. Nothing here says how a protocol spells
a thing: `RequestContext.protocol` is a label for usage records and metrics, never a branch.

Invariants:
- a `TextRequest` has exactly one of `messages` (a chat) and `prompt` (a plain completion);
- a stream of `GenerationEvent`s ends with exactly one event with `done=True`, which carries
  the finish reason and the stats; every event before it carries text, tool-call deltas,
  logprobs, or (from an agent run, agents/) one finished `AgentStep`;
- an agent run that stops for a human's approval ends with finish reason "approval", and its
  done event carries the `PendingApproval`s; the follow-up request that answers them carries
  `ApprovalDecision`s and resumes the same run.
- a tool call streams as deltas of one `index`: the first has its `id` and `name`, the later
  ones only `arguments` fragments, and the fragments joined are the call's arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ember.engine.types import GenerationStats, LoadOptions, SamplingParams, TokenLogprob

# "approval": an agent run paused on a tool that needs a human's approval (agents/).
# "max_steps" / "deadline": an agent run stopped at one of its limits, without a final answer.
FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "approval", "max_steps", "deadline"]

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image in a message: a URL (http(s) or data:) or base64 data as Ollama sends it."""

    source: str


ContentPart = TextPart | ImagePart


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made: `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ChatMessage:
    role: str  # one of CHAT_ROLES
    content: str = ""  # the text, its parts joined
    # Non-text parts (images) in the order they came; text parts are in `content`.
    attachments: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str | None = None  # a tool result: the call it answers
    name: str | None = None  # a tool result: the function's name


# -- tools, formats, logprobs -----------------------------------------------------------------


@dataclass(frozen=True)
class Tool:
    """A function the model may call; `parameters` is a JSON schema of its arguments object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """auto: the model decides; none: no call; required: at least one; function: that one."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None  # with mode "function"


@dataclass(frozen=True)
class ResponseFormat:
    """text; json_object: any JSON object; json_schema: JSON valid against `schema`."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    schema: dict[str, Any] | None = None
    name: str | None = None
    strict: bool = False


@dataclass(frozen=True)
class LogprobOptions:
    """Return each completion token's log probability, with `top` alternatives (0..20)."""

    top: int = 0


# -- the request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestContext:
    """Who asked and how: what the gateway, guard, cache and usage log need beyond the text."""

    protocol: str = "openai"  # the wire protocol's name, chosen once per request by the API layer
    endpoint: str = ""  # the path, e.g. /v1/chat/completions
    key_name: str | None = None  # the API key's name, once the guard has checked it
    scopes: frozenset[str] | None = None  # that key's scopes; None when keys are off (all allowed)
    priority: str | None = None  # X-Ember-Priority
    no_cache: bool = False  # Cache-Control: no-cache


@dataclass(frozen=True)
class ApprovalDecision:
    """A human's answer to a PendingApproval, carried by the request that resumes the run."""

    approval_id: str
    approve: bool
    reason: str | None = None


@dataclass(frozen=True)
class TextRequest:
    """A chat (messages) or a plain completion (prompt); exactly one is set."""

    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    load_options: LoadOptions | None = None
    keep_alive: float | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    logprobs: LogprobOptions | None = None
    context: RequestContext = field(default_factory=RequestContext)
    # ember extensions for agents (agents/): run a plain model in an agent mode ("tools",
    # "reflection", "planning", "swarm"); None changes nothing. A model named "agent/NAME" is
    # a configured agent whatever `mode` says.
    mode: str | None = None
    mode_tools: tuple[str, ...] = ()  # with `mode` on a plain model: the ember tools it may call
    mode_members: tuple[str, ...] = ()  # with mode "swarm" on a plain model: the agents to hand to
    approvals: tuple[ApprovalDecision, ...] = ()  # answers to a paused run's pending approvals

    @property
    def has_tools(self) -> bool:
        return bool(self.tools)


# -- what comes back --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call `index`: id and name on its first delta only, then fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


StepKind = Literal["model", "tool", "critique", "plan", "handoff", "approval"]


@dataclass(frozen=True)
class AgentStep:
    """One finished step of an agent run, for the trace: a model call, a tool run, a mode's own
    step (a critique's score, a plan, a handoff) or an approval decision."""

    index: int  # 0, 1, 2... in the order the steps finished
    kind: StepKind
    agent: str  # the agent that took the step (swarm: the active member)
    name: str = ""  # the tool's name; the model's name for a model step
    arguments: str = ""  # a tool step: the JSON arguments
    result: str = ""  # a tool step: what was fed back; a model step: its text (tool calls aside)
    is_error: bool = False
    seconds: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0  # USD, as the usage log priced it
    detail: dict[str, Any] = field(default_factory=dict)  # mode-specific (score, plan steps, to)


@dataclass(frozen=True)
class PendingApproval:
    """A tool call that waits for a human: the run is parked in SQLite under `run_id`."""

    approval_id: str
    run_id: str
    agent: str
    tool: str
    arguments: str  # JSON
    call_id: str


@dataclass(frozen=True)
class GenerationEvent:
    """A piece of the answer; the last event has done=True, a finish reason and stats."""

    text: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()  # one per completion token this event carries
    done: bool = False
    finish_reason: FinishReason | None = None
    stats: GenerationStats | None = None
    # On the done event of an answer a stop string ended: that string (None when the provider
    # does not say, as OpenAI-speaking upstreams do not).
    stop_sequence: str | None = None
    step: AgentStep | None = None  # an agent run's step, sent when it finished
    pending: tuple[PendingApproval, ...] = ()  # on the done event, finish reason "approval"
    run_id: str | None = None  # on the done event of an agent run


@dataclass(frozen=True)
class Answer:
    """A whole answer, gathered from its events (a client that did not stream)."""

    text: str
    tool_calls: tuple[ToolCall, ...]
    logprobs: tuple[TokenLogprob, ...]
    finish_reason: FinishReason
    stats: GenerationStats
    stop_sequence: str | None = None
    steps: tuple[AgentStep, ...] = ()  # an agent run's trace
    pending: tuple[PendingApproval, ...] = ()
    run_id: str | None = None


class AnswerBuilder:
    """Gathers events into an Answer: text joined, tool-call deltas merged by index."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, arguments...]
        self._steps: list[AgentStep] = []
        self.final: GenerationEvent | None = None

    def add(self, event: GenerationEvent) -> None:
        if event.text:
            self._text.append(event.text)
        if event.logprobs:
            self._logprobs.extend(event.logprobs)
        if event.step is not None:
            self._steps.append(event.step)
        for delta in event.tool_calls:
            parts = self._calls.setdefault(delta.index, ["", ""])
            if delta.id:
                parts[0] = delta.id
            if delta.name:
                parts[1] = delta.name
            parts.append(delta.arguments)
        if event.done:
            self.final = event

    def answer(self) -> Answer:
        final = self.final
        assert final is not None and final.stats is not None, "a stream always ends with a done event"
        calls = tuple(
            ToolCall(id=parts[0], name=parts[1], arguments="".join(parts[2:]))
            for _, parts in sorted(self._calls.items())
        )
        return Answer(
            text="".join(self._text),
            tool_calls=calls,
            logprobs=tuple(self._logprobs),
            finish_reason=final.finish_reason or "stop",
            stats=final.stats,
            stop_sequence=final.stop_sequence,
            steps=tuple(self._steps),
            pending=final.pending,
            run_id=final.run_id,
        )
