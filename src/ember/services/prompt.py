"""A chat's prompt tokens: the template's markup with its special tokens, the messages as text.

A message is text, whatever it says: a user who writes `<|im_end|><|im_start|>system` gets
those characters read by the model, not the template's turn markers, so no message can end
its turn and write one for another role. Tokenizing the rendered prompt in one piece with
special tokens parsed (as llama.cpp does for a whole prompt) would make them markers.

Invariants:
- a chat whose texts hold no special-token text is tokenized exactly as before: the rendered
  prompt in one call, special tokens parsed (the common case costs two extra tokenizations of
  the messages' text joined, to find that out);
- otherwise the texts that hold some are cut out of the render (render_chat_parts) and tokenized
  as plain text, the markup around them with special tokens parsed; the BOS (and EOS) tokens the
  model adds to a text are added once, around the whole prompt, unless the template wrote BOS.
Raw prompts (/api/generate raw, /v1/completions) are the caller's own markup and keep their
special tokens parsed, as llama-server and Ollama do.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ember.engine.protocol import Engine
from ember.runtime.chat_template import TextPath, render_chat, render_chat_parts


def message_texts(messages: list[dict[str, Any]]) -> Iterator[tuple[TextPath, str]]:
    """The client's own text in rendered messages: contents (tool results are contents too) and
    tool calls' arguments when they are JSON text."""
    for i, message in enumerate(messages):
        if isinstance(message.get("content"), str):
            yield (i, "content"), message["content"]
        for j, call in enumerate(message.get("tool_calls") or ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield (i, "tool_calls", j, "function", "arguments"), function["arguments"]


async def has_special_text(engine: Engine, text: str) -> bool:
    """Whether text holds the text of a special (control) token: only then do the two differ."""
    parsed = await engine.tokenize(text, add_special=False, parse_special=True)
    return parsed != await engine.tokenize(text, add_special=False, parse_special=False)


async def chat_prompt_tokens(
    engine: Engine,
    template: str,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None,
    eos_token: str | None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    texts = [(path, text) for path, text in message_texts(messages) if text]
    plain: list[TextPath] = []
    if texts and await has_special_text(engine, "\n".join(text for _, text in texts)):
        plain = [path for path, text in texts if await has_special_text(engine, text)]
    if not plain:
        prompt = render_chat(template, messages, bos_token=bos_token, eos_token=eos_token, tools=tools)
        # Templates that write the BOS token themselves must not get a second one.
        return await engine.tokenize(prompt, add_special=not _starts_with(prompt, bos_token))
    parts = render_chat_parts(template, messages, plain=plain, bos_token=bos_token, eos_token=eos_token, tools=tools)
    tokens: list[int] = []
    for part in parts:
        tokens += await engine.tokenize(part.text, add_special=False, parse_special=part.special)
    if parts and parts[0].special and _starts_with(parts[0].text, bos_token):
        return tokens
    head, tail = await _added_tokens(engine)
    return head + tokens + tail


def _starts_with(text: str, bos_token: str | None) -> bool:
    return bool(bos_token) and text.startswith(bos_token or "")


async def _added_tokens(engine: Engine) -> tuple[list[int], list[int]]:
    """The tokens add_special puts before (BOS) and after (EOS, for models that want one) a text."""
    bare = await engine.tokenize("a", add_special=False, parse_special=False)
    added = await engine.tokenize("a", add_special=True, parse_special=False)
    for start in range(len(added) - len(bare) + 1):
        if added[start : start + len(bare)] == bare:
            return added[:start], added[start + len(bare) :]
    return [], []
