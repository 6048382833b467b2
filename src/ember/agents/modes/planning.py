"""The `planning` mode: plan as JSON steps, carry each step out with tools, then synthesise.

One run is: a plan (a `plan` call whose output is JSON `{"steps": [{"goal": "..."}]}`, 1 to
`max_plan_steps` of them, schema-constrained) -> checked against that schema; an invalid plan
is asked for once more with the validation error, and a second invalid plan ends the run with
an error -> each goal in order, as a tools loop (model calls with the agent's tools, their
calls run, results fed back, until the model answers) that sees the plan and the results so
far -> a final synthesis (streamed) that answers the original request from the goals' results.

Invariants:
- the planner's model calls are `plan` steps (the runner records them); the mode adds a `plan`
  step named "plan" when a plan is accepted (detail {"steps": [goals]}) and one named "goal" as
  each goal is done (detail {"goal": i, "text": goal}, the goal's result as the step's result).
- progress lives in `ctx.state` (the plan, the next goal's index, the results, and the goal's
  loop messages while it runs), so a run parked on an approval in the middle of a goal picks up
  that goal's loop where it stopped, with the decided calls' results appended.
- a plan that fails validation twice is an `UpstreamError` (502 before the first byte, an
  in-band error after): the request was fine, the model behind the agent failed.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from ember.agents.modes import loop
from ember.agents.types import ModeContext, ModeOutcome
from ember.errors import UpstreamError
from ember.services.message_codec import decode_message, encode_message
from ember.services.types import AgentStep, ChatMessage, ResponseFormat

DEFAULT_MAX_PLAN_STEPS = 5
MAX_GOAL_CHARS = 100  # a goal is a sentence; the bound also keeps a small model's plan short

# Not `strict`: OpenAI's strict mode refuses a schema with string lengths, which keep a small
# local model's plan short. A local model's grammar enforces the whole schema either way, and
# the plan is validated here whoever made it.
STRICT = False

PLANNER_INSTRUCTIONS = (
    "Before answering, make a short plan: the steps that answer the request, in order, each a "
    'goal in one sentence. Reply with JSON only: {"steps": [{"goal": "..."}, ...]}.'
)


def plan_schema(max_steps: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "steps": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"goal": {"type": "string", "minLength": 1, "maxLength": MAX_GOAL_CHARS}},
                    "required": ["goal"],
                    "additionalProperties": False,
                },
                "minItems": 1,
                "maxItems": max_steps,
            }
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


def plan_tokens(schema: dict[str, Any]) -> int:
    """Tokens enough for the longest plan the schema allows (a goal's characters at two per
    token, the worst case for short words, plus the JSON around each), so the client's small
    max_tokens for its answer does not cut the plan off and fail it."""
    return 16 + schema["properties"]["steps"]["maxItems"] * (MAX_GOAL_CHARS // 2 + 12)


def validate_plan(text: str, schema: dict[str, Any]) -> list[str]:
    """The plan's goals; a ValueError saying what is wrong when the text is not a valid plan."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"the plan is not JSON ({e})") from None
    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the plan"
        raise ValueError(f"{where}: {e.message}") from None
    return [step["goal"] for step in data["steps"]]


def _max_plan_steps(options: dict[str, Any]) -> int:
    value = options.get("max_plan_steps", DEFAULT_MAX_PLAN_STEPS)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else DEFAULT_MAX_PLAN_STEPS


def _plan_text(goals: list[str]) -> str:
    return "\n".join(f"{i + 1}. {goal}" for i, goal in enumerate(goals))


class PlanningMode:
    name = "planning"

    async def run(self, ctx: ModeContext, messages: list[ChatMessage]) -> ModeOutcome:
        state = ctx.state
        if "plan" not in state:
            # The conversation the run began with: a resumed run is handed the paused goal's
            # loop as its messages, and the goals and the synthesis still answer this one.
            state["base"] = [encode_message(m) for m in messages]
            state["plan"] = await self._plan(ctx, messages)
            state["next"] = 0
            state["results"] = []
        base = [decode_message(m) for m in state["base"]]
        goals: list[str] = state["plan"]
        results: list[str] = state["results"]
        tools = ctx.tools_for(ctx.agent)
        while state["next"] < len(goals):
            i = state["next"]
            if "loop" in state:
                convo = await loop.resume(ctx, state, "loop", messages)
            else:
                convo = [*base, ChatMessage(role="user", content=self._goal_prompt(goals, results, i))]
            result = await loop.carry_out(ctx, state, "loop", convo, tools)
            del state["loop"]
            results.append(result)
            state["next"] = i + 1
            ctx.record(
                AgentStep(
                    index=ctx.next_index(),
                    kind="plan",
                    agent=ctx.agent.name,
                    name="goal",
                    result=result,
                    detail={"goal": i, "text": goals[i]},
                )
            )
        synthesis = [
            *base,
            ChatMessage(
                role="user",
                content=(
                    f"The plan was:\n{_plan_text(goals)}\n\nWhat each step found:\n"
                    + "\n\n".join(f"Step {n + 1}: {r}" for n, r in enumerate(results))
                    + "\n\nNow answer the original request, using these results."
                ),
            ),
        ]
        final = await ctx.call_model(synthesis, final=True)
        return ModeOutcome(text=final.text, finish_reason="stop")

    @staticmethod
    def _goal_prompt(goals: list[str], results: list[str], i: int) -> str:
        done = "".join(f"\nStep {n + 1} found: {r}" for n, r in enumerate(results))
        return (
            f"The plan for this request:\n{_plan_text(goals)}\n{done}\n\n"
            f"Now carry out step {i + 1}: {goals[i]}\nUse the tools if they help; then reply with "
            "what this step found."
        )

    async def _plan(self, ctx: ModeContext, messages: list[ChatMessage]) -> list[str]:
        schema = plan_schema(_max_plan_steps(ctx.agent.options))
        fmt = ResponseFormat(type="json_schema", schema=schema, name="plan", strict=STRICT)
        tools = ", ".join(t.name for t in ctx.tools_for(ctx.agent)) or "none"
        prompt = [
            *messages,
            ChatMessage(role="user", content=f"{PLANNER_INSTRUCTIONS}\nTools the steps may use: {tools}."),
        ]
        errors: list[str] = []
        for _attempt in range(2):
            reply = await ctx.call_model(prompt, response_format=fmt, kind="plan", min_tokens=plan_tokens(schema))
            try:
                goals = validate_plan(reply.text, schema)
            except ValueError as e:
                errors.append(str(e))
                prompt = [
                    *prompt,
                    ChatMessage(role="assistant", content=reply.text),
                    ChatMessage(
                        role="user",
                        content=f"That plan is not valid: {e}. Reply again with JSON only, in the shape asked for.",
                    ),
                ]
                continue
            ctx.record(
                AgentStep(
                    index=ctx.next_index(),
                    kind="plan",
                    agent=ctx.agent.name,
                    name="plan",
                    result=_plan_text(goals),
                    detail={"steps": goals},
                )
            )
            return goals
        raise UpstreamError(
            f"agent {ctx.agent.name}: the model's plan failed validation twice ({errors[0]}; then {errors[1]})"
        )
