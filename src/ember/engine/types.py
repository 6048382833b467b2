"""Plain data passed between the serving layer and an engine. No HTTP types here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class SamplingParams:
    """Sampling knobs with llama.cpp's meanings. temperature 0 means greedy."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class LoadOptions:
    """What a model is loaded with; a request asking for different values reloads it."""

    num_ctx: int = 4096
    num_thread: int | None = None
    num_gpu: int = 0
    num_parallel: int = 4


@dataclass(frozen=True)
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int | None = None  # None: until the context is full
    # None: no logprobs; k: each completion token's logprob and its k likeliest alternatives (0..20)
    logprobs: int | None = None
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # GBNF text (root rule "root") every answer must match, e.g. from engine.grammar.schema_to_gbnf.
    # Once it is complete only end-of-generation is allowed, so the answer ends with "stop".
    grammar: str | None = None


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_seconds: float
    eval_seconds: float
    # Prompt tokens whose KV cache was reused from an earlier request instead of
    # evaluated (OpenAI's usage.prompt_tokens_details.cached_tokens).
    cached_prompt_tokens: int = 0


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: tuple[int, ...]


@dataclass(frozen=True)
class TokenLogprob:
    """One sampled token: its text, log probability (<= 0), UTF-8 bytes and the likeliest
    alternatives, most likely first."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationEvent:
    """A piece of generated text; the last event has done=True, a finish reason and stats."""

    text: str
    done: bool = False
    finish_reason: FinishReason | None = None
    stats: GenerationStats | None = None
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in `text`, when they were asked for
    stop_sequence: str | None = None  # on the done event: the stop string that ended the answer


@dataclass(frozen=True)
class EmbeddingResult:
    vectors: list[list[float]]
    prompt_tokens: int
