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
  results; only the active agent's instructions (the runner puts them first) change hands.
- at most `limits.max_handoffs` handoffs in a run, and one per turn: a transfer over the cap,
  or a second one in the same turn, is a tool error the model reads, and once the cap is
  reached the transfer tools are no longer offered, so the active agent must answer.
- other tool calls of a turn run through `ctx.run_tools` as the agent that made them, before
  the turn's transfer; results go back in the order the model made the calls.
- progress (the group's agent, the handoffs made, the history) lives in `ctx.state`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ember.agents.types import ModeContext, ModeOutcome
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


def transfer_tools(group: list[str]) -> dict[str, str]:
    """Each agent of the group's transfer tool: tool name -> agent name. Names that spell the
    same tool ("a.b" and "a_b") get a number after the later one, so no transfer is ambiguous."""
    tools: dict[str, str] = {}
    for agent in group:
        name, n = transfer_tool_name(agent), 2
        while name in tools:
            suffix = f"_{n}"
            name, n = transfer_tool_name(agent)[: 64 - len(suffix)] + suffix, n + 1
        tools[name] = agent
    return tools


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
        if "group" in state:
            # Resumed after an approval: the saved history ends with the assistant turn whose
            # calls waited, and `messages` (the runner's) ends with their results.
            history = [decode_message(m) for m in state["history"]]
            last = history[-1]
            given = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
            others = [c for c in last.tool_calls if not self._is_transfer(state, c)]
            results = {c.id: given[c.id] for c in others if c.id in given}
            missing = [c for c in others if c.id not in results]
            if missing:  # the runner answers every call of the turn; this is only in case
                results.update({m.tool_call_id or "": m for m in await ctx.run_tools(missing)})
            history.extend(self._finish_turn(ctx, state, last.tool_calls, results))
        else:
            root = ctx.agent
            state["group"] = [root.name, *(m for m in root.members if m != root.name)]
            state["transfers"] = transfer_tools(state["group"])
            state["handoffs"] = 0
            state["max_handoffs"] = root.limits.max_handoffs  # the swarm's cap, whoever is active
            history = list(messages)
        while True:
            state["history"] = [encode_message(m) for m in history]
            agent = ctx.agent
            offered = self._transfers(ctx, state) if state["handoffs"] < state["max_handoffs"] else []
            # The runner puts the active agent's instructions first; `final`, as in the tools
            # mode: a turn is known to be the last only once it has ended without calls.
            answer = await ctx.call_model(history, tools=[*ctx.tools_for(agent), *offered], final=True)
            if not answer.tool_calls:
                return ModeOutcome(text=answer.text, finish_reason="stop")
            history.append(ChatMessage(role="assistant", content=answer.text, tool_calls=answer.tool_calls))
            state["history"] = [encode_message(m) for m in history]
            others = [c for c in answer.tool_calls if not self._is_transfer(state, c)]
            # The other calls first, as the agent that made them: a pause on one of them parks
            # the run before the handoff, which the resumed run then makes.
            results = {m.tool_call_id or "": m for m in await ctx.run_tools(others)} if others else {}
            history.extend(self._finish_turn(ctx, state, answer.tool_calls, results))

    def _finish_turn(
        self, ctx: ModeContext, state: dict[str, Any], calls: tuple[ToolCall, ...], results: dict[str, ChatMessage]
    ) -> list[ChatMessage]:
        """The turn's results in the order of its calls, its transfers decided (at most one made)."""
        agent = ctx.agent
        cap: int = state["max_handoffs"]
        moved = False
        for call in calls:
            if not self._is_transfer(state, call):
                continue
            target = state["transfers"][call.name]
            if moved:
                results[call.id] = _tool_result(call, "error: only one transfer per turn; this one was not made")
            elif state["handoffs"] >= cap:
                results[call.id] = _tool_result(call, f"error: handoff limit reached ({cap}); answer the user yourself")
            elif target == agent.name:
                results[call.id] = _tool_result(call, f"error: you are {agent.name}; answer the user yourself")
            else:
                reason = _reason(call.arguments)
                ctx.switch_to(ctx.agent_named(target))
                state["handoffs"] += 1
                moved = True
                ctx.record(
                    AgentStep(
                        index=ctx.next_index(),
                        kind="handoff",
                        agent=agent.name,
                        name=call.name,
                        arguments=call.arguments,
                        result=f"transferred to {target}",
                        detail={"from": agent.name, "to": target, "reason": reason},
                    )
                )
                results[call.id] = _tool_result(call, f"transferred to {target}")
        return [results[c.id] for c in calls]

    def _transfers(self, ctx: ModeContext, state: dict[str, Any]) -> list[Tool]:
        """The transfer tools the active agent is offered: one per other agent of the group."""
        tools = []
        for tool_name, name in state["transfers"].items():
            if name == ctx.agent.name:
                continue
            target = ctx.agent_named(name)
            about = target.instructions.strip().splitlines()[0][:200] if target.instructions.strip() else ""
            tools.append(
                Tool(
                    name=tool_name,
                    description=f"Hand the conversation over to the agent {name}." + (f" {about}" if about else ""),
                    parameters=TRANSFER_PARAMETERS,
                )
            )
        return tools

    @staticmethod
    def _is_transfer(state: dict[str, Any], call: ToolCall) -> bool:
        """A call of the group's transfer tools (the names are the swarm's, whatever the agent has)."""
        return call.name in state["transfers"]
