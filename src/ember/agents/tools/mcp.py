"""MCP servers as tool sources: one `McpSource` per `[[mcp_servers]]` table, through the `mcp` SDK.

Shape: each source has one long-lived owner task that enters the SDK's transport and
`ClientSession` (async context managers whose anyio cancel scopes must be entered and left in
the same task), initializes, lists the tools and then waits until the connection ends; tool
calls run in the callers' tasks on the open session (the SDK correlates concurrent requests).
A persistent session rather than one per call: a stdio server is a process that takes about a
second to start, a call on an open session a few milliseconds.

Invariants:
- a tool call never raises for the server's failure (not connected, dead, timed out, an MCP
  error result): it is a `ToolOutcome(is_error=True)` naming the server; only cancellation
  propagates. Every wait is bounded (startup_timeout to connect, timeout per call,
  TEARDOWN_TIMEOUT to take a connection down). Messages name no URL (a query may hold a secret).
- the owner task notices a dead connection by itself (a pump between the transport and the
  session sees the stream end; a call that timed out is followed by a ping), and reconnects:
  at once after a session that was up, then with doubling backoff, and at most
  `MAX_STARTS_PER_MINUTE` attempts in any minute. Each connection lists the tools again, as
  does a tools/list_changed notification.
- tools are "<server>__<tool>"; a server tool whose prefixed name is not a valid function name
  ([A-Za-z0-9_-], at most 64) is left out with a warning, as are tools outside `tools`.
- `aclose()` ends the session and (the SDK's stdio client does it) the child process. It cancels
  the owner through the owner's own anyio cancel scope: a native `Task.cancel()` that lands in
  the SDK's shielded shutdown is swallowed there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import httpx2
from anyio.streams.memory import MemoryObjectSendStream
from mcp import types as mcp_types
from mcp.client._transport import ReadStream, TransportStreams
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage

from ember.agents.tools.mcp_config import McpServerConfig
from ember.agents.types import AgentTool, ToolOutcome, ToolSpec

__all__ = ["McpServerConfig", "McpSource", "McpTool"]

log = logging.getLogger("ember.agents.mcp")

MAX_STARTS_PER_MINUTE = 5
MAX_BACKOFF = 30.0  # seconds between failed attempts, at most
PING_TIMEOUT = 5.0  # seconds a server has to answer the ping after a timed-out call
TEARDOWN_TIMEOUT = 10.0  # seconds a connection's teardown may take (the SDK's stdio stop is ~6 s at most)
CLOSE_TIMEOUT = 15.0  # seconds aclose waits for the owner task (the SDK's own shutdown is ~6 s at most)
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REQUEST_TIMEOUT = -32001  # mcp_types.REQUEST_TIMEOUT
_CONNECTION_CLOSED = -32000  # mcp_types.CONNECTION_CLOSED

Message = SessionMessage | Exception  # what a transport's read stream carries
State = Literal["idle", "connecting", "up", "down", "closed"]


@dataclass(frozen=True)
class _Listed:
    """One server tool as listed: its own name and the spec the model sees."""

    tool: str
    spec: ToolSpec


class McpTool:
    """One tool of an MCP server. It resolves the session at call time, so a tool handed out
    before a restart keeps working after it."""

    def __init__(self, source: McpSource, spec: ToolSpec, tool: str) -> None:
        self._source = source
        self._spec = spec
        self._tool = tool

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        return await self._source.call(self._tool, arguments)


class McpSource:
    """One MCP server's tools, as `ToolSource`.

    - `start()` starts the owner task and waits (at most `startup_timeout`) for the first
      connection. It never raises for the server's failure: a server that cannot be reached is
      logged and retried in the background, and its calls are tool errors until it comes up.
    - `tools()` are the tools of the latest listing; `tool(name)` is a handle for a
      "<server>__<tool>" name whether or not it is listed yet (an agent may name a tool of a
      server that is still down; the call is a tool error until the server lists it).
    - `known_tool_names()`: the prefixed names listed so far (empty before the first listing).
    - `aclose()` ends the session and the child process.

    A "${VAR}" in env or headers naming an unset variable raises ConfigError here.
    """

    def __init__(self, config: McpServerConfig, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.name = config.name
        environ = os.environ if environ is None else environ
        self._env = config.resolved_env(environ)
        self._headers = config.resolved_headers(environ)
        self._state: State = "idle"
        self._changed = asyncio.Event()  # set and replaced at each state change
        self._session: ClientSession | None = None
        self._listed: dict[str, _Listed] = {}  # server tool name -> listing
        self._last_error = "not started"
        self._http_status: str | None = None  # the last HTTP error status seen, for messages
        self._dead = asyncio.Event()  # set when the current connection is known to be gone
        self._wake = asyncio.Event()  # the owner has something to do: the connection ended, or relist
        self._relist = False  # the server said its tool list changed
        self._was_up = False  # the current connection came up (listed its tools)
        self._owner: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None  # the owner task's (made in start: it needs a loop)
        self._probes: set[asyncio.Task[None]] = set()
        self._starts: deque[float] = deque()

    # -- ToolSource ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._owner is None:
            self._scope = anyio.CancelScope()
            self._owner = asyncio.create_task(self._own(), name=f"mcp:{self.name}")
        deadline = time.monotonic() + self.config.startup_timeout + 1.0
        while self._state in ("idle", "connecting") and time.monotonic() < deadline:  # idle: the task not yet run
            await self._wait_change(deadline - time.monotonic())

    async def tools(self) -> list[AgentTool]:
        return [McpTool(self, listed.spec, listed.tool) for listed in self._listed.values()]

    def tool(self, name: str) -> AgentTool:
        """The tool of this prefixed name; one not (yet) listed gets a placeholder spec."""
        prefix = self.config.prefixed("")
        if not name.startswith(prefix) or name == prefix:
            raise ValueError(f"{name!r} is not a tool of MCP server '{self.name}'")
        tool = name[len(prefix) :]
        listed = self._listed.get(tool)
        if listed is not None:
            return McpTool(self, listed.spec, tool)
        return McpTool(self, self._spec(tool, f"Tool '{tool}' of MCP server '{self.name}'.", {"type": "object"}), tool)

    def known_tool_names(self) -> list[str]:
        return [listed.spec.name for listed in self._listed.values()]

    @property
    def state(self) -> State:
        return self._state

    async def aclose(self) -> None:
        owner, self._owner = self._owner, None
        for probe in list(self._probes):
            probe.cancel()
        if owner is not None:
            # An anyio cancel, not owner.cancel(): a native cancel landing in the SDK's shielded
            # shutdown (the part that stops the child) is swallowed there, and the task lives on.
            if self._scope is not None:
                self._scope.cancel()
            done, _ = await asyncio.wait({owner}, timeout=CLOSE_TIMEOUT)
            if not done:
                log.warning("MCP server '%s' did not close within %g s", self.name, CLOSE_TIMEOUT)
                owner.cancel()
        self._set_state("closed")

    # -- calls --------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> ToolOutcome:
        """Call one server tool (its own name, without the prefix). Never raises but for cancellation."""
        label = f"MCP tool '{self.config.prefixed(tool)}'"
        timeout = self.config.timeout
        deadline = time.monotonic() + timeout
        # A connection under way (a restart after a crash) is waited for, within the call's time.
        while self._reconnecting() and time.monotonic() < deadline:
            await self._wait_change(deadline - time.monotonic())
        session = self._session
        if session is None or self._state != "up" or self._dead.is_set():
            if self._state in ("idle", "closed"):
                return _error(f"MCP server '{self.name}' is not running ({self._state})")
            if self._reconnecting():
                return _error(f"MCP server '{self.name}' is still starting ({timeout:g} s waited)")
            return _error(f"MCP server '{self.name}' is not connected ({self._last_error}); ember retries it")
        if tool not in self._listed:
            return _error(f"MCP server '{self.name}' has no tool '{tool}'")
        try:
            # The SDK's own timeout answers first (and tells the server to cancel); the outer one
            # is the bound should the SDK not answer at all.
            async with asyncio.timeout(max(0.1, deadline - time.monotonic()) + 2.0):
                result = await session.call_tool(
                    tool, arguments, read_timeout_seconds=max(0.1, deadline - time.monotonic())
                )
        except TimeoutError:
            self._probe(session)
            return _error(f"{label} timed out after {timeout:g} s")
        except MCPError as exc:
            if exc.code == _REQUEST_TIMEOUT:
                self._probe(session)
                return _error(f"{label} timed out after {timeout:g} s")
            if exc.code == _CONNECTION_CLOSED:
                self._mark_dead(session)
                return _error(f"MCP server '{self.name}' died during the call ({self._died_why()}); ember restarts it")
            return _error(f"{label} failed: {exc.message}")
        except Exception as exc:  # a result the SDK refused (output schema, input-required...)
            return _error(f"{label} failed: {_describe(exc)}")
        if not isinstance(result, mcp_types.CallToolResult):
            return _error(f"{label} gave an answer ember does not read ({type(result).__name__})")
        text = _result_text(result)
        if result.is_error:
            return _error(text or f"{label} failed without a message")
        return ToolOutcome(content=text)

    def _reconnecting(self) -> bool:
        return self._state == "connecting" or (self._state == "up" and self._dead.is_set())

    def _probe(self, session: ClientSession) -> None:
        """After a timed-out call: a server that does not answer a ping either is treated as dead."""

        async def ping() -> None:
            try:
                with anyio.fail_after(PING_TIMEOUT):
                    await session.send_ping()
            except Exception as exc:
                log.warning("MCP server '%s' does not answer a ping (%s): reconnecting", self.name, _describe(exc))
                self._mark_dead(session)

        task = asyncio.create_task(ping(), name=f"mcp:{self.name}:ping")
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    def _mark_dead(self, session: ClientSession) -> None:
        if session is self._session:
            self._end()

    def _end(self) -> None:
        self._dead.set()
        self._wake.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        """The session's message handler: a changed tool list is listed again (by the owner)."""
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._relist = True
            self._wake.set()

    def _died_why(self) -> str:
        return self._http_status or "connection closed"

    # -- the owner task -----------------------------------------------------------------------

    async def _own(self) -> None:
        assert self._scope is not None
        with self._scope:
            await self._connect_forever()

    async def _connect_forever(self) -> None:
        failures = 0  # attempts in a row that did not come up
        while True:
            backoff = 0.0 if failures == 0 else min(MAX_BACKOFF, 2.0 ** (failures - 1))
            delay = max(backoff, self._start_delay())
            if delay > 0:
                # "down" (calls fail at once) only while waiting; a restart straight after a
                # session that was up stays "connecting", so calls in between wait for it.
                self._set_state("down")
                await asyncio.sleep(delay)
            self._starts.append(time.monotonic())
            self._dead = asyncio.Event()
            self._wake = asyncio.Event()
            self._relist = False
            self._http_status = None
            self._was_up = False
            self._set_state("connecting")
            try:
                await self._connect_and_wait()
            except Exception as exc:  # raised by the teardown (an HTTP transport's failed request)
                self._last_error = self._reason(exc)
            reason = self._last_error
            if self._was_up:
                failures = 0
                log.warning("MCP server '%s' died (%s): restarting it", self.name, reason)
            else:
                failures += 1
                log.warning("MCP server '%s' could not start (%s): retrying", self.name, reason)
            self._set_state("connecting" if failures == 0 else "down")

    def _reason(self, exc: BaseException) -> str:
        reason = _describe(exc)
        if self._http_status and self._http_status not in reason:
            reason = f"{reason} ({self._http_status})"
        if not self._was_up and reason == "Connection closed" and self.config.command is not None:
            reason = "it exited or closed its output before initializing (its stderr is in ember's log)"
        return reason

    async def _connect_and_wait(self) -> None:
        """One connection, from connecting until it ends (the state is "up" once listed)."""
        self._last_error = "connection closed"
        failed = False  # the body raised, so the reason is known before the teardown
        with anyio.CancelScope() as bound:
            async with AsyncExitStack() as stack:
                try:
                    await self._connected(stack)
                    self._last_error = self._died_why()
                except Exception as exc:
                    self._last_error = self._reason(exc)
                    failed = True
                    raise
                finally:
                    # Before the teardown (the SDK's stdio shutdown may take seconds): calls stop
                    # using this session now; after a failed start whose reason is known they fail
                    # at once, after a session that was up they wait for the reconnect. (An HTTP
                    # transport's own failure is raised by the teardown: callers wait for that.)
                    # The teardown is bounded: an HTTP session's DELETE to a server that hangs
                    # would wait out httpx's read timeout; the SDK shields and bounds a child's stop.
                    self._session = None
                    if self._was_up:
                        self._set_state("connecting")
                    elif failed:
                        self._set_state("down")
                    bound.deadline = anyio.current_time() + TEARDOWN_TIMEOUT

    async def _connected(self, stack: AsyncExitStack) -> None:
        # Entering these only spawns the child (stdio) or builds the client (HTTP); the talk
        # comes after, under the startup timeout. (A cancel scope around the entering would
        # close before the contexts' own scopes, which anyio refuses.)
        read, write = await stack.enter_async_context(self._transport())
        # The pump stands between the transport and the session so that the end of the
        # transport's stream (a stdio child that exited) is seen here, not only by a call.
        to_session, session_read = anyio.create_memory_object_stream[Message](0)
        session = await stack.enter_async_context(ClientSession(session_read, write, message_handler=self._on_message))
        pumps = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(pumps.cancel_scope.cancel)  # runs before the task group's exit
        pumps.start_soon(self._pump, read, to_session)
        with anyio.fail_after(self.config.startup_timeout):
            initialized = await session.initialize()
            if initialized.capabilities.tools is None:  # tools/list would be "method not found"
                log.warning("MCP server '%s' offers no tools", self.name)
                listed: dict[str, _Listed] = {}
            else:
                listed = await self._list(session)
        self._listed = listed
        self._session = session
        self._last_error = "up"
        self._was_up = True
        self._set_state("up")
        log.info("MCP server '%s' is up with %d tool(s)", self.name, len(listed))
        while not self._dead.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._relist and not self._dead.is_set():
                self._relist = False
                await self._list_again(session)

    async def _list_again(self, session: ClientSession) -> None:
        if session.server_capabilities is not None and session.server_capabilities.tools is None:
            return
        try:
            with anyio.fail_after(self.config.startup_timeout):
                listed = await self._list(session)
        except Exception as exc:  # the old listing stays; a dead connection is the pump's to see
            log.warning("MCP server '%s': listing its changed tools failed (%s)", self.name, _describe(exc))
            return
        self._listed = listed
        log.info("MCP server '%s' changed its tools: now %d", self.name, len(listed))

    async def _pump(
        self,
        read: ReadStream[Message],
        to_session: MemoryObjectSendStream[Message],
    ) -> None:
        async with to_session:
            try:
                async for item in read:
                    await to_session.send(item)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass
        self._end()

    def _transport(self) -> AbstractAsyncContextManager[TransportStreams]:
        if self.config.command is not None:
            params = StdioServerParameters(command=self.config.command[0], args=self.config.command[1:], env=self._env)
            return stdio_client(params, errlog=sys.stderr)
        assert self.config.url is not None

        async def note_status(response: httpx2.Response) -> None:
            # Messages only (POSTs carry the requests; a GET stream a server does not offer is a
            # harmless 405). No URL in them: its query may hold a secret, and the model reads them.
            if response.status_code >= 400 and response.request.method == "POST":
                self._http_status = f"HTTP {response.status_code}"

        client = httpx2.AsyncClient(
            headers=self._headers,
            timeout=httpx2.Timeout(self.config.startup_timeout, read=300.0),
            event_hooks={"response": [note_status]},
        )
        return _http_transport(self.config.url, client)

    async def _list(self, session: ClientSession) -> dict[str, _Listed]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await session.list_tools(params=params)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        listed: dict[str, _Listed] = {}
        allowed = set(self.config.tools) if self.config.tools is not None else None
        for tool in tools:
            if allowed is not None and tool.name not in allowed:
                continue
            name = self.config.prefixed(tool.name)
            if not _FUNCTION_NAME.match(name):
                log.warning(
                    "MCP server '%s': tool %r left out: %r is not a function name ([A-Za-z0-9_-], at most 64)",
                    self.name,
                    tool.name,
                    name,
                )
                continue
            description = tool.description or tool.title or f"Tool '{tool.name}' of MCP server '{self.name}'."
            listed[tool.name] = _Listed(tool.name, self._spec(tool.name, description, dict(tool.input_schema)))
        offered = {tool.name for tool in tools}
        for missing in sorted((allowed or set()) - offered):
            log.warning("MCP server '%s' has no tool %r (named in its tools list)", self.name, missing)
        if isinstance(self.config.require_approval, list):
            for missing in sorted(set(self.config.require_approval) - offered):
                log.warning("MCP server '%s' has no tool %r (named in require_approval)", self.name, missing)
        return listed

    def _spec(self, tool: str, description: str, parameters: dict[str, Any]) -> ToolSpec:
        return ToolSpec(
            name=self.config.prefixed(tool),
            description=description,
            parameters=parameters,
            timeout=self.config.timeout,
            require_approval=self.config.needs_approval(tool),
            source=f"mcp:{self.name}",
        )

    def _start_delay(self) -> float:
        """Seconds until another attempt keeps to MAX_STARTS_PER_MINUTE in any 60 s."""
        now = time.monotonic()
        while self._starts and now - self._starts[0] > 60.0:
            self._starts.popleft()
        if len(self._starts) < MAX_STARTS_PER_MINUTE:
            return 0.0
        return 60.0 - (now - self._starts[0])

    def _set_state(self, state: State) -> None:
        self._state = state
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait_change(self, seconds: float) -> None:
        changed = self._changed
        with suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), max(0.0, seconds))


@asynccontextmanager
async def _http_transport(url: str, client: httpx2.AsyncClient) -> AsyncIterator[TransportStreams]:
    """streamable_http_client with an httpx2 client of ours, closed with it."""
    async with client, streamable_http_client(url, http_client=client) as streams:
        yield streams


def _error(message: str) -> ToolOutcome:
    return ToolOutcome(content=message, is_error=True)


def _describe(exc: BaseException) -> str:
    """One line for a failure: the first real error inside task groups' exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _result_text(result: mcp_types.CallToolResult) -> str:
    """The result as the model reads it: text blocks joined; other blocks summarised; the
    structured content (as JSON) only when there are no blocks (the spec has servers send it
    as text too, so it would otherwise be said twice)."""
    parts = [_block_text(block) for block in result.content]
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(parts)


def _block_text(block: Any) -> str:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return f"[{block.type}: {block.mime_type}, {_decoded_size(block.data)} bytes]"
    if isinstance(block, mcp_types.ResourceLink):
        return f"[resource link: {block.uri}" + (f", {block.mime_type}" if block.mime_type else "") + "]"
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, mcp_types.TextResourceContents):
            return f"[resource: {resource.uri}]\n{resource.text}"
        mime = f", {resource.mime_type}" if resource.mime_type else ""
        return f"[resource: {resource.uri}{mime}, {_decoded_size(resource.blob)} bytes]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"


def _decoded_size(data: str) -> int:
    try:
        return len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        return len(data)
