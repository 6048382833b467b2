"""AgentService: the gateway's `AgentHost`: a request naming "agent/NAME" or a `mode` runs here.

`start` checks everything a request can get wrong before the first byte (an unknown agent,
mode, tool or member; client-side tools; a key without the `tools` scope; approvals that answer
no parked run) and raises the domain error naming the field; then the run starts in its own
task, its events reach the client through a queue, and the first one is awaited (so a first
model call that fails is still an HTTP status).

What a plain model in a mode gets: an AgentSpec "mode:<mode>" for that model, with the ember
tools the request names in `mode_tools` (none by default), a swarm's `mode_members`, and the
`[agents_defaults]` limits.

Each run writes one usage record of its own (model "agent/NAME" or the plain model, provider
"agent", its latency and status) with tokens and cost 0: its model steps' records, written by
the gateway, carry those (and count against the key's budgets) once. The sums per run are in
the response's stats and trace and in the run's audit row ("agent_run").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import replace

from ember.agents.config import AGENT_PREFIX, AgentsConfig, tool_problem
from ember.agents.modes import MODES
from ember.agents.runner import RUNNER_KEY, Run, RunDeps, RunEnd
from ember.agents.types import AgentSpec, Mode, RunState
from ember.errors import BadRequest, EmberError, Forbidden, ModelNotFound, UnsupportedParameter
from ember.gateway.usage import UsageRecord
from ember.services.generation import Generation
from ember.services.types import ChatMessage, GenerationEvent, TextRequest

log = logging.getLogger("ember.agents")

TOOLS_SCOPE = "tools"

_Item = GenerationEvent | BaseException | None  # None: the run is over


class AgentService:
    def __init__(self, config: AgentsConfig, deps: RunDeps) -> None:
        self.config = config
        self.deps = deps
        self._specs: Mapping[str, AgentSpec] = deps.agents
        self._modes: Mapping[str, Mode] = MODES

    # -- listing ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """The model names of the configured agents ("agent/NAME")."""
        return [AGENT_PREFIX + name for name in self._specs]

    def specs(self) -> list[AgentSpec]:
        return list(self._specs.values())

    # -- AgentHost ----------------------------------------------------------------------------

    def handles(self, request: TextRequest) -> bool:
        return request.model.startswith(AGENT_PREFIX) or request.mode is not None or bool(request.approvals)

    async def start(self, request: TextRequest) -> Generation:
        started, ts = time.perf_counter(), time.time()
        try:
            spec = self.resolve(request)
            self._check_request(request, spec)
            self._check_scope(request, spec)
            saved: RunState | None = None
            if request.approvals:
                saved = await self._parked(request, spec)
                spec = _as_parked(spec, saved)
                self._check_scope(request, spec)
        except EmberError as exc:  # refused before the run: one usage row says so, as the gateway's do
            self.deps.gateway.emit(self._record(request, ts, started, exc.status_code, exc.message))
            raise
        mode = self._modes[saved.mode if saved is not None else spec.mode]
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        run = Run(self.deps, request, spec, mode, queue.put_nowait, saved=saved)
        await self.deps.toolbox.refresh()
        messages = list(request.messages or []) if saved is None else []
        events = self._events(run, queue, messages, saved, started, ts)
        resources = AsyncExitStack()
        # Closing the generation (a client gone) closes the run's stream, which cancels the run.
        resources.push_async_callback(events.aclose)
        generation = Generation(
            model=request.model,
            prompt_tokens=0,
            load_seconds=0.0,
            started=started,
            _events=events,
            _resources=resources,
            provider="agent",
        )
        generation.notes["X-Ember-Agent-Run"] = run.run_id
        await generation.prefetch()
        return generation

    async def _events(
        self,
        run: Run,
        queue: asyncio.Queue[_Item],
        messages: list[ChatMessage],
        saved: RunState | None,
        started: float,
        ts: float,
    ) -> AsyncGenerator[GenerationEvent, None]:
        end = RunEnd("cancelled", "", status=499, error="the client went away")

        async def work() -> None:
            nonlocal end
            try:
                result = await run.drive(messages, saved)
                end = result
                run.finish(result)
                queue.put_nowait(None)
            except EmberError as exc:
                end = RunEnd("stop", "", status=exc.status_code, error=exc.message)
                queue.put_nowait(exc)
            except Exception as exc:
                log.exception("agent run %s failed", run.run_id)
                end = RunEnd("stop", "", status=500, error=str(exc))
                queue.put_nowait(exc)

        task = asyncio.create_task(work(), name=f"agent-run-{run.run_id}")
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if not task.done():
                task.cancel()
                with suppress(asyncio.CancelledError):
                    await task
            self._account(run, end, ts, started)

    def _account(self, run: Run, end: RunEnd, ts: float, started: float) -> None:
        record = self._record(run.request, ts, started, end.status, end.error)
        record.upstream_model = run.root.model
        record.ttft_ms = (run.first_event_at - started) * 1000 if run.first_event_at is not None else None
        self.deps.gateway.emit(record)
        run.audit_end(end)

    @staticmethod
    def _record(request: TextRequest, ts: float, started: float, status: int, error: str | None) -> UsageRecord:
        """The run's own usage row: no tokens or cost (its model steps' rows carry them)."""
        ctx = request.context
        return UsageRecord(
            ts=ts,
            endpoint=ctx.endpoint,
            protocol=ctx.protocol,
            model=request.model,
            provider="agent",
            key=ctx.key_name,
            latency_ms=(time.perf_counter() - started) * 1000,
            status=status,
            error=error,
            request=request,
        )

    # -- checks before the first byte ---------------------------------------------------------

    def resolve(self, request: TextRequest) -> AgentSpec:
        """The agent a request runs: a configured one ("agent/NAME") or a plain model in a mode."""
        if request.model.startswith(AGENT_PREFIX):
            name = request.model.removeprefix(AGENT_PREFIX)
            spec = self._specs.get(name)
            if spec is None:
                known = ", ".join(self.names()) or "none are configured"
                raise ModelNotFound(request.model, f"no agent named '{name}' (agents: {known})")
            if request.mode is not None and request.mode != spec.mode:
                raise BadRequest(
                    f"{request.model} runs in mode '{spec.mode}'; a request cannot change it (leave mode out)",
                    param="mode",
                )
            for field, value in (("mode_tools", request.mode_tools), ("mode_members", request.mode_members)):
                if value:
                    raise BadRequest(
                        f"{field} is for a plain model run in a mode; {request.model} has its tools and members "
                        "in ember.toml",
                        param=field,
                    )
            return spec
        mode = request.mode
        if mode is None:
            if request.approvals:
                raise BadRequest(
                    "approvals answer a paused agent run: send them with the run's model (agent/NAME, or the "
                    "model and its mode)",
                    param="approvals",
                )
            raise BadRequest("not an agent request", param="model")  # handles() said no: never here
        if mode not in self._modes:
            raise BadRequest(f"unknown mode '{mode}' (modes: {', '.join(sorted(self._modes))})", param="mode")
        servers = [s.name for s in self.config.mcp_servers]
        for i, tool in enumerate(request.mode_tools):
            problem = tool_problem(tool, self.config.tools, servers)
            if problem is not None:
                raise BadRequest(f"mode_tools[{i}]: {problem}", param="mode_tools")
        if request.mode_members and mode != "swarm":
            raise BadRequest(f"mode_members is for mode swarm, not {mode}", param="mode_members")
        for i, member in enumerate(request.mode_members):
            if member not in self._specs:
                raise BadRequest(f"mode_members[{i}]: '{member}' is not a configured agent", param="mode_members")
        return AgentSpec(
            name=f"mode:{mode}",
            model=request.model,
            tools=tuple(request.mode_tools),
            mode=mode,
            limits=self.config.agents_defaults.limits(),
            members=tuple(request.mode_members),
        )

    def _check_request(self, request: TextRequest, spec: AgentSpec) -> None:
        """What an agent run cannot honour is refused, never dropped."""
        who = request.model if request.model.startswith(AGENT_PREFIX) else f"mode {spec.mode}"
        if request.messages is None:
            raise UnsupportedParameter(f"{who} answers chats (messages), not a plain prompt", param="prompt")
        if request.tools:
            # The client's own functions would need the run to end mid-turn and resume with its
            # results; an agent's tools are the operator's, named in ember.toml or mode_tools.
            raise UnsupportedParameter(
                f"{who} runs ember's tools (its own, or those named in mode_tools); the client's function "
                "tools cannot be combined with an agent run",
                param="tools",
            )
        if request.tool_choice.mode != "auto":
            raise UnsupportedParameter(
                f"{who} chooses its own tool calls; tool_choice is not taken", param="tool_choice"
            )
        if request.response_format.type != "text":
            raise UnsupportedParameter(
                f"{who} answers in text; response_format is not taken for an agent run", param="response_format"
            )
        if request.logprobs is not None:
            raise UnsupportedParameter(f"{who} does not return logprobs", param="logprobs")
        if not request.messages and not request.approvals:
            raise BadRequest("messages must not be empty", param="messages")

    def _check_scope(self, request: TextRequest, spec: AgentSpec) -> None:
        scopes = request.context.scopes
        if scopes is None or TOOLS_SCOPE in scopes:
            return
        members = [self._specs[m] for m in spec.members if m in self._specs]
        if spec.tools or any(m.tools for m in members):
            raise Forbidden(
                f"this key lacks the '{TOOLS_SCOPE}' scope, which {request.model}"
                f"{'' if request.model.startswith(AGENT_PREFIX) else ' in mode ' + spec.mode} needs to run tools"
            )

    async def _parked(self, request: TextRequest, spec: AgentSpec) -> RunState:
        gate = self.deps.gate
        if gate is None:
            raise BadRequest("this server keeps no approvals: nothing to resume", param="approvals")

        def check(saved: RunState) -> None:
            if saved.model != request.model or saved.agent != spec.name:
                raise BadRequest(
                    f"these approvals answer a run of {saved.model}, not of {request.model}", param="approvals"
                )
            if saved.mode not in self._modes:
                raise BadRequest(f"the paused run's mode '{saved.mode}' is not served here", param="approvals")
            _as_parked(spec, saved)  # raises for mode_tools / mode_members that differ

        # Checked before the run leaves the parking: a wrong follow-up loses nothing.
        return await gate.resume(request.approvals, request.context.key_name, model=request.model, check=check)


def _as_parked(spec: AgentSpec, saved: RunState) -> AgentSpec:
    """A plain model's mode run resumes with the tools and members it was parked with."""
    kept = saved.mode_state.get(RUNNER_KEY)
    if not spec.name.startswith("mode:") or not isinstance(kept, dict):
        return spec
    tools, members = tuple(kept.get("tools", ())), tuple(kept.get("members", ()))
    for field, asked, had in (("mode_tools", spec.tools, tools), ("mode_members", spec.members, members)):
        if asked and asked != had:  # a follow-up cannot change what the paused run may reach
            raise BadRequest(
                f"{field} differs from the paused run's ({', '.join(had) or 'none'}); leave it out to resume",
                param=field,
            )
    return replace(spec, tools=tools, members=members)
