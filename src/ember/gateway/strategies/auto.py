"""auto: short, simple requests to the small target; long or demanding ones to the strong one.

Demanding (any of): a prompt longer than max_prompt_chars, max_tokens above the rule's
max_tokens (or none given), tools, or `X-Ember-Priority: high`. The rest of the route's
targets follow as fallbacks.
"""

from __future__ import annotations

from ember.gateway.config import AutoRule, RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def is_demanding(rule: AutoRule, request: TextRequest) -> bool:
    chars = len(request.prompt or "") + sum(len(m.content) for m in request.messages or [])
    return (
        chars > rule.max_prompt_chars
        or request.max_tokens is None
        or request.max_tokens > rule.max_tokens
        or (rule.tools_to_strong and request.has_tools)
        or (request.context.priority or "").lower() == rule.priority_header.lower()
    )


def auto(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    assert route.auto is not None, "config validation requires [routes.auto] for strategy auto"
    first = route.auto.strong if is_demanding(route.auto, request) else route.auto.small
    return sorted(targets, key=lambda t: t.label != first)
