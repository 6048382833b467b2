"""Exact shortcuts past llama.cpp's full-vocabulary sampling for penalised and greedy chains.

`llama_sampler_sample` fills a candidate array with the whole vocabulary (49k entries for the
default model) per slot per step, and the penalties sampler then looks every entry up in its
history: ~0.2 ms a token where the unpenalised chain takes ~0.05 ms. The penalties only touch
the few ids in their window, so most of that work changes nothing. A shortcut here gives the
token the full chain gives; where a step's exactness cannot be shown it returns None and the
caller runs the full chain.

Invariants:
- Same token as `llama_sampler_sample` on the same chain and logits, ties included, and the
  same chain state afterwards: the token is accepted into the whole chain (penalties' history,
  the dist sampler's generator) exactly once, by the shortcut or by the full path, never both.
- The penalised logits are computed by the chain's own penalties sampler (llama.cpp's float
  arithmetic), on a small array of just the ids concerned.
- The context's raw logits are left as they were: logprobs read them after sampling.

Greedy: the penalised ids' logits are replaced in place by their penalised values, the first
maximum is taken (llama.cpp's greedy keeps the first of equal logits, as np.argmax does), and
the raw values are put back.

Stochastic (top_k > 0; penalties that only lower logits: repeat >= 1, frequency >= 0,
presence >= 0): with P penalised ids, the top k after penalties lie among the ids whose raw
logit reaches a threshold t that at least k + P ids reach (at least k of those are unpenalised
and keep their logit >= t; every other id stays below t). t is the (k + P)-th largest of the
maxima of groups of GROUP ids: cheap, and at least k + P ids reach it. The candidates get the
penalties, then the rest of the chain (top_k, typical, top_p, min_p, temp, dist) runs over
them. That gives the full path's token when the top k + 1 penalised logits are all different:
then the sorted top k that top_k hands on is the same array either way, whatever order the
candidates came in. Equal logits there (whose order depends on how the whole array was sorted)
send the step back to the full path, before anything drew from the generator.
"""

from __future__ import annotations

import ctypes
from collections import deque

import llama_cpp
import numpy as np
import numpy.typing as npt

from ember.engine.constrained import _TOKEN_DATA

GROUP = 32  # vocabulary entries per group whose maximum bounds the threshold
MAX_CANDIDATES = 4096  # more candidates than this: the full path is as cheap


class PenaltyWindow:
    """What llama.cpp's penalties sampler remembers: the last `size` accepted tokens, counted."""

    def __init__(self, size: int) -> None:
        self._ring: deque[int] = deque(maxlen=size)
        self.counts: dict[int, int] = {}

    def push(self, token: int) -> None:
        ring, counts = self._ring, self.counts
        if len(ring) == ring.maxlen:
            oldest = ring[0]
            if counts[oldest] == 1:
                del counts[oldest]
            else:
                counts[oldest] -= 1
        ring.append(token)  # a full deque drops the oldest itself
        counts[token] = counts.get(token, 0) + 1

    def ids(self) -> npt.NDArray[np.int64]:
        """The distinct ids the penalties act on now."""
        return np.fromiter(self.counts, dtype=np.int64, count=len(self.counts))


class Shortcut:
    """The cheap path for one chain: greedy (temperature <= 0) or top-k sampling.

    `chain` holds the penalties at index 0 and the rest of the chain at index 1 (see
    ember.engine.sampling.SamplerChain.build); it is read at each call, as the caller may
    replace its chain with a clone.
    """

    def __init__(self, n_vocab: int, *, window: PenaltyWindow | None, top_k: int | None) -> None:
        self._n_vocab = n_vocab
        self._window = window  # None: the penalties are off
        self._top_k = top_k  # None: greedy
        self._logits_type = ctypes.c_float * n_vocab
        self._buffer = np.zeros(MAX_CANDIDATES, dtype=_TOKEN_DATA)
        self._array = llama_cpp.llama_token_data_array()
        self._array.data = self._buffer.ctypes.data_as(llama_cpp.llama_token_data_p)  # type: ignore[assignment]  # the binding types it as an array; it is a pointer
        self._columns = n_vocab // GROUP
        self._gridded = self._columns * GROUP  # the vocabulary's first ids, in whole columns

    def sample(self, chain: llama_cpp.llama_sampler_p, ctx: llama_cpp.llama_context_p, index: int) -> int | None:
        """The token the full chain would give, accepted into `chain`; None: run the full chain."""
        pointer = llama_cpp.llama_get_logits_ith(ctx, index)
        address = ctypes.cast(pointer, ctypes.c_void_p).value
        if not address:
            return None  # let llama.cpp report it as it always has
        row = memoryview(self._logits_type.from_address(address))  # a view of the context's logits, no copy
        return self.choose(chain, np.frombuffer(row, dtype=np.float32))

    def choose(self, chain: llama_cpp.llama_sampler_p, logits: npt.NDArray[np.float32]) -> int | None:
        """As `sample`, from these logits (a writable row of the vocabulary's logits)."""
        token = self._greedy(chain, logits) if self._top_k is None else self._top(chain, logits, self._top_k)
        if token is not None:
            llama_cpp.llama_sampler_accept(chain, token)
        return token

    def _load(self, ids: npt.NDArray[np.int64], values: npt.NDArray[np.float32]) -> llama_cpp.llama_token_data_array:
        size = len(ids)
        buffer = self._buffer
        buffer["id"][:size] = ids
        buffer["logit"][:size] = values
        buffer["p"][:size] = 0.0
        array = self._array
        array.size = size
        array.selected = -1
        array.sorted = False
        return array

    def _penalise(self, chain: llama_cpp.llama_sampler_p, array: llama_cpp.llama_token_data_array) -> None:
        llama_cpp.llama_sampler_apply(llama_cpp.llama_sampler_chain_get(chain, 0), ctypes.byref(array))

    def _greedy(self, chain: llama_cpp.llama_sampler_p, logits: npt.NDArray[np.float32]) -> int | None:
        if self._window is None or not self._window.counts:
            best = int(logits.argmax())
            peak = logits[best]
        else:
            ids = self._window.ids()
            if len(ids) > len(self._buffer):
                return None  # a window longer than the buffer (num_ctx > 4096, repeat_last_n -1)
            raw = logits[ids]  # a copy, to put back
            array = self._load(ids, raw)
            self._penalise(chain, array)
            logits[ids] = self._buffer["logit"][: len(ids)]
            best = int(logits.argmax())
            peak = logits[best]
            logits[ids] = raw
        # np.argmax stops at a NaN, llama.cpp's comparisons skip it: leave such logits to it.
        return None if np.isnan(peak) else best

    def _top(self, chain: llama_cpp.llama_sampler_p, logits: npt.NDArray[np.float32], k: int) -> int | None:
        window = self._window
        penalised = len(window.counts) if window is not None else 0
        wanted = k + penalised  # candidates the threshold must let through
        columns = self._columns
        if wanted * 2 > columns:
            return None  # too few groups to narrow the vocabulary much
        # Groups are the columns of the vocabulary laid out in GROUP rows (a reduction down
        # the rows is one fast pass), the last few ids that fill no column a group of their own.
        grid = logits[: self._gridded].reshape(GROUP, columns)
        maxima = grid.max(axis=0)
        tail = logits[self._gridded :]
        if len(tail):
            maxima = np.append(maxima, tail.max())
        if np.isnan(maxima).any():
            return None
        threshold = np.partition(maxima, len(maxima) - wanted)[len(maxima) - wanted]
        # Only the groups whose maximum reaches the threshold hold candidates.
        held = np.flatnonzero(maxima[:columns] >= threshold)
        within = np.flatnonzero(grid.take(held, axis=1) >= threshold)
        ids = (within // len(held)) * columns + held[within % len(held)]
        if len(tail):
            ids = np.concatenate((ids, self._gridded + np.flatnonzero(tail >= threshold)))
        if len(ids) > len(self._buffer):
            return None  # many equal logits (or -inf): nothing to gain
        array = self._load(ids, logits[ids])
        if penalised:
            self._penalise(chain, array)
        values = self._buffer["logit"][: len(ids)]
        top = -np.sort(-values)[: k + 1]
        if not (top[:-1] > top[1:]).all():
            return None  # equal logits among the top k + 1: their order is the full sort's
        llama_cpp.llama_sampler_apply(llama_cpp.llama_sampler_chain_get(chain, 1), ctypes.byref(array))
        selected = array.selected
        assert 0 <= selected < array.size, "the chain selected no token"
        return int(self._buffer["id"][selected])
