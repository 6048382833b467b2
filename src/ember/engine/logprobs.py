"""Log probabilities of sampled tokens, read from the logits of the decode that produced them.

What a logprob means here: the log-softmax of the model's RAW logits at that position, before
penalties, temperature, top-k/p or a grammar touch them, as llama-server reports its `n_probs`
(so the numbers describe the model, not the request's sampler; at temperature 0 with no penalty
the sampled token is the top-1 alternative). Every value is <= 0 and finite (>= FLOOR).

Cost: nothing unless a request asks. When it does, one pass over the vocabulary per token
(exp in float32 after subtracting the maximum, so it cannot overflow, summed in float64) plus
an O(n) partition for the top-k; ~0.2 ms for a 49k vocabulary.

Token text: the token's bytes with special tokens rendered ("<|im_end|>" shows as itself among
the alternatives), the string being those bytes decoded with errors="replace" (a token that
ends inside a UTF-8 character shows U+FFFD; its `bytes` are exact).
"""

from __future__ import annotations

import ctypes
import math

import llama_cpp
import numpy as np
import numpy.typing as npt

from ember.engine.types import TokenLogprob, TopLogprob

MAX_TOP = 20  # OpenAI's limit on top_logprobs, checked again at the API edge
FLOOR = -9999.0  # what OpenAI reports for a token of no measurable probability; JSON has no -inf
_PIECE_BUFFER = 256


def log_softmax_at(logits: npt.NDArray[np.float32], token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log probability of `token` and the `top` likeliest (token, logprob), most likely first.

    Equal logits among the top are ordered by token id, so the order does not depend on the
    partition's whims.
    """
    peak = float(logits.max())
    log_total = float(np.log(np.exp(logits - np.float32(peak)).sum(dtype=np.float64)))

    def logprob(value: float) -> float:
        lp = (value - peak) - log_total
        if not math.isfinite(lp):  # a -inf (or broken) logit: OpenAI's "as good as impossible"
            return FLOOR
        # Rounding (and -0.0) never makes a probability above 1.
        return 0.0 if lp >= 0.0 else max(lp, FLOOR)

    chosen = logprob(float(logits[token]))
    top = max(0, min(top, MAX_TOP, logits.shape[0]))
    if top == 0:
        return chosen, []
    ids = np.argpartition(logits, -top)[-top:]
    # Most likely first; equal logits by token id (lexsort: the last key is the primary one).
    ids = ids[np.lexsort((ids, -logits[ids]))]
    return chosen, [(int(i), logprob(float(logits[i]))) for i in ids]


class LogprobReader:
    """Turns one output row of the last decode into a TokenLogprob (worker and in-process engine)."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p) -> None:
        self._vocab = vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        self._buffer = ctypes.create_string_buffer(_PIECE_BUFFER)
        self._pieces: dict[int, tuple[str, tuple[int, ...]]] = {}

    def read(self, ctx: llama_cpp.llama_context_p, index: int, token: int, top: int) -> TokenLogprob:
        """The entry of `token`, sampled from output `index` of the last decode (-1: the last output).

        Call it before the next decode: that overwrites the logits.
        """
        pointer = llama_cpp.llama_get_logits_ith(ctx, index)
        if not pointer:
            raise RuntimeError(f"no logits for output {index} of the last decode")
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))  # a view, no copy
        chosen, alternatives = log_softmax_at(logits, token, top)
        text, data = self._piece(token)
        top_entries = []
        for alternative, lp in alternatives:
            alt_text, alt_data = self._piece(alternative)
            top_entries.append(TopLogprob(token=alt_text, logprob=lp, bytes=alt_data))
        return TokenLogprob(token=text, logprob=chosen, bytes=data, top=tuple(top_entries))

    def _piece(self, token: int) -> tuple[str, tuple[int, ...]]:
        """(text, bytes) of one token, special tokens rendered; cached, as the same few recur."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._buffer, _PIECE_BUFFER, 0, True)
        if n < 0:  # longer than the buffer: ask again with the size it reported
            big = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, big, -n, 0, True)
            data = big.raw[:n]
        else:
            data = self._buffer.raw[:n]
        piece = (data.decode("utf-8", errors="replace"), tuple(data))
        self._pieces[token] = piece
        return piece
