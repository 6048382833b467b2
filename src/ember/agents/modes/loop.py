"""The tools loop the planning and reflection modes run inside a run, kept so a pause resumes it.

Unlike the `tools` mode's loop (modes/tools.py `run_loop`), nothing here streams: a goal's
result or a draft answer is not the run's answer. The loop's conversation is kept in the mode's
state under `key` before each model call and each turn's tool calls, so a run parked on an
approval in the middle picks the loop up where it stopped (`resume`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember.agents.types import ModeContext
from ember.services.message_codec import decode_message, encode_message
from ember.services.types import ChatMessage, Tool


async def carry_out(
    ctx: ModeContext, state: dict[str, Any], key: str, convo: list[ChatMessage], tools: Sequence[Tool]
) -> str:
    """Call the model (offered `tools`) and run its calls until it answers without any: that
    answer's text. `state[key]` holds the loop while it runs; the caller drops it after."""
    while True:
        state[key] = [encode_message(m) for m in convo]
        answer = await ctx.call_model(convo, tools=tools)
        if not answer.tool_calls:
            return answer.text
        convo.append(ChatMessage(role="assistant", content=answer.text, tool_calls=answer.tool_calls))
        state[key] = [encode_message(m) for m in convo]
        convo.extend(await ctx.run_tools(answer.tool_calls))


async def resume(ctx: ModeContext, state: dict[str, Any], key: str, messages: list[ChatMessage]) -> list[ChatMessage]:
    """The loop kept under `state[key]` after a pause: its last turn's calls answered by the
    results the runner handed back in `messages` (the decided calls), any other run now."""
    saved = [decode_message(m) for m in state[key]]
    last = saved[-1]
    if last.role != "assistant" or not last.tool_calls:
        return saved
    given = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
    missing = [c for c in last.tool_calls if c.id not in given]
    ran = {m.tool_call_id: m for m in await ctx.run_tools(missing)} if missing else {}
    return [*saved, *(given.get(c.id) or ran[c.id] for c in last.tool_calls)]
