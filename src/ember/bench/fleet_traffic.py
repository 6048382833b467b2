"""The fleet benchmark's traffic: multi-turn conversations that share a few system prompts.

Each simulated user talks with one system prompt (user i takes prompt i mod the count, so every
prompt has many users), one conversation after another; each turn appends the user's message
and, once answered, the assistant's answer to the history, so every turn's prompt starts with
the whole previous one. Sizes are in simulated tokens (words: see sim_node.py).

Invariants: a user's conversations, messages and answer lengths come from its own generator,
seeded by the run's seed and the user's index, so two runs with one seed send the same requests
in the same order per user, whichever router spreads them. A conversation may start part way
through (`start_turn`), its earlier turns made up on the spot and never sent: that puts a run
into the steady mix of short and long histories within seconds instead of after a whole
conversation's length, and such a first request finds nothing cached anywhere (as a
conversation resumed from elsewhere would).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

_WORDS = (
    "the river stone light house garden winter market bridge window forest island morning "
    "evening village mountain letter teacher music paper table street harbor summer candle story "
    "valley silver orange basket bottle shadow ladder mirror farmer kitchen pocket rabbit ribbon "
    "saddle thunder tower wagon meadow lantern"
).split()


@dataclass(frozen=True)
class TrafficConfig:
    system_prompts: int = 4
    system_tokens: int = 600  # a long shared head: instructions and tool definitions
    turns: int = 8  # turns per conversation
    user_tokens: tuple[int, int] = (40, 120)  # a user message's length, uniform within
    answer_tokens: tuple[int, int] = (24, 72)  # max_tokens of a turn (the simulated node answers all of it)
    think_s: float = 0.0  # mean pause (exponential) between an answer and the user's next turn

    def __post_init__(self) -> None:
        if self.system_prompts < 1 or self.turns < 1 or self.system_tokens < 0 or self.think_s < 0:
            raise ValueError("system_prompts and turns must be at least 1, system_tokens and think_s at least 0")
        for low, high in (self.user_tokens, self.answer_tokens):
            if not 1 <= low <= high:
                raise ValueError("token ranges must be 1 <= low <= high")


def _words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choices(_WORDS, k=count))


def system_prompt(index: int, tokens: int) -> str:
    rng = random.Random(f"system:{index}")
    return f"System prompt {index}. " + _words(rng, max(0, tokens - 3))


class Conversation:
    """One conversation's history and what it asks next."""

    def __init__(self, user: int, rng: random.Random, config: TrafficConfig, system: str, start_turn: int) -> None:
        self.user = user
        self._rng = rng
        self._config = config
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
        self.turn = 0
        self._serial = rng.getrandbits(32)
        for _ in range(start_turn):  # made-up earlier turns, never sent
            self.messages.append({"role": "user", "content": self._user_text()})
            self.messages.append({"role": "assistant", "content": _words(rng, rng.randint(*config.answer_tokens))})
            self.turn += 1

    @property
    def done(self) -> bool:
        return self.turn >= self._config.turns

    def _user_text(self) -> str:
        # The conversation's serial first: two users of one system prompt part there.
        return f"u{self._serial:08x} t{self.turn} " + _words(
            self._rng, self._rng.randint(*self._config.user_tokens) - 2
        )

    def ask(self) -> tuple[list[dict[str, Any]], int]:
        """The next request's messages and max_tokens."""
        self.messages.append({"role": "user", "content": self._user_text()})
        return list(self.messages), self._rng.randint(*self._config.answer_tokens)

    def answered(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self.turn += 1


class User:
    """A user's endless run of conversations."""

    def __init__(self, index: int, seed: int, config: TrafficConfig) -> None:
        self.index = index
        self._config = config
        self._rng = random.Random(f"{seed}:user:{index}")
        self._system = system_prompt(index % config.system_prompts, config.system_tokens)
        self._first = True

    def think(self) -> float:
        """Seconds to wait before the next turn."""
        return self._rng.expovariate(1 / self._config.think_s) if self._config.think_s > 0 else 0.0

    def conversation(self) -> Conversation:
        start = self._rng.randrange(self._config.turns) if self._first else 0
        self._first = False
        return Conversation(self.index, self._rng, self._config, self._system, start)
