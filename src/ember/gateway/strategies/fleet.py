"""fleet: the fleet's nodes, best first for this prompt (gateway/fleet.py puts them in the route).

The order is made before the walk, when the route's "fleet/MODEL" targets are replaced by the
live nodes serving MODEL in FleetRouter's order (prefix, load, residency, tiers: see
ember.fleet.routing); the Router then walks them as given, as `fallback` does.
"""

from __future__ import annotations

import json

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def fleet(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    return list(targets)


def prompt_text(request: TextRequest) -> str:
    """The text whose prefix a node caches: a completion's prompt, or a chat's messages rendered
    in order (system, then the history), so a conversation's next request begins with the
    previous one's text. Not the model's chat template (the gateway does not know it): the
    router's tree is approximate anyway, and only the sharing of heads matters."""
    if request.messages is None:
        return request.prompt or ""
    # Tools are rendered before the messages by chat templates: other tools, another prefix.
    parts = [f"<tool {t.name}>{json.dumps(t.parameters, sort_keys=True)}" for t in request.tools or ()]
    for message in request.messages:
        parts.append(f"<{message.role}>{message.content}")
        parts.extend(f"<call {call.name}>{call.arguments}" for call in message.tool_calls)
    return "\n".join(parts)
