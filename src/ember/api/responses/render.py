"""The Responses wire format: response objects, output items, stream events, errors, framing.

A stream is rendered by one `StreamRenderer` per response; it numbers every event
(`sequence_number` 0, 1, 2, ...) and keeps the output items it has opened, so the final
`response.completed` carries exactly the items the deltas built. Rules both paths keep:
- a message item holds the answer's text; it is left out when the answer is only tool calls
  (whitespace around the calls is not a message);
- each tool call is one function_call item (`id` fc_..., `call_id` the call's id);
- an answer cut by max_output_tokens is `status: "incomplete"` with
  `incomplete_details.reason = "max_output_tokens"`, and so are its unfinished items;
- an agent run (api/agent_wire.py): each tool step is an `mcp_call` item (server_label "ember"
  for a built-in tool, the MCP server's name for one of its tools), in the order the steps
  finished and before the answer's items; each pending approval is an `mcp_approval_request`
  item (its id is the approval's, which an `mcp_approval_response` names), after them, with
  status "completed" as OpenAI's MCP approvals have; a run stopped at its step limit or deadline
  is "incomplete" (reason "max_output_tokens": the SDK's types know no other); the whole trace,
  with the exact finish reason, is the response's `ember` object.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Literal

from ember.agents.tools.mcp_config import SEPARATOR
from ember.api.openai.render import error_body, error_type
from ember.api.responses.protocol import ContentPartIn, InputItem, ResponseCreateRequest
from ember.engine.types import GenerationStats
from ember.errors import EmberError
from ember.services.types import AgentStep, Answer, FinishReason, GenerationEvent, PendingApproval, ToolCall

__all__ = ["MEDIA_TYPE", "STREAM_END", "StreamRenderer", "error_body", "frame"]

Status = Literal["completed", "incomplete", "failed", "in_progress"]
MEDIA_TYPE = "text/event-stream"
STREAM_END = ""  # a Responses stream ends with its response.completed event, no [DONE]


def frame(payload: dict[str, Any]) -> str:
    """One server-sent event, named by its type (an error body without one is an `error` event,
    which the openai SDK raises as an APIError)."""
    kind = payload.get("type", "error")
    return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def status_of(reason: FinishReason) -> Status:
    return "incomplete" if reason in ("length", "max_steps", "deadline") else "completed"


def usage(stats: GenerationStats) -> dict[str, Any]:
    return {
        "input_tokens": stats.prompt_tokens,
        # cached_tokens: prompt tokens whose KV cache an earlier request left behind (prefix reuse).
        "input_tokens_details": {"cached_tokens": stats.cached_prompt_tokens, "cache_write_tokens": 0},
        "output_tokens": stats.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: Status) -> dict[str, Any]:
    """A message; `text` None: just opened, no content part yet."""
    content = [] if text is None else [text_part(text)]
    return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}


def function_call_item(item_id: str, call: ToolCall, status: Status) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


def _server_and_tool(name: str) -> tuple[str, str]:
    """An agent tool's name as an MCP item names it: "<server>__<tool>" is that server's tool,
    any other a built-in of ember's."""
    server, sep, tool = name.partition(SEPARATOR)
    return (server, tool) if sep and server and tool else ("ember", name)


def mcp_call_item(step: AgentStep) -> dict[str, Any]:
    """A finished tool step of an agent run."""
    server, tool = _server_and_tool(step.name)
    return {
        "type": "mcp_call",
        "id": new_id("mcp"),
        "server_label": server,
        "name": tool,
        "arguments": step.arguments,
        "output": None if step.is_error else step.result,
        "error": {"type": "mcp_tool_execution_error", "content": step.result} if step.is_error else None,
        "status": "failed" if step.is_error else "completed",
    }


def approval_request_item(pending: PendingApproval) -> dict[str, Any]:
    server, tool = _server_and_tool(pending.tool)
    return {
        "type": "mcp_approval_request",
        "id": pending.approval_id,
        "server_label": server,
        "name": tool,
        "arguments": pending.arguments,
    }


def output_items(answer: Answer) -> list[dict[str, Any]]:
    status = status_of(answer.finish_reason)
    items = [mcp_call_item(s) for s in answer.steps if s.kind == "tool"]
    if answer.text.strip() or not (answer.tool_calls or answer.pending or items):
        items.append(message_item(new_id("msg"), answer.text, status))
    items += [function_call_item(new_id("fc"), call, status) for call in answer.tool_calls]
    items += [approval_request_item(p) for p in answer.pending]
    return items


def input_items(body: ResponseCreateRequest) -> list[dict[str, Any]]:
    """The request's input as the items GET /v1/responses/{id}/input_items lists, each with an id
    (the one the client gave, or a new one)."""
    items = [InputItem(role="user", content=body.input)] if isinstance(body.input, str) else list(body.input or ())
    out = []
    for item in items:
        if item.type == "mcp_approval_response":
            out.append(
                {
                    "type": "mcp_approval_response",
                    "id": item.id or new_id("mcpr"),
                    "approval_request_id": item.approval_request_id,
                    "approve": item.approve,
                    "reason": item.reason,
                }
            )
        elif item.type in ("mcp_call", "mcp_approval_request"):  # an echo of an agent run's output
            echo = item.model_dump(include={"type", "id", "server_label", "name", "arguments", "output", "error"})
            out.append({**echo, "id": item.id or new_id("mcp")})
        elif item.type == "function_call":
            call = ToolCall(id=item.call_id or "", name=item.name or "", arguments=item.arguments or "{}")
            out.append(function_call_item(item.id or new_id("fc"), call, "completed"))
        elif item.type == "function_call_output":
            output: Any = item.output if isinstance(item.output, str) else [_input_part(p) for p in item.output or ()]
            out.append(
                {
                    "type": "function_call_output",
                    "id": item.id or new_id("fco"),
                    "call_id": item.call_id,
                    "output": output,
                    "status": "completed",
                }
            )
        elif item.role == "assistant":
            text = (
                item.content
                if isinstance(item.content, str)
                else "".join(p.text or p.refusal or "" for p in item.content or ())
            )
            out.append(message_item(item.id or new_id("msg"), text, "completed"))
        else:
            parts = (
                [ContentPartIn(type="input_text", text=item.content)] if isinstance(item.content, str) else item.content
            )
            content = [_input_part(p) for p in parts or ()]
            out.append(
                {
                    "type": "message",
                    "id": item.id or new_id("msg"),
                    "role": item.role,
                    "status": "completed",
                    "content": content,
                }
            )
    return out


def _input_part(part: ContentPartIn) -> dict[str, Any]:
    if part.type == "input_image":
        return {"type": "input_image", "image_url": part.image_url, "detail": "auto"}
    return {"type": "input_text", "text": part.text or ""}


def output_text(items: list[dict[str, Any]]) -> str:
    """The SDK's `output_text`: the text of every output_text part of every message, joined."""
    return "".join(
        part["text"]
        for item in items
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )


def response_object(
    base: dict[str, Any],
    *,
    status: Status,
    output: list[dict[str, Any]],
    stats: GenerationStats | None = None,
    error: EmberError | None = None,
    ember: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`base` holds id, created_at, model and the request's echoes (routes.echo); `ember` is an
    agent run's trace (api/agent_wire.py)."""
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        **base,
        "status": status,
        "error": None
        if error is None
        else {"code": error.code or error_type(error.status_code), "message": error.message},
        "incomplete_details": incomplete,
        "output": output,
        "output_text": output_text(output),
        "usage": None if stats is None else usage(stats),
        "completed_at": int(time.time()) if status == "completed" else None,
        **({} if ember is None else {"ember": ember}),
    }


class StreamRenderer:
    """Neutral events -> Responses stream events, numbered, with the output items they build."""

    def __init__(self, base: dict[str, Any]) -> None:
        self._base = base
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # by output_index
        self._message: int | None = None  # output_index of the open message, if any
        self._text: list[str] = []  # the open message's text so far
        self._held = ""  # whitespace not yet known to be a message (it may only surround calls)
        self._calls: dict[int, int] = {}  # tool-call index -> output_index (open until the end)
        self._args: dict[int, list[str]] = {}  # output_index -> argument fragments
        self.steps: list[AgentStep] = []  # an agent run's steps so far, for its trace

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = response_object(self._base, status="in_progress", output=[])
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def feed(self, event: GenerationEvent) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if event.step is not None:
            self.steps.append(event.step)
            if event.step.kind == "tool":  # a finished item: added and done at once
                out += self._close_message("completed")
                out += self._whole_item(mcp_call_item(event.step))
        if event.text:
            out += self._add_text(event.text)
        for delta in event.tool_calls:
            index = self._calls.get(delta.index)
            if index is None:
                out += self._close_message("completed")
                call = ToolCall(id=delta.id or new_id("call"), name=delta.name or "", arguments="")
                index = len(self._items)
                self._calls[delta.index] = index
                self._args[index] = []
                self._items.append(function_call_item(new_id("fc"), call, "in_progress"))
                out.append(self._event("response.output_item.added", output_index=index, item=dict(self._items[index])))
            if delta.arguments:
                self._args[index].append(delta.arguments)
                out.append(
                    self._event(
                        "response.function_call_arguments.delta",
                        item_id=self._items[index]["id"],
                        output_index=index,
                        delta=delta.arguments,
                    )
                )
        return out

    def _whole_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        index = len(self._items)
        self._items.append(item)
        return [
            self._event("response.output_item.added", output_index=index, item=item),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _add_text(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._message is None:
            text = self._held + text
            if not text.strip():
                self._held = text
                return out
            self._held = ""
            out += self._open_message()
        assert self._message is not None
        self._text.append(text)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._items[self._message]["id"],
                output_index=self._message,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _open_message(self) -> list[dict[str, Any]]:
        index = len(self._items)
        self._message = index
        self._text = []
        item = message_item(new_id("msg"), None, "in_progress")
        self._items.append(item)
        return [
            self._event("response.output_item.added", output_index=index, item=dict(item, content=[])),
            self._event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=text_part(""),
            ),
        ]

    def _close_message(self, status: Status) -> list[dict[str, Any]]:
        index = self._message
        if index is None:
            return []
        self._message = None
        text = "".join(self._text)
        item = self._items[index] = message_item(self._items[index]["id"], text, status)
        common = {"item_id": item["id"], "output_index": index, "content_index": 0}
        return [
            self._event("response.output_text.done", **common, text=text, logprobs=[]),
            self._event("response.content_part.done", **common, part=text_part(text)),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    def _close_calls(self, status: Status) -> list[dict[str, Any]]:
        out = []
        for index in sorted(self._calls.values()):
            arguments = "".join(self._args[index])
            item = self._items[index] = {**self._items[index], "arguments": arguments, "status": status}
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=arguments,
                )
            )
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        self._calls.clear()
        return out

    def finish(
        self, final: GenerationEvent, ember: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The closing events, and the finished response object (to store); `ember`: an agent
        run's trace."""
        assert final.stats is not None, "the final event carries stats"
        status = status_of(final.finish_reason or "stop")
        out: list[dict[str, Any]] = []
        if not self._items and not final.pending:  # no item nor visible text: an empty message
            out += self._open_message()
            out += self._add_text(self._held) if self._held else []
        out += self._close_message(status)
        out += self._close_calls(status)
        for pending in final.pending:
            out += self._whole_item(approval_request_item(pending))
        response = response_object(self._base, status=status, output=list(self._items), stats=final.stats, ember=ember)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, response=response))
        return out, response

    def fail(self, error: EmberError) -> list[dict[str, Any]]:
        """An error after the stream began: response.failed, then an `error` event (whose `error`
        object makes the openai SDK raise it)."""
        response = response_object(self._base, status="failed", output=list(self._items), error=error)
        body = error_body(error)["error"]
        return [
            self._event("response.failed", response=response),
            self._event("error", code=body["code"], message=body["message"], param=body["param"], error=body),
        ]
