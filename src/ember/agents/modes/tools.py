"""The `tools` mode: model -> tool calls -> ember runs them -> results fed back -> until an answer.

Each turn is one model call offered the agent's tools; when the answer calls tools, they run
(the calls of one turn in parallel, under the agent's `tool_concurrency`) and their results go
back to the model as `tool` messages; the first answer without tool calls is the run's answer.
The step limit (`max_steps` model calls), the tool-call limit and the deadline end a run that
has not answered by then, with finish reason "max_steps" or "deadline" (the runner's RunLimit).

Every turn is a `final` call: its text streams to the client as it comes, since a turn is only
known to be the last once it has ended without calls. Text a model writes beside its calls
("let me look that up") thus reaches the client too, before the answer.

`AgentSpec.options`: `first_tool_choice` (the first call's: "auto", "none", "required" or a tool
name) and `tool_choice` (every later call's), both "auto" unless set.
"""

from __future__ import annotations

from collections.abc import Sequence

from ember.agents.types import ModeContext, ModeOutcome
from ember.services.types import ChatMessage, Tool, ToolChoice


def tool_choice(value: str | None) -> ToolChoice | None:
    """An option's tool choice ("auto", "none", "required" or a tool name) as the neutral type."""
    if value is None or value == "auto":
        return None
    if value in ("none", "required"):
        return ToolChoice(mode=value)  # type: ignore[arg-type]  # checked just above
    return ToolChoice(mode="function", name=value)


async def run_loop(
    ctx: ModeContext,
    messages: list[ChatMessage],
    tools: Sequence[Tool],
    *,
    first: ToolChoice | None = None,
    then: ToolChoice | None = None,
) -> ModeOutcome:
    """Call the model and run its tool calls until it answers without any (the loop the other
    modes reuse for "execute with tools"). `messages` is extended with the turns taken."""
    choice = first
    while True:
        answer = await ctx.call_model(messages, tools=tools, tool_choice=choice if tools else None, final=True)
        if not answer.tool_calls:
            return ModeOutcome(text=answer.text, finish_reason=answer.finish_reason)
        messages.append(ChatMessage(role="assistant", content=answer.text, tool_calls=answer.tool_calls))
        messages.extend(await ctx.run_tools(answer.tool_calls))
        choice = then


class ToolsMode:
    name = "tools"

    async def run(self, ctx: ModeContext, messages: list[ChatMessage]) -> ModeOutcome:
        options = ctx.agent.options
        # A resumed run (after an approval) is past its first call.
        resumed = bool(ctx.state.get("turns"))
        ctx.state["turns"] = 1
        first = tool_choice(options.get("tool_choice" if resumed else "first_tool_choice"))
        return await run_loop(
            ctx, messages, ctx.tools_for(ctx.agent), first=first, then=tool_choice(options.get("tool_choice"))
        )
