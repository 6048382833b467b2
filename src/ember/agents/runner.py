"""One agent run: the `ModeContext` a mode drives, its limits, its trace and its end.

A run reaches models only through the gateway (`Gateway.start`/`complete` with a plain
`TextRequest`: no `mode`, the agent's model, the client's context), so the key's budgets, the
cache, usage and audit apply to every step, and tools only through the `Toolbox`.

Invariants:
- every model call and every tool call is one `AgentStep`, recorded (and sent to the client as
  an event) when it finishes; `index` is the order of finishing;
- a limit (steps, tool calls, deadline) ends the run with finish reason "max_steps" or
  "deadline" and a sentence saying which limit; a call needing approval parks the run (the
  conversation of the last model call and its answer, the mode's state) and ends it with
  "approval" and the pending calls; anything else a mode raises ends the stream with that error;
- a tool's failure never ends the run: it is fed back to the model as the tool's result,
  starting "error:" (unknown tool, arguments that do not fit the schema, a timeout, a refusal);
  only a call that could run is put to a human;
- a resumed run runs the parked turn's approved calls (and those that needed no approval),
  feeds a denied one back as denied and then ends, saying so; else its mode goes on from the
  saved conversation, under the same limits (steps, tool calls and working time so far kept);
- exactly one done event ends the stream, after every step and text event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from ember.agents.toolbox import Toolbox
from ember.agents.types import (
    AgentSpec,
    AgentTool,
    ApprovalGate,
    ApprovalPending,
    Mode,
    ModeOutcome,
    RunLimit,
    RunState,
    ToolOutcome,
)
from ember.engine.types import GenerationStats
from ember.errors import ModelNotFound, NotFound, ServiceUnavailable
from ember.gateway.gateway import Gateway
from ember.guard.audit import AuditLog
from ember.services.generation import Generation
from ember.services.types import (
    AgentStep,
    Answer,
    AnswerBuilder,
    ChatMessage,
    FinishReason,
    GenerationEvent,
    PendingApproval,
    ResponseFormat,
    TextRequest,
    Tool,
    ToolCall,
    ToolChoice,
)

log = logging.getLogger("ember.agents")

# Kept beside the mode's state in a parked run: the model calls made so far (a mode's own steps
# may share their kinds), and the tools and members of a plain model's mode run ("mode:<mode>"),
# which no config holds, so the follow-up need not name them again.
RUNNER_KEY = "ember.run"
MAX_RESULT_CHARS = 65536  # of one tool result fed back to the model


@dataclass
class RunDeps:
    """What every run shares: the gateway, the tools, the approval gate, the audit log and the
    configured agents (for a swarm's members)."""

    gateway: Gateway
    toolbox: Toolbox
    audit: AuditLog
    agents: Mapping[str, AgentSpec]
    gate: ApprovalGate | None = None


@dataclass
class _Totals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_eval_seconds: float = 0.0
    eval_seconds: float = 0.0
    cached_prompt_tokens: int = 0
    cost: float = 0.0

    def add(self, stats: GenerationStats, cost: float) -> None:
        self.prompt_tokens += stats.prompt_tokens
        self.completion_tokens += stats.completion_tokens
        self.prompt_eval_seconds += stats.prompt_eval_seconds
        self.eval_seconds += stats.eval_seconds
        self.cached_prompt_tokens += stats.cached_prompt_tokens
        self.cost += cost

    def stats(self) -> GenerationStats:
        return GenerationStats(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            prompt_eval_seconds=self.prompt_eval_seconds,
            eval_seconds=self.eval_seconds,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )


@dataclass
class RunEnd:
    """How the run ended, for the done event, the usage record and the audit row."""

    finish_reason: FinishReason
    text: str
    pending: tuple[PendingApproval, ...] = ()
    error: str | None = None
    status: int = 200


def arguments_digest(arguments: str) -> str:
    return hashlib.sha256(arguments.encode("utf-8", "backslashreplace")).hexdigest()[:16]


class Run:
    """A run of one agent for one request: the `ModeContext` its mode gets (agents/types.py)."""

    def __init__(
        self,
        deps: RunDeps,
        request: TextRequest,
        spec: AgentSpec,
        mode: Mode,
        emit: Callable[[GenerationEvent], None],
        *,
        run_id: str | None = None,
        saved: RunState | None = None,
    ) -> None:
        self.deps = deps
        self.request = request
        self.root = spec  # the agent asked for (a swarm's own agent)
        self.mode = mode
        self.run_id = run_id or "run_" + uuid.uuid4().hex[:24]
        self._emit = emit
        self._agent = spec
        self._state: dict[str, Any] = {}
        self.steps: list[AgentStep] = []
        self.tool_calls_used = 0
        self._model_calls = 0  # counted against max_steps
        self._cut: set[str] = set()  # the id of the call the last answer was cut writing
        self._elapsed_before = 0.0  # a resumed run's working time before its pause
        self._started = time.perf_counter()
        self._streamed = False  # some final text has reached the client
        self._last_final = ""  # the text of the last final call that streamed
        self._conversation: list[ChatMessage] = []  # the last model call's messages and answer
        self.totals = _Totals()
        self.first_event_at: float | None = None
        self._semaphore = asyncio.Semaphore(spec.limits.tool_concurrency)
        if saved is not None:
            self.run_id = saved.run_id
            self._state = {k: v for k, v in saved.mode_state.items() if k != RUNNER_KEY}
            kept = saved.mode_state.get(RUNNER_KEY)
            self._model_calls = int(kept.get("model_calls", 0)) if isinstance(kept, dict) else 0
            self.steps = list(saved.steps)
            self.tool_calls_used = saved.tool_calls_used
            self._elapsed_before = saved.elapsed
            if saved.active != spec.name:
                self._agent = self.agent_named(saved.active)

    # -- ModeContext --------------------------------------------------------------------------

    @property
    def agent(self) -> AgentSpec:
        return self._agent

    @property
    def state(self) -> dict[str, Any]:
        return self._state

    def agent_named(self, name: str) -> AgentSpec:
        if name == self.root.name:
            return self.root
        spec = self.deps.agents.get(name)
        if spec is None:
            raise NotFound(f"no agent named '{name}' is configured")
        return spec

    def tools_for(self, agent: AgentSpec) -> list[Tool]:
        tools = []
        for name in self.deps.toolbox.expand(agent.tools):
            spec = self.deps.toolbox.spec(name)
            if spec is not None:
                tools.append(spec.as_tool())
            else:  # an MCP server that is down: its tools are not offered; a call is an error
                log.warning("agent %s: tool %s is not available now", agent.name, name)
        return tools

    def switch_to(self, agent: AgentSpec) -> None:
        self._agent = agent

    def next_index(self) -> int:
        return len(self.steps)

    def record(self, step: AgentStep) -> None:
        self.steps.append(step)
        self._send(GenerationEvent(step=step))

    def elapsed(self) -> float:
        return self._elapsed_before + time.perf_counter() - self._started

    def remaining(self) -> float:
        return self.root.limits.deadline - self.elapsed()

    def model_calls(self) -> int:
        return self._model_calls

    async def call_model(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[Tool] = (),
        tool_choice: ToolChoice | None = None,
        response_format: ResponseFormat | None = None,
        final: bool = False,
        kind: Literal["model", "critique", "plan"] = "model",
        min_tokens: int | None = None,
    ) -> Answer:
        limits = self.root.limits
        if self.remaining() <= 0:
            raise RunLimit("deadline", self._deadline_text())
        if self.model_calls() >= limits.max_steps:
            raise RunLimit(
                "max_steps", f"the agent stopped after {limits.max_steps} model steps without a final answer"
            )
        self._model_calls += 1
        agent = self._agent
        head = [ChatMessage(role="system", content=agent.instructions)] if agent.instructions else []
        req = TextRequest(
            model=agent.model,
            messages=[*head, *messages],
            max_tokens=_at_least(self.request.max_tokens, min_tokens),
            stop=self.request.stop,
            sampling=self.request.sampling,
            load_options=self.request.load_options,
            keep_alive=self.request.keep_alive,
            tools=tuple(tools),
            tool_choice=tool_choice or ToolChoice(),
            response_format=response_format or ResponseFormat(),
            context=self.request.context,
        )
        started = time.perf_counter()
        try:
            generation, answer = await self._generate(req, final)
        except ModelNotFound as exc:
            if agent.name.startswith("mode:"):
                raise  # the client named the model: a 404 is the answer
            # The client asked for an agent, which exists: its model missing is the server's fault.
            raise ServiceUnavailable(
                f"agent '{agent.name}' cannot run: its model '{agent.model}' is not available ({exc.message})"
            ) from exc
        cost = self._cost(generation, answer.stats)
        self.totals.add(answer.stats, cost)
        detail: dict[str, Any] = {"finish_reason": answer.finish_reason}
        if answer.tool_calls:
            detail["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in answer.tool_calls]
        self.record(
            AgentStep(
                index=self.next_index(),
                kind=kind,
                agent=agent.name,
                name=agent.model,
                result=answer.text,
                seconds=round(time.perf_counter() - started, 4),
                tokens_in=answer.stats.prompt_tokens,
                tokens_out=answer.stats.completion_tokens,
                cost=cost,
                detail=detail,
            )
        )
        # Every call gets an id of its own: results and approvals are matched to calls by id.
        seen: set[str] = set()
        calls: tuple[ToolCall, ...] = ()
        for c in answer.tool_calls:
            if not c.id or c.id in seen:
                c = ToolCall(id=_call_id(), name=c.name, arguments=c.arguments)
            seen.add(c.id)
            calls += (c,)
        if calls != answer.tool_calls:
            answer = Answer(
                text=answer.text,
                tool_calls=calls,
                logprobs=answer.logprobs,
                finish_reason=answer.finish_reason,
                stats=answer.stats,
                stop_sequence=answer.stop_sequence,
            )
        # The call being written when max_tokens ran out (ids may repeat across turns: this turn's).
        self._cut = {calls[-1].id} if answer.finish_reason == "length" and calls else set()
        self._conversation = [*messages, ChatMessage(role="assistant", content=answer.text, tool_calls=calls)]
        return answer

    async def _generate(self, req: TextRequest, final: bool) -> tuple[Generation, Answer]:
        """One model call through the gateway; a `final` one streams its text to the client as
        it comes (after a blank line when an earlier turn's text went out already)."""
        if not final:
            return await self.deps.gateway.complete(req)
        generation = await self.deps.gateway.start(req)
        builder = AnswerBuilder()
        separated = False
        async for event in generation:
            builder.add(event)
            if event.text:
                if self._streamed and not separated:
                    self._send(GenerationEvent(text="\n\n"))
                separated = True
                self._send(GenerationEvent(text=event.text))
        answer = builder.answer()
        if separated:
            self._streamed = True
            self._last_final = answer.text
        return generation, answer

    async def run_tools(self, calls: Sequence[ToolCall]) -> list[ChatMessage]:
        limits = self.root.limits
        if self.tool_calls_used + len(calls) > limits.max_tool_calls:
            raise RunLimit(
                "max_steps",
                f"the agent stopped at its limit of {limits.max_tool_calls} tool calls without a final answer",
            )
        gate = self.deps.gate
        if gate is not None:
            # Only a call that could run asks a human: a refused one is fed back as it is.
            asking = [c for c in calls if self._needs_approval(c) and self._refusal(c) is None]
            waiting = [c for c in asking if gate.auto_decision(self._agent, c) == "pending"]
            if waiting:
                await self._park(gate, waiting)
        else:
            waiting = []
        approved = {c.id for c in calls if c not in waiting}
        return await self.execute(calls, approved)

    # -- tools --------------------------------------------------------------------------------

    def _needs_approval(self, call: ToolCall) -> bool:
        spec = self.deps.toolbox.spec(call.name)
        return bool(spec and spec.require_approval) or call.name in self._agent.options.get("require_approval", ())

    async def execute(self, calls: Sequence[ToolCall], approved: set[str]) -> list[ChatMessage]:
        """Run one turn's calls at once (at most `tool_concurrency` at a time); the results come
        back in the order of the calls. `approved`: the ids a human or a rule let through."""
        self.tool_calls_used += len(calls)
        return list(await asyncio.gather(*(self._one(call, call.id in approved) for call in calls)))

    async def _one(self, call: ToolCall, approved: bool) -> ChatMessage:
        started = time.perf_counter()
        agent = self._agent
        outcome = await self._outcome(call, approved)
        seconds = round(time.perf_counter() - started, 4)
        content = f"error: {outcome.content}" if outcome.is_error else outcome.content
        if len(content) > MAX_RESULT_CHARS:  # a tool that does not cap its own output
            content = f"{content[:MAX_RESULT_CHARS]}\n[cut: {len(content) - MAX_RESULT_CHARS} more characters]"
        self.record(
            AgentStep(
                index=self.next_index(),
                kind="tool",
                agent=agent.name,
                name=call.name,
                arguments=call.arguments,
                result=content,
                is_error=outcome.is_error,
                seconds=seconds,
                detail={"call_id": call.id},
            )
        )
        self.deps.audit.event(
            "agent_tool",
            self.request.context.key_name,
            {
                "run_id": self.run_id,
                "agent": agent.name,
                "tool": call.name,
                "arguments_sha256": arguments_digest(call.arguments),
                "outcome": "error" if outcome.is_error else "ok",
                "seconds": seconds,
            },
        )
        return ChatMessage(role="tool", content=content, tool_call_id=call.id, name=call.name)

    def _refusal(self, call: ToolCall) -> str | None:
        """Why this call cannot run at all: not the agent's tool, not available, bad arguments."""
        checked = self._checked(call)
        return checked if isinstance(checked, str) else None

    def _checked(self, call: ToolCall) -> tuple[AgentTool, dict[str, Any]] | str:
        """The tool and the parsed arguments of a call that can run, or why it cannot."""
        allowed = self.deps.toolbox.expand(self._agent.tools)
        if call.name not in allowed:
            offered = ", ".join(allowed) or "none"
            return f"tool '{call.name}' is not one of this agent's tools (its tools: {offered})"
        tool = self.deps.toolbox.tool(call.name)
        if tool is None:
            return self.deps.toolbox.unavailable(call.name)
        arguments, problem = parse_arguments(tool, call.arguments)
        if problem is not None:
            if call.id in self._cut:
                problem += " (the answer was cut at max_tokens while writing this call)"
            return problem
        return tool, arguments

    async def _outcome(self, call: ToolCall, approved: bool) -> ToolOutcome:
        checked = self._checked(call)
        if isinstance(checked, str):
            return ToolOutcome(checked, True)
        tool, arguments = checked
        if not approved and self._needs_approval(call):
            return ToolOutcome(f"tool '{call.name}' needs a human's approval, and this server has no approvals", True)
        timeout = tool.spec.timeout + 1
        async with self._semaphore:
            try:
                return await asyncio.wait_for(tool.call(arguments), timeout)
            except TimeoutError:
                return ToolOutcome(
                    f"tool '{call.name}' did not answer within {tool.spec.timeout:g} s and was stopped", True
                )
            except Exception as exc:  # the contract says a tool does not raise; one that does is still only an error
                log.exception("tool %s raised", call.name)
                return ToolOutcome(f"tool '{call.name}' failed: {exc}", True)

    # -- approvals ----------------------------------------------------------------------------

    async def _park(self, gate: ApprovalGate, calls: Sequence[ToolCall]) -> None:
        pending = [
            PendingApproval(
                approval_id="apr_" + uuid.uuid4().hex[:20],
                run_id=self.run_id,
                agent=self._agent.name,
                tool=call.name,
                arguments=call.arguments,
                call_id=call.id,
            )
            for call in calls
        ]
        for item in pending:
            self.record(
                AgentStep(
                    index=self.next_index(),
                    kind="approval",
                    agent=item.agent,
                    name=item.tool,
                    arguments=item.arguments,
                    detail={"status": "pending", "approval_id": item.approval_id, "call_id": item.call_id},
                )
            )
        await gate.park(
            RunState(
                run_id=self.run_id,
                agent=self.root.name,
                active=self._agent.name,
                mode=self.mode.name,
                model=self.request.model,
                messages=list(self._conversation),
                mode_state={
                    **self._state,
                    RUNNER_KEY: {
                        "model_calls": self._model_calls,
                        "tools": list(self.root.tools),
                        "members": list(self.root.members),
                    },
                },
                steps=list(self.steps),
                tool_calls_used=self.tool_calls_used,
                key_name=self.request.context.key_name,
                pending=pending,
                created=time.time(),
                elapsed=self.elapsed(),
            )
        )
        raise ApprovalPending(pending)

    async def resume(self, gate: ApprovalGate, saved: RunState) -> tuple[list[ChatMessage], RunEnd | None]:
        """Apply the decisions on a parked run's pending calls: the approved ones (and the turn's
        calls that needed no approval) run, a denied one is fed back as denied; a denial ends
        the run (RunEnd), else the conversation to call the mode again with."""
        messages = list(saved.messages)
        last = messages[-1] if messages else None
        calls = last.tool_calls if last is not None and last.role == "assistant" else ()
        by_call = {p.call_id: p for p in saved.pending}
        approved: set[str] = set()
        denied: dict[str, str] = {}
        for call in calls:
            item = by_call.get(call.id)
            if item is None:
                approved.add(call.id)
                continue
            decision, reason = gate.decision_of(item.approval_id)
            self.record(
                AgentStep(
                    index=self.next_index(),
                    kind="approval",
                    agent=item.agent,
                    name=item.tool,
                    arguments=item.arguments,
                    result=reason or "",
                    detail={"status": decision, "approval_id": item.approval_id, "call_id": item.call_id},
                )
            )
            if decision == "approved":
                approved.add(call.id)
            else:
                denied[call.id] = reason or "no reason given"
        runnable = [c for c in calls if c.id not in denied]
        results = {m.tool_call_id: m for m in await self.execute(runnable, approved)}
        for call in calls:
            if call.id in denied:
                results[call.id] = ChatMessage(
                    role="tool", content=f"denied by a human: {denied[call.id]}", tool_call_id=call.id, name=call.name
                )
        messages.extend(results[c.id] for c in calls)
        self._conversation = messages
        if denied:
            names = ", ".join(sorted({c.name for c in calls if c.id in denied}))
            reasons = "; ".join(sorted(set(denied.values())))
            return messages, RunEnd("stop", f"the run ended: a human denied the call to {names} ({reasons})")
        return messages, None

    # -- the run's end ------------------------------------------------------------------------

    def _deadline_text(self) -> str:
        return f"the agent stopped at its deadline of {self.root.limits.deadline:g} s without a final answer"

    def _send(self, event: GenerationEvent) -> None:
        if self.first_event_at is None:
            self.first_event_at = time.perf_counter()
        self._emit(event)

    def _cost(self, generation: Generation, stats: GenerationStats) -> float:
        """Priced as the gateway's usage record prices it (gateway._finish)."""
        provider = self.deps.gateway.providers.get(generation.provider)
        if provider is None or generation.cache == "hit":
            return 0.0
        return (
            stats.prompt_tokens * provider.config.price_in + stats.completion_tokens * provider.config.price_out
        ) / 1e6

    async def drive(self, messages: list[ChatMessage], saved: RunState | None = None) -> RunEnd:
        """Run the mode under the deadline (a parked run: its decided calls first); a limit or a
        pause is the run's end, not an error."""
        timer = asyncio.timeout(max(self.remaining(), 0.0))
        try:
            async with timer:
                if saved is not None:
                    assert self.deps.gate is not None, "a parked run comes from the gate"
                    messages, ended = await self.resume(self.deps.gate, saved)
                    if ended is not None:
                        return ended
                outcome: ModeOutcome = await self.mode.run(self, messages)
        except RunLimit as limit:
            return RunEnd(limit.reason, limit.message)
        except TimeoutError:
            if not timer.expired():
                raise  # some other wait's, not the run's deadline
            return RunEnd("deadline", self._deadline_text())
        except ApprovalPending as paused:
            tools = ", ".join(p.tool for p in paused.pending)
            ids = ", ".join(p.approval_id for p in paused.pending)
            return RunEnd("approval", f"the run waits for a human's approval of {tools} ({ids})", paused.pending)
        return RunEnd(outcome.finish_reason, outcome.text)

    def finish(self, end: RunEnd) -> None:
        """The end's text (unless the mode's final call already streamed it) and the done event."""
        text = end.text
        if text and self._streamed and text == self._last_final:
            text = ""  # the mode's answer is the final call the client has just read
        if text:
            if self._streamed:
                self._send(GenerationEvent(text="\n\n"))
            self._send(GenerationEvent(text=text))
        self._send(
            GenerationEvent(
                done=True,
                finish_reason=end.finish_reason,
                stats=self.totals.stats(),
                pending=end.pending,
                run_id=self.run_id,
            )
        )

    def audit_end(self, end: RunEnd) -> None:
        self.deps.audit.event(
            "agent_run",
            self.request.context.key_name,
            {
                "run_id": self.run_id,
                "agent": self.root.name,
                "model": self.request.model,
                "mode": self.mode.name,
                "steps": len(self.steps),
                "tool_calls": self.tool_calls_used,
                "tokens_in": self.totals.prompt_tokens,
                "tokens_out": self.totals.completion_tokens,
                "cost": self.totals.cost,
                "finish_reason": end.finish_reason,
                "status": end.status,
                "error": end.error,
            },
        )


def _call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


# tool name -> (its schema, its validator); the schema is held, so `is` tells a re-listed tool's new one
_VALIDATORS: dict[str, tuple[dict[str, Any], Any]] = {}


def parse_arguments(tool: AgentTool, text: str) -> tuple[dict[str, Any], str | None]:
    """The call's arguments as a dict, or the problem to feed back: not JSON, not an object, or
    not valid against the tool's JSON schema (naming where and why)."""
    name = tool.spec.name
    try:
        arguments = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError) as exc:
        return {}, f"the arguments of tool '{name}' are not valid JSON ({exc})"
    if not isinstance(arguments, dict):
        return {}, f"the arguments of tool '{name}' must be a JSON object, not {type(arguments).__name__}"
    schema = tool.spec.parameters
    cached = _VALIDATORS.get(name)
    if cached is None or cached[0] is not schema:
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            cached = (schema, cls(schema))
        except jsonschema.SchemaError:
            return arguments, None  # the tool's own schema is broken: let the tool judge
        _VALIDATORS[name] = cached
    error = jsonschema.exceptions.best_match(cached[1].iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the arguments object)"
        return arguments, f"the arguments do not fit the schema of tool '{name}': at {where}: {error.message}"
    return arguments, None


def _at_least(max_tokens: int | None, floor: int | None) -> int | None:
    """The client's max_tokens, raised to `floor` for a call whose answer must be whole."""
    if floor is None or max_tokens is None:
        return max_tokens
    return max(max_tokens, floor)
