"""Messages between the server process and a model worker, and the socket they travel on.

Both ends hold a `multiprocessing.connection.Connection` over one end of a Unix
socketpair; every message is one small pickled dataclass. Tokens stream back as
`Step` messages: one per decode step at most, holding the new text of every
request that produced some, so the per-token cost is a fraction of one
pickle and one syscall.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from ember.engine.types import (
    EmbeddingResult,
    FinishReason,
    GenerationRequest,
    GenerationStats,
    LoadOptions,
    TokenLogprob,
)

# --- server -> worker -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """The first message a worker reads: what to load."""

    path: Path
    options: LoadOptions
    profile_steps: bool = False  # log each decode step's timings (the server logs at debug level)


@dataclass(frozen=True, slots=True)
class Generate:
    rid: int
    request: GenerationRequest


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client went away: free the request's slot before the next decode step."""

    rid: int


@dataclass(frozen=True, slots=True)
class Embed:
    rid: int
    texts: list[str]
    truncate: bool = True  # False: an input past the embedding context fails the request


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Free everything and exit."""


@dataclass(frozen=True, slots=True)
class Park:
    """The model was unloaded but its worker is kept as a pre-loaded spare: forget every
    request and clear the KV cache (nothing of one user's prompts survives into the next
    engine), keep the weights and the context, answer Parked and wait for requests."""


# --- worker -> server -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """Loaded; what the server needs to describe the engine."""

    context_length: int
    memory_bytes: int
    slots: int
    load_seconds: float


@dataclass(frozen=True, slots=True)
class LoadFailed:
    message: str


@dataclass(frozen=True, slots=True)
class Update:
    """New text of one request; `finish` and `stats` (or `error`) are set on its last update.

    `logprobs`, when the request asked for them, holds one entry per token sampled since the
    last update, even a token whose text the stop matcher still holds back (so entries may run
    ahead of `text`; in all they number exactly `stats.completion_tokens`).
    """

    rid: int
    text: str
    finish: FinishReason | None = None
    stats: GenerationStats | None = None
    error: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    stop_sequence: str | None = None  # with finish "stop": the stop string that matched, if one did

    def then(self, following: Update) -> Update:
        """This update and the next of the same request as one: texts and logprobs joined, the
        later one's end (finish, stats, error, stop_sequence) kept."""
        return Update(
            rid=self.rid,
            text=self.text + following.text,
            finish=following.finish,
            stats=following.stats,
            error=following.error,
            logprobs=self.logprobs + following.logprobs,
            stop_sequence=following.stop_sequence,
        )


@dataclass(frozen=True, slots=True)
class Step:
    updates: list[Update] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Embedded:
    rid: int
    result: EmbeddingResult
    memory_bytes: int  # grows when the first embedding request creates the embedding context


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """One (embedding) request could not be served; the worker itself is fine."""

    rid: int
    message: str
    too_long: bool = False  # an input past the embedding context (the client's fault, a 400)


@dataclass(frozen=True, slots=True)
class Parked:
    """The answer to Park: the last message of this engine's conversation on the socket."""


@dataclass(frozen=True, slots=True)
class Fatal:
    """The worker hit an error it cannot recover from and is about to exit."""

    message: str


ToWorker = Load | Generate | Cancel | Embed | Shutdown | Park
FromWorker = Ready | LoadFailed | Step | Embedded | RequestFailed | Fatal | Parked


def socket_pair() -> tuple[Connection, socket.socket]:
    """The server's Connection and the raw socket to hand to the worker process.

    Both sockets are created non-inheritable; the worker's end is passed
    explicitly (pass_fds), so no other child ever holds it open and the
    server sees EOF the moment the worker dies.
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(ours.detach())
    return conn, theirs


def connection_from_fd(fd: int) -> Connection:
    return Connection(fd)
