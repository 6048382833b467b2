"""Embeddings inside the worker: a second llama.cpp context with mean pooling.

Created on the first embedding request, so a model only ever used for chat
never pays for it. The inputs of one request are packed into as few decodes
as fit (one sequence per input), and each vector is L2-normalised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import llama_cpp

from ember.engine.sampling import tokenize
from ember.engine.types import EmbeddingResult

EMBED_CONTEXT = 2048  # inputs past this many tokens are truncated, as Ollama's truncate=true does
EMBED_SEQUENCES = 16  # inputs decoded together at most


class InputTooLong(ValueError):
    """An input is longer than the embedding context, and the request asked not to cut it."""


def check_lengths(lengths: list[int], n_ctx: int) -> None:
    """Raise InputTooLong for the first input past n_ctx tokens (truncate=False)."""
    for i, n in enumerate(lengths):
        if n > n_ctx:
            which = "the input" if len(lengths) == 1 else f"input[{i}]"
            raise InputTooLong(
                f"{which} is {n} tokens, but the embedding context is {n_ctx} tokens; "
                "shorten it, or send truncate: true to cut it to fit"
            )


@dataclass
class _Packed:
    tokens: list[list[int]]
    total: int


class Embedder:
    def __init__(self, model: llama_cpp.llama_model_p, threads: int) -> None:
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_embd = llama_cpp.llama_model_n_embd(model)
        self._n_ctx = min(EMBED_CONTEXT, llama_cpp.llama_model_n_ctx_train(model) or EMBED_CONTEXT)
        self._max_seqs = min(EMBED_SEQUENCES, llama_cpp.llama_max_parallel_sequences())
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self._n_ctx
        # The whole packed input in one ubatch: pooling works per decode.
        params.n_batch = params.n_ubatch = self._n_ctx
        params.n_seq_max = self._max_seqs
        params.kv_unified = True  # sequences of very different lengths share one pool of cells
        params.embeddings = True
        params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create the embedding context")
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(self._n_ctx, 0, 1)

    def embed(self, texts: list[str], *, truncate: bool = True) -> EmbeddingResult:
        """truncate: cut each input to the embedding context; False: raise InputTooLong instead."""
        tokens = [tokenize(self._vocab, text, add_special=True, parse_special=False) for text in texts]
        if not truncate:
            check_lengths([len(t) for t in tokens], self._n_ctx)
        inputs = [t[: self._n_ctx] for t in tokens]
        vectors: list[list[float]] = [[0.0] * self._n_embd for _ in inputs]
        order = [i for i, tokens in enumerate(inputs) if tokens]  # an empty input has no vector to pool
        for group in self._pack(order, inputs):
            for i, pooled in zip(group, self._decode([inputs[i] for i in group]), strict=True):
                vectors[i] = pooled
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(t) for t in inputs))

    def _pack(self, order: list[int], inputs: list[list[int]]) -> list[list[int]]:
        groups: list[list[int]] = []
        current: list[int] = []
        used = 0
        for i in order:
            size = len(inputs[i])
            if current and (used + size > self._n_ctx or len(current) == self._max_seqs):
                groups.append(current)
                current, used = [], 0
            current.append(i)
            used += size
        if current:
            groups.append(current)
        return groups

    def _decode(self, sequences: list[list[int]]) -> list[list[float]]:
        llama_cpp.llama_memory_clear(self._memory, True)
        batch = self._batch
        n = 0
        for seq, tokens in enumerate(sequences):
            for pos, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = pos
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                batch.logits[n] = 1
                n += 1
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} while embedding")
        pooled: list[list[float]] = []
        for seq in range(len(sequences)):
            data = llama_cpp.llama_get_embeddings_seq(self._ctx, seq)
            if not data:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            vector = [float(data[k]) for k in range(self._n_embd)]
            norm = math.sqrt(sum(x * x for x in vector))
            pooled.append([x / norm for x in vector] if norm > 0 else vector)
        return pooled

    def close(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
