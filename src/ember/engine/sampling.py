"""Per-request llama.cpp sampler chains and token-to-text helpers (worker side).

A chain may be constrained by a grammar (ember.engine.constrained), which it
then owns and frees with itself.

A chain is llama.cpp's [penalties, rest], rest being greedy or the chain
top_k -> typical -> top_p -> min_p -> temp -> dist: applied in that order, as one flat chain
would. Where ember.engine.fast_sampling can give the same token more cheaply (greedy; top-k
with penalties that only lower logits) it samples; it needs the penalties' window mirrored
here, which every accepted token (prompt or sampled) goes into, once.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp

from ember.engine.constrained import Candidates, GrammarSampler, resample
from ember.engine.fast_sampling import PenaltyWindow, Shortcut
from ember.engine.types import SamplingParams

# Enough for any single token's text; llama_token_to_piece tells us when it is not.
_PIECE_BUFFER = 256


@dataclass
class SamplerChain:
    """One llama.cpp sampler chain, owned by one request for its lifetime."""

    handle: llama_cpp.llama_sampler_p
    seed: int
    last_n: int  # tokens the penalties look back on; 0 when they are off
    grammar: GrammarSampler | None = None
    candidates: Candidates | None = None  # set with grammar: the scheduler's shared arrays
    window: PenaltyWindow | None = None  # the penalties' history, mirrored for the shortcut
    shortcut: Shortcut | None = None  # None: every token through the full chain

    @classmethod
    def build(cls, params: SamplingParams, *, n_vocab: int, history: int) -> SamplerChain:
        """The chain both engines sample with, in the order llama-cpp-python's Llama.generate uses.

        One chain for the worker and the in-process engine means a request sampled by either
        agrees token for token given the same logits, penalties included.
        """
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        # repeat_last_n -1 means the whole context, as in Ollama.
        last_n = history if params.repeat_last_n < 0 else params.repeat_last_n
        penalizes = params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0
        # llama.cpp turns the penalties off as well for a window of 0 (or less).
        penalizes = penalizes and last_n > 0
        init_chain = llama_cpp.llama_sampler_chain_init
        chain = init_chain(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add  # a chain owns what is added to it
        add(
            chain,
            llama_cpp.llama_sampler_init_penalties(
                n_vocab, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
            ),
        )
        window = PenaltyWindow(last_n) if penalizes else None
        shortcut: Shortcut | None
        if params.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            shortcut = Shortcut(n_vocab, window=window, top_k=None)
        else:
            rest = init_chain(llama_cpp.llama_sampler_chain_default_params())
            add(rest, llama_cpp.llama_sampler_init_top_k(params.top_k))
            add(rest, llama_cpp.llama_sampler_init_typical(params.typical_p, 1))
            add(rest, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            add(rest, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(rest, llama_cpp.llama_sampler_init_temp(params.temperature))
            add(rest, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
            add(chain, rest)
            # Without penalties the full path is already cheap (~0.05 ms); with penalties that
            # can raise a logit, or top_k 0 (off), restricting the candidates is not exact.
            lowers_only = (
                params.repeat_penalty >= 1.0 and params.frequency_penalty >= 0 and params.presence_penalty >= 0
            )
            exact = window is not None and params.top_k > 0 and lowers_only
            shortcut = Shortcut(n_vocab, window=window, top_k=params.top_k) if exact else None
        return cls(handle=chain, seed=seed, last_n=last_n if penalizes else 0, window=window, shortcut=shortcut)

    def accept_history(self, tokens: Sequence[int]) -> None:
        """Let the penalties see the prompt, as Ollama and llama-server do."""
        if self.last_n <= 0:
            return
        window = self.window
        for token in tokens[-self.last_n :]:
            llama_cpp.llama_sampler_accept(self.handle, token)
            if window is not None:
                window.push(token)

    def constrain(self, grammar: GrammarSampler, candidates: Candidates) -> None:
        """From now on every token sampled is one the grammar allows; the chain owns it (frees it)."""
        self.grammar, self.candidates = grammar, candidates

    def sample(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample (and accept) a token from the logits of one output of the last decode."""
        if self.grammar is None:
            token = self._draw(ctx, batch_index)
        else:
            assert self.candidates is not None
            token = self._sample_constrained(self.grammar, self.candidates, ctx, batch_index)
        if self.window is not None:
            self.window.push(token)
        return token

    def _draw(self, ctx: llama_cpp.llama_context_p, batch_index: int) -> int:
        """The chain's token (accepted into it), by the shortcut where it can tell."""
        if self.shortcut is not None:
            token = self.shortcut.sample(self.handle, ctx, batch_index)
            if token is not None:
                return token
        return int(llama_cpp.llama_sampler_sample(self.handle, ctx, batch_index))

    def _sample_constrained(
        self, grammar: GrammarSampler, candidates: Candidates, ctx: llama_cpp.llama_context_p, batch_index: int
    ) -> int:
        """See ember.engine.constrained: sample freely, let the grammar check, resample if it refuses."""
        # Sampling feeds the token to the repeat penalties: where they are on, keep the chain as
        # it was, to sample again from if the grammar refuses the token.
        before = llama_cpp.llama_sampler_clone(self.handle) if self.last_n > 0 else None
        token = self._draw(ctx, batch_index)
        if candidates.visible(token) and grammar.allows(candidates, token):
            if before is not None:
                llama_cpp.llama_sampler_free(before)
        else:
            if before is not None:
                llama_cpp.llama_sampler_free(self.handle)
                self.handle = before
            token = resample(self.handle, grammar, candidates, ctx, batch_index)
        grammar.accept(token)
        return token

    def free(self) -> None:
        if self.grammar is not None:
            self.grammar.free()
            self.grammar = None
        if self.handle:
            llama_cpp.llama_sampler_free(self.handle)
            self.handle = None  # type: ignore[assignment]  # None once freed, so a second free() does nothing


class Detokenizer:
    """Bytes of single tokens, with a reusable buffer (one call per generated token)."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._buffer = ctypes.create_string_buffer(_PIECE_BUFFER)

    def piece(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, _PIECE_BUFFER, 0, False)
        if n < 0:  # longer than the buffer: ask again with the size it reported
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, big, -n, 0, False)
            return big.raw[:n]
        return self._buffer.raw[:n]


def tokenize(vocab: llama_cpp.llama_vocab_p, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """Tokens of text; sized by a first call that reports how many are needed."""
    data = text.encode("utf-8")
    capacity = len(data) + 8
    tokens = (llama_cpp.llama_token * capacity)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, capacity, add_special, parse_special)
    if n < 0:
        capacity = -n
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            raise RuntimeError(f"tokenization failed ({n})")
    return list(tokens[:n])
