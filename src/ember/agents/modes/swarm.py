"""The `swarm` mode: named agents hand one conversation to each other with `transfer_to_<name>`.

The swarm's agent and its `members` (other configured agents) form a group; any of them may
hand over to any other (as in openai/swarm, where any agent may return any agent). Each turn
the active agent is called with its own instructions and tools plus one `transfer_to_<name>`
tool per other agent of the group (arguments: an optional `reason`). A transfer makes that
agent the active one (`ctx.switch_to`), records a `handoff` step (detail {"from", "to",
"reason"}), feeds "transferred to <name>" back as the call's result, and the next turn runs
under the new agent's instructions and tools on the same history. The run ends when the
active agent answers without tool calls.

Invariants:
- the history is shared: the client's messages, then every turn's assistant message and tool
  results; only the leading system message (the active agent's instructions) changes hands.
- at most `limits.max_handoffs` handoffs in a run, and one per turn: a transfer over the cap,
  or a second one in the same turn, is a tool error the model reads, and once the cap is
  reached the transfer tools are no longer offered, so the active agent must answer.
- other tool calls of a turn run through `ctx.run_tools`, after the transfer is decided;
  results go back in the order the model made the calls.
- progress (the group's agent, the handoffs made, the history) lives in `ctx.state`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ember.agents.types import AgentSpec, ModeContext, ModeOutcome
from ember.services.message_codec import decode_message, encode_message
from ember.services.types import AgentStep, ChatMessage, Tool, ToolCall

TRANSFER_PREFIX = "transfer_to_"
TRANSFER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "why the conversation is handed over"}},
    "additionalProperties": False,
}


def transfer_tool_name(agent: str) -> str:
    """A tool name the model may call ([A-Za-z0-9_-]{1,64}) for handing over to `agent`."""
    return TRANSFER_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "_", agent)[: 64 - len(TRANSFER_PREFIX)]


def _reason(arguments: str) -> str:
    try:
        data = json.loads(arguments or "{}")
    except ValueError:
        return ""
    reason = data.get("reason") if isinstance(data, dict) else None
    return reason if isinstance(reason, str) else ""


def _tool_result(call: ToolCall, content: str) -> ChatMessage:
    return ChatMessage(role="tool", content=content, tool_call_id=call.id, name=call.name)


class SwarmMode:
    name = "swarm"

    async def run(self, ctx: ModeContext, messages: list[ChatMessage]) -> ModeOutcome:
        state = ctx.state
        if "group" not in state:
            root = ctx.agent
            state["group"] = [root.name, *(m for m in root.members if m != root.name)]
            state["handoffs"] = 0
            state["max_handoffs"] = root.limits.max_handoffs  # the swarm's cap, whoever is active
            # The client's messages, without a system message the runner may have put first
            # for the swarm's own agent: each turn puts the active agent's instructions there.
            state["history"] = [encode_message(m) for m in _without_instructions(messages, root)]
        else:
            # Resumed after an approval: the saved history ends with the assistant turn whose
            # calls waited; the runner hands back the decided calls' results.
            history = [decode_message(m) for m in state["history"]]
            state["history"] = [encode_message(m) for m in await _answer_pending(ctx, history, messages)]
        history = [decode_message(m) for m in state["history"]]
        while True:
            agent = ctx.agent
            offered = self._transfers(ctx, state) if state["handoffs"] < state["max_handoffs"] else {}
            tools = [*ctx.tools_for(agent), *(t for _, t in offered.values())]
            prompt = [ChatMessage(role="system", content=agent.instructions)] if agent.instructions else []
            answer = await ctx.call_model([*prompt, *history], tools=tools)
            if not answer.tool_calls:
                return ModeOutcome(text=answer.text, finish_reason="stop")
            history.append(ChatMessage(role="assistant", content=answer.text, tool_calls=answer.tool_calls))
            state["history"] = [encode_message(m) for m in history]
            results = self._handoffs(ctx, state, agent, answer.tool_calls, offered)
            others = [c for c in answer.tool_calls if c.id not in results]
            if others:
                # Kept with the transfers' results first: a pause on one of the others resumes
                # with the handoff already made (see _answer_pending).
                state["history"] = [encode_message(m) for m in [*history, *results.values()]]
                for message in await ctx.run_tools(others):
                    results[message.tool_call_id or ""] = message
            history.extend(results[c.id] for c in answer.tool_calls)
            state["history"] = [encode_message(m) for m in history]

    def _transfers(self, ctx: ModeContext, state: dict[str, Any]) -> dict[str, tuple[AgentSpec, Tool]]:
        """The transfer tools the active agent is offered: tool name -> (target, tool)."""
        current = ctx.agent.name
        offered: dict[str, tuple[AgentSpec, Tool]] = {}
        for name in state["group"]:
            if name == current:
                continue
            target = ctx.agent_named(name)
            tool_name = transfer_tool_name(name)
            about = target.instructions.splitlines()[0][:200] if target.instructions else ""
            offered[tool_name] = (
                target,
                Tool(
                    name=tool_name,
                    description=f"Hand the conversation over to the agent {name}." + (f" {about}" if about else ""),
                    parameters=TRANSFER_PARAMETERS,
                ),
            )
        return offered

    def _handoffs(
        self,
        ctx: ModeContext,
        state: dict[str, Any],
        agent: AgentSpec,
        calls: tuple[ToolCall, ...],
        offered: dict[str, tuple[AgentSpec, Tool]],
    ) -> dict[str, ChatMessage]:
        """Decide this turn's transfer calls: call id -> the result fed back. At most one is made."""
        results: dict[str, ChatMessage] = {}
        moved = False
        cap: int = state["max_handoffs"]
        for call in calls:
            if not call.name.startswith(TRANSFER_PREFIX):
                continue
            if call.name not in offered and not self._is_group_transfer(state, call.name):
                continue  # not one of ours (a tool the agent has that happens to be named so)
            if moved:
                results[call.id] = _tool_result(call, "error: only one transfer per turn; this one was not made")
                continue
            if state["handoffs"] >= cap:
                results[call.id] = _tool_result(call, f"error: handoff limit reached ({cap}); answer the user yourself")
                continue
            if call.name not in offered:
                results[call.id] = _tool_result(call, f"error: {agent.name} cannot transfer to itself")
                continue
            target, _ = offered[call.name]
            reason = _reason(call.arguments)
            ctx.switch_to(target)
            state["handoffs"] += 1
            moved = True
            ctx.record(
                AgentStep(
                    index=ctx.next_index(),
                    kind="handoff",
                    agent=agent.name,
                    name=call.name,
                    arguments=call.arguments,
                    result=f"transferred to {target.name}",
                    detail={"from": agent.name, "to": target.name, "reason": reason},
                )
            )
            results[call.id] = _tool_result(call, f"transferred to {target.name}")
        return results

    @staticmethod
    def _is_group_transfer(state: dict[str, Any], tool_name: str) -> bool:
        return any(transfer_tool_name(name) == tool_name for name in state["group"])


def _without_instructions(messages: list[ChatMessage], root: AgentSpec) -> list[ChatMessage]:
    if root.instructions and messages and messages[0].role == "system" and messages[0].content == root.instructions:
        return messages[1:]
    return messages


async def _answer_pending(
    ctx: ModeContext, history: list[ChatMessage], messages: list[ChatMessage]
) -> list[ChatMessage]:
    """The history after a pause: the last assistant turn's calls answered by the results the
    runner handed back (the decided calls) or already saved (a transfer), the rest run now."""
    if not history:
        return history
    calls: tuple[ToolCall, ...] = ()
    cut = len(history)
    for n in range(len(history) - 1, -1, -1):
        if history[n].role == "assistant":
            calls, cut = history[n].tool_calls, n + 1
            break
        if history[n].role != "tool":
            return history
    have = {m.tool_call_id: m for m in history[cut:]}
    for m in messages:
        if m.role == "tool" and m.tool_call_id and m.tool_call_id not in have:
            have[m.tool_call_id] = m
    missing = [c for c in calls if c.id not in have]
    if missing:
        have.update({m.tool_call_id: m for m in await ctx.run_tools(missing)})
    return [*history[:cut], *(have[c.id] for c in calls)]
