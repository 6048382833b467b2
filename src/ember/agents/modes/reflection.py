"""The `reflection` mode: answer, let a critic score the answer, revise while the score is low.

One run is: an answer (a `model` call; for an agent with tools, a tools loop as in the `tools`
mode, not streamed) -> a critique of it (a `critique` call whose output is JSON
`{"score": 0..1, "critique": "..."}`, schema-constrained, so a local model's grammar enforces
it) -> while the last score is under `threshold` and fewer than `rounds`
revisions were made, a revised answer given that critique -> its critique -> ... The best
scored answer wins; on a tie the later one (it was written with more feedback).

Invariants:
- every answer is critiqued, so the winner is known only after the last critique: no answer
  is streamed as it is made; the outcome's text (the winner's) is what the runner sends last.
- a critique that is not JSON of that shape (or whose score is not a number in 0..1) counts
  as score 0, its raw text as the critique: a broken critic never ends a run early.
- each critique is two `critique` steps: the critic's model call (recorded by the runner: its
  raw reply, tokens, cost), then the mode's verdict (name "verdict", detail {"score", "round"},
  round 0 being the first answer's, the critique as its result).
- progress (the round, the best answer so far, the last critique, an answer's tools loop while
  it runs) lives in `ctx.state`, so a run parked on an approval resumes in the same round.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ember.agents.modes import loop
from ember.agents.types import ModeContext, ModeOutcome
from ember.services.message_codec import decode_message, encode_message
from ember.services.types import AgentStep, ChatMessage, ResponseFormat

DEFAULT_THRESHOLD = 0.8
DEFAULT_ROUNDS = 2

CRITIQUE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        # Bounded so a local model's critique ends well inside a call's token budget. The format
        # is not `strict` for that reason (see planning.STRICT); the critique is parsed here.
        "critique": {"type": "string", "maxLength": 400},
    },
    "required": ["score", "critique"],
    "additionalProperties": False,
}

# Tokens enough for the whole critique: its characters at two per token (the worst case for
# short words) and the JSON around them.
CRITIQUE_TOKENS = 24 + CRITIQUE_SCHEMA["properties"]["critique"]["maxLength"] // 2

VERDICT = "verdict"  # the name of the mode's own critique step, beside the critic's model call

CRITIC_INSTRUCTIONS = (
    "You review answers. Score how well the answer fulfils the request, from 0.0 (useless or "
    "wrong) to 1.0 (complete and correct), and say briefly what should be improved. Reply with "
    'JSON only: {"score": <number 0..1>, "critique": "<text>"}.'
)


@dataclass(frozen=True)
class Critique:
    score: float
    critique: str


def parse_critique(text: str) -> Critique:
    """The critic's verdict; anything that is not the schema's shape scores 0 (see invariants)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return Critique(0.0, text)
    if not isinstance(data, dict):
        return Critique(0.0, text)
    score, critique = data.get("score"), data.get("critique")
    # bool is an int in Python; `true` is not a score.
    if isinstance(score, bool) or not isinstance(score, int | float) or not 0.0 <= score <= 1.0:
        return Critique(0.0, text)
    return Critique(float(score), critique if isinstance(critique, str) else text)


def _float_option(options: dict[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def _int_option(options: dict[str, Any], name: str, default: int) -> int:
    value = options.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _request_text(messages: list[ChatMessage]) -> str:
    """What the critic is shown as the request: the conversation's user turns, the last one last."""
    turns = [m.content for m in messages if m.role == "user" and m.content]
    return "\n\n".join(turns[-3:])  # the last few turns are the request; a long chat is not


class ReflectionMode:
    name = "reflection"

    async def run(self, ctx: ModeContext, messages: list[ChatMessage]) -> ModeOutcome:
        options = ctx.agent.options
        threshold = _float_option(options, "threshold", DEFAULT_THRESHOLD)
        rounds = _int_option(options, "rounds", DEFAULT_ROUNDS)
        state = ctx.state
        if "base" not in state:
            # The conversation the run began with: a resumed run is handed the paused answer's
            # loop as its messages instead.
            state.update(base=[encode_message(m) for m in messages], round=0, best=None, last=None)
        base = [decode_message(m) for m in state["base"]]
        request = _request_text(base)
        tools = ctx.tools_for(ctx.agent)
        while True:
            round_: int = state["round"]
            if "loop" in state:
                convo = await loop.resume(ctx, state, "loop", messages)
            elif state["last"] is None:
                convo = list(base)
            else:
                text, score, critique = state["last"]
                convo = [
                    *base,
                    ChatMessage(role="assistant", content=text),
                    ChatMessage(
                        role="user",
                        content=(
                            f"A reviewer scored your answer {score:.2f} out of 1 and said:\n{critique}\n\n"
                            "Write an improved answer to the original request. Reply with the answer only."
                        ),
                    ),
                ]
            answer = await loop.carry_out(ctx, state, "loop", convo, tools)
            del state["loop"]
            verdict = await self._critique(ctx, request, answer, round_)
            if state["best"] is None or verdict.score >= state["best"][1]:  # a tie goes to the later answer
                state["best"] = [answer, verdict.score]
            if verdict.score >= threshold or round_ >= rounds:
                return ModeOutcome(text=state["best"][0], finish_reason="stop")
            state.update(round=round_ + 1, last=[answer, verdict.score, verdict.critique])

    async def _critique(self, ctx: ModeContext, request: str, answer: str, round_: int) -> Critique:
        # One user message: the runner puts the agent's instructions first as the system
        # message, which the critic may well judge the answer by.
        prompt = [
            ChatMessage(role="user", content=f"{CRITIC_INSTRUCTIONS}\n\nRequest:\n{request}\n\nAnswer:\n{answer}")
        ]
        fmt = ResponseFormat(type="json_schema", schema=CRITIQUE_SCHEMA, name="critique", strict=False)
        # A critique must be whole to be read: room for its 400 characters, whatever max_tokens says.
        reply = await ctx.call_model(prompt, response_format=fmt, kind="critique", min_tokens=CRITIQUE_TOKENS)
        verdict = parse_critique(reply.text)
        ctx.record(
            AgentStep(
                index=ctx.next_index(),
                kind="critique",
                agent=ctx.agent.name,
                name=VERDICT,
                result=verdict.critique,
                detail={"score": verdict.score, "round": round_},
            )
        )
        return verdict
