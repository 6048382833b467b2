"""Cache keys: a request, normalized to what decides its answer, hashed.

Two requests share a key exactly when a deterministic engine must give them the same answer:
same model (name and content digest), same chat messages (tool calls, tool results and images
included) or prompt, same limits, every sampling field, the same tools with the same tool_choice
and parallel_tool_calls, and the same response format. The wire protocol is left out on
purpose: an OpenAI and an Ollama request that mean the same thing share an entry (their
sampling defaults differ, so in practice only when the client set them equal).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from ember.engine.types import SamplingParams
from ember.services.types import ChatMessage, ImagePart, TextRequest

# Bump when the normalized shape or the stored value changes: old entries stop matching.
KEY_VERSION = 2

# Sampling fields by type, so 0 and 0.0 (JSON int vs float) normalize alike.
_INT_FIELDS = frozenset({"top_k", "repeat_last_n"})


def is_deterministic(sampling: SamplingParams) -> bool:
    """Greedy decoding, or a seeded sampler: the same request gives the same answer."""
    return sampling.temperature <= 0 or sampling.seed is not None


def cacheable(request: TextRequest) -> bool:
    # Logprobs are not what an entry keeps (entry.py): those requests are not cached.
    return not request.context.no_cache and request.logprobs is None and is_deterministic(request.sampling)


def normalized(request: TextRequest, digest: str, *, default_num_ctx: int) -> dict[str, Any]:
    """The parts of a request that decide its answer, in a canonical, JSON-ready form."""
    sampling: dict[str, Any] = {}
    for field in fields(request.sampling):
        name, value = field.name, getattr(request.sampling, field.name)
        if value is None:
            sampling[name] = None
        elif name == "seed" or name in _INT_FIELDS:
            sampling[name] = int(value)
        else:
            sampling[name] = float(value) + 0.0  # + 0.0 turns -0.0 into 0.0
    shape: dict[str, Any] = {
        "v": KEY_VERSION,
        "model": request.model,
        "digest": digest,
        "kind": "chat" if request.messages is not None else "completion",
        "max_tokens": request.max_tokens,
        # Stop strings act as a set: order and repeats do not change where the text ends.
        "stop": sorted(set(request.stop)),
        "sampling": sampling,
    }
    form = request.response_format
    if form.type != "text":
        shape["format"] = [form.type, form.schema, form.name, form.strict]
    if request.tools:
        # In their order (a template lists them so), with how the model may use them. Without
        # tools, tool_choice can only be auto or none, which then mean the same.
        shape["tools"] = [[t.name, t.description, t.parameters, t.strict] for t in request.tools]
        shape["tool_choice"] = [request.tool_choice.mode, request.tool_choice.name]
        shape["parallel_tool_calls"] = request.parallel_tool_calls
    if request.messages is not None:
        # "developer" is rendered as "system" by the chat template: the same prompt.
        shape["messages"] = [_message(m) for m in request.messages]
    else:
        shape["prompt"] = request.prompt or ""
    if request.max_tokens is None:
        # Without a cap the answer runs until the context is full: its size decides the length.
        options = request.load_options
        shape["num_ctx"] = options.num_ctx if options is not None else default_num_ctx
    return shape


def _message(message: ChatMessage) -> list[Any]:
    role = "system" if message.role == "developer" else message.role
    parts: list[Any] = [role, message.content]
    if message.tool_calls or message.tool_call_id is not None or message.name is not None or message.attachments:
        parts += [
            [[c.id, c.name, c.arguments] for c in message.tool_calls],
            message.tool_call_id,
            message.name,
            [p.source if isinstance(p, ImagePart) else p.text for p in message.attachments],
        ]
    return parts


def cache_key(request: TextRequest, digest: Callable[[], str], *, default_num_ctx: int) -> str | None:
    """The key of a cacheable request, or None; digest() is called only when cacheable."""
    if not cacheable(request):
        return None
    shape = normalized(request, digest(), default_num_ctx=default_num_ctx)
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()
