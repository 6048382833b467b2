"""Prompts for the load generator: distinct per request, of a chosen size, reproducible.

The server under test is a black box (any OpenAI-compatible URL), so no tokenizer is at hand:
sizes are reached with common short English words, which BPE vocabularies keep as one token
each (with their leading space). The usage block of each response reports the real count.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Short, frequent words: one token each in Llama, SmolLM, Gemma and GPT vocabularies.
_WORDS = (
    "the river stone light house garden winter market bridge window forest island "
    "morning evening village mountain letter teacher music paper table street harbor "
    "summer candle story valley silver orange basket bottle shadow ladder mirror "
    "farmer kitchen pocket rabbit ribbon saddle thunder tower wagon meadow lantern"
).split()

# What each request asks for: long free text, so the model tends to use all of max_tokens.
_TASKS = (
    "Continue the story below at length, in plain prose, without ending it.",
    "Write a long, detailed description inspired by the notes below.",
    "Expand the notes below into a long essay with many paragraphs.",
    "Retell the notes below as a long letter to a friend.",
)

# Tokens a numbered sentence costs beyond its words: "Note 12:" and the full stop (tokenizers
# that split numbers into digits spend two on "12").
_SENTENCE_OVERHEAD = 6
_WORDS_PER_SENTENCE = 12
# The request's header ("Request 1a2b3c4d-17." and the task) costs about this much.
_HEADER_TOKENS = 24
_MIN_FILLER = 8


@dataclass(frozen=True)
class ChatPrompt:
    """The messages of one request."""

    messages: tuple[dict[str, str], ...]

    def as_list(self) -> list[dict[str, str]]:
        return [dict(message) for message in self.messages]


def filler(rng: random.Random, tokens: int, label: str) -> str:
    """About `tokens` tokens of numbered sentences of common words."""
    sentences: list[str] = []
    used = 0
    number = 1
    while used < tokens:
        count = max(1, min(_WORDS_PER_SENTENCE, tokens - used - _SENTENCE_OVERHEAD))
        words = " ".join(rng.choice(_WORDS) for _ in range(count))
        sentences.append(f"{label} {number}: {words}.")
        used += count + _SENTENCE_OVERHEAD
        number += 1
    return " ".join(sentences)


@dataclass(frozen=True)
class PromptFactory:
    """Builds the prompt of request `index` of a run.

    `nonce` is new for every run, and leads every prompt, so no server's prompt cache can carry
    over from an earlier run: each prompt differs from its first token on, unless `shared_prefix`
    asks for one long system prompt common to all requests of this run.
    """

    prompt_tokens: int
    nonce: str
    shared_prefix: int = 0

    def system_prompt(self) -> str:
        rng = random.Random(f"{self.nonce}/system")
        header = f"Session {self.nonce}. You are a patient writer. Background notes follow."
        return f"{header} {filler(rng, self.shared_prefix, 'Fact')}"

    def build(self, index: int) -> ChatPrompt:
        rng = random.Random(f"{self.nonce}/{index}")
        task = _TASKS[index % len(_TASKS)]
        notes = filler(rng, max(_MIN_FILLER, self.prompt_tokens - _HEADER_TOKENS), "Note")
        user = f"Request {self.nonce}-{index}. {task} {notes}"
        if self.shared_prefix > 0:
            return ChatPrompt(({"role": "system", "content": self.system_prompt()}, {"role": "user", "content": user}))
        return ChatPrompt(({"role": "user", "content": user},))
