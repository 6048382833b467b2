"""cheapest: lowest estimated cost of this request first, by the providers' configured prices."""

from __future__ import annotations

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest

_CHARS_PER_TOKEN = 4  # a rough, provider-neutral estimate; only the order matters
_DEFAULT_OUTPUT = 256


def estimated_tokens(request: TextRequest) -> tuple[int, int]:
    chars = len(request.prompt or "") + sum(len(m.content) for m in request.messages or [])
    return chars // _CHARS_PER_TOKEN + 1, request.max_tokens or _DEFAULT_OUTPUT


def cheapest(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    tokens_in, tokens_out = estimated_tokens(request)
    # sorted() is stable: equal prices keep the route's order.
    return sorted(targets, key=lambda t: tokens_in * t.price_in + tokens_out * t.price_out)
