"""Render chat messages into a prompt with the model's own Jinja chat template.

Templates come from the GGUF file, so they are untrusted: they run in Jinja's
immutable sandbox.

`render_chat_parts` tells the template's own markup (whose special-token text, "<|im_end|>",
must become those tokens) from the messages' text (which must stay plain text, so that a
message cannot close its turn and write one for another role): see its docstring.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ember.errors import BadRequest

# The fallback for other architectures: ChatML, which most small instruct models know.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# Gemma's own turn format: no system role, so a system message opens the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "<start_of_turn>{{ role }}\n{{ ((system if loop.first else '') + message['content']) | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

# Used when a GGUF carries no template of its own, by architecture.
FALLBACK_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "gemma2": GEMMA_TEMPLATE, "gemma3": GEMMA_TEMPLATE}


def template_for(embedded: str | None, architecture: str) -> str:
    return embedded or FALLBACK_TEMPLATES.get(architecture, CHATML_TEMPLATE)


class TemplateRaised(Exception):
    """A template called raise_exception(): the conversation breaks its rules."""


def _raise_exception(message: str) -> None:
    raise TemplateRaised(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, **_: Any) -> str:
    # Hugging Face templates expect non-ASCII kept and no HTML escaping.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


@lru_cache(maxsize=32)
def _compile(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise BadRequest(f"the model's chat template does not compile: {exc}") from exc


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt; `tools` (OpenAI-style function dicts) is the template's `tools` variable,
    left undefined when None, as templates that take tools expect."""
    compiled = _compile(template)
    extra = {"tools": tools} if tools is not None else {}
    try:
        return compiled.render(
            messages=messages,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            add_generation_prompt=add_generation_prompt,
            **extra,
        )
    except TemplateRaised as exc:
        raise BadRequest(f"the model's chat template refused these messages: {exc}", param="messages") from exc
    except TemplateError as exc:
        raise BadRequest(f"the model's chat template failed on these messages: {exc}", param="messages") from exc


# A path into the messages list: (0, "content"), (2, "tool_calls", 0, "function", "arguments").
TextPath = tuple[str | int, ...]


@dataclass(frozen=True)
class PromptPart:
    """A piece of a rendered prompt: the template's markup (special=True: special-token text in
    it becomes those tokens) or a message's own text (special=False: tokenized as plain text)."""

    text: str
    special: bool


def render_chat_parts(
    template: str,
    messages: list[dict[str, Any]],
    *,
    plain: Sequence[TextPath],
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
) -> list[PromptPart]:
    """The prompt render_chat gives, cut into markup and the plain-text strings at `plain`.

    Each string at a path in `plain` is rendered as a sentinel no message can contain (a random
    nonce between private-use characters), keeping its leading and trailing whitespace around
    the sentinel so that a template's `trim` acts on it as on the text. The render is then cut
    at the sentinels. Joined, the parts must equal render_chat's prompt: a template that changes
    such a text otherwise (splits it, escapes it, changes its case) is a 400, because the text
    could not be kept apart from the markup.
    """

    def render(these: list[dict[str, Any]]) -> str:
        return render_chat(
            template,
            these,
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            tools=tools,
        )

    prompt = render(messages)
    nonce = secrets.token_hex(8)
    marked = copy.deepcopy(messages)
    texts: list[tuple[str, str, str]] = []  # (leading whitespace, the text stripped, trailing)
    for path in plain:
        container, key = _parent(marked, path)
        text = container[key]
        core = text.strip() if isinstance(text, str) else ""
        if not core:
            continue
        start = text.index(core)
        lead, trail = text[:start], text[start + len(core) :]
        container[key] = f"{lead}\ue000{nonce}:{len(texts)}\ue001{trail}"
        texts.append((lead, core, trail))
    pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", render(marked))  # markup, index, markup, ...
    for i in range(1, len(pieces), 2):
        lead, core, trail = texts[int(pieces[i])]
        # Whitespace the template kept goes back with its text, to be tokenized as it would be there.
        if lead and pieces[i - 1].endswith(lead):
            pieces[i - 1], core = pieces[i - 1][: -len(lead)], lead + core
        if trail and pieces[i + 1].startswith(trail):
            pieces[i + 1], core = pieces[i + 1][len(trail) :], core + trail
        pieces[i] = core
    parts = [PromptPart(piece, special=not i % 2) for i, piece in enumerate(pieces) if piece]
    if "".join(part.text for part in parts) != prompt:
        where = _field(plain[0]) if plain else "messages"
        raise BadRequest(
            f"{where} holds the text of the model's special tokens, and the model's chat template changes "
            "that text, so ember cannot keep it apart from the template's markup; leave the special-token "
            "text out",
            param=where,
        )
    return parts


def _parent(messages: list[dict[str, Any]], path: TextPath) -> tuple[Any, str | int]:
    node: Any = messages
    for step in path[:-1]:
        node = node[step]
    return node, path[-1]


def _field(path: TextPath) -> str:
    out = "messages"
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else f".{step}"
    return out
