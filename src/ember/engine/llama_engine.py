"""An engine over llama-cpp-python's Llama object, run in-process on its own thread.

One generation runs at a time per model; others wait their turn in arrival order.
This is the foundation engine: the worker-process engine with continuous
batching replaces it behind the same Engine interface.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp

from ember.engine.constrained import Candidates, GrammarSampler
from ember.engine.embedding import InputTooLong, check_lengths
from ember.engine.grammar import GrammarCompiler
from ember.engine.logprobs import LogprobReader
from ember.engine.sampling import SamplerChain
from ember.engine.text import StopMatcher, Utf8Stream
from ember.engine.types import (
    EmbeddingResult,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LoadOptions,
)
from ember.errors import ContextLengthExceeded, ModelLoadFailed
from ember.runtime.formats import kv_bytes_per_token

_EMBED_CTX = 2048  # embedding inputs past this are truncated, as Ollama's truncate=true does


def _open_llama(path: Path, options: LoadOptions, *, embedding: bool, n_ctx: int) -> llama_cpp.Llama:
    threads = options.num_thread or os.cpu_count() or 1
    kwargs: dict[str, Any] = {
        "model_path": str(path),
        "n_ctx": n_ctx,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_gpu_layers": options.num_gpu,
        "verbose": False,
    }
    if embedding:
        # Mean pooling gives one vector for causal LMs whose GGUF names no pooling.
        kwargs.update(embedding=True, n_batch=n_ctx, n_ubatch=n_ctx, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    else:
        kwargs.update(n_batch=512)
    try:
        return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadFailed(f"could not load {path.name}: {exc}") from exc


class LlamaEngine:
    """Engine over one llama.cpp context; see the Engine protocol for the contract."""

    def __init__(self, path: Path, options: LoadOptions, llama: llama_cpp.Llama) -> None:
        self._path = path
        self._options = options
        self._llama = llama
        self._vocab = llama._model.vocab
        self._logprobs = LogprobReader(self._vocab)
        self._grammars = GrammarCompiler(self._vocab)
        self._candidates = Candidates(self._vocab)  # for requests with a grammar (one at a time)
        self._generate_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-gen")
        self._embed_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ember-embed")
        self._embedder: llama_cpp.Llama | None = None
        self._closed = False
        self._memory = path.stat().st_size + _kv_cache_bytes(llama)

    @classmethod
    def open(cls, path: Path, options: LoadOptions) -> LlamaEngine:
        return cls(path, options, _open_llama(path, options, embedding=False, n_ctx=options.num_ctx))

    @property
    def context_length(self) -> int:
        return self._llama.n_ctx()

    @property
    def memory_bytes(self) -> int:
        return self._memory

    @property
    def parallel(self) -> int:
        return 1  # the high-level Llama object generates for one request at a time

    @property
    def alive(self) -> bool:
        return not self._closed

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return await asyncio.to_thread(self._llama.tokenize, text.encode("utf-8"), add_special, parse_special)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        if request.grammar is not None:
            self._grammars.check(request.grammar)  # a GrammarError before the first event
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: GenerationEvent | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        loop.run_in_executor(self._generate_thread, self._run_generation, request, emit, cancel)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            # Reached on normal end, on error, and when the client went away
            # (the consumer closes this generator): the thread stops at its next token.
            cancel.set()

    def _run_generation(
        self,
        request: GenerationRequest,
        emit: Callable[[GenerationEvent | BaseException], None],
        cancel: threading.Event,
    ) -> None:
        try:
            emit(self._generate_blocking(request, emit, cancel))
        except BaseException as exc:  # handed to the awaiting coroutine, never lost in the thread
            emit(exc)

    def _generate_blocking(
        self,
        request: GenerationRequest,
        emit: Callable[[GenerationEvent | BaseException], None],
        cancel: threading.Event,
    ) -> GenerationEvent:
        llama = self._llama
        sampling = request.sampling
        n_prompt = len(request.prompt_tokens)
        room = self.context_length - n_prompt
        limit = room if request.max_tokens is None else min(request.max_tokens, room)
        started = time.perf_counter()
        first_token_at: float | None = None
        produced = 0
        finish: FinishReason = "length"
        matched: str | None = None  # the stop string that ended the answer
        if cancel.is_set() or limit <= 0:
            finish = "cancelled" if cancel.is_set() else "length"
        else:
            # The worker's sampler chain, not Llama.generate's: that one never shows the prompt
            # to the penalties and reads repeat_last_n -1 as 0 (off) instead of "all of it".
            chain = SamplerChain.build(sampling, n_vocab=llama.n_vocab(), history=self.context_length)
            if request.grammar is not None:  # checked in generate(): it compiles
                self._candidates.prepare()
                chain.constrain(GrammarSampler(self._grammars.sampler(request.grammar)), self._candidates)
            utf8 = Utf8Stream()
            matcher = StopMatcher(request.stop)
            try:
                # Re-evaluate the whole prompt: reusing a cached prefix changes llama.cpp's
                # batch shapes and with them the last bits of the logits, so the same greedy
                # request could answer differently. Repeatable answers matter more here;
                # the batching engine brings prefix reuse back.
                llama.reset()
                llama.eval(request.prompt_tokens)
                chain.accept_history(request.prompt_tokens)
                while True:
                    token = chain.sample(llama.ctx, -1)  # from the last evaluated token's logits
                    if first_token_at is None:
                        first_token_at = time.perf_counter()
                    if cancel.is_set():
                        finish = "cancelled"
                        break
                    if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                        finish = "stop"
                        break
                    produced += 1
                    # As the worker: one entry per completion token, from the raw logits it was
                    # sampled from, sent even while the stop matcher holds its text back.
                    lps = (
                        ()
                        if request.logprobs is None
                        else (self._logprobs.read(llama.ctx, -1, token, request.logprobs),)
                    )
                    piece = llama._model.detokenize([token], special=False)
                    text = matcher.feed(utf8.feed(piece))
                    if text or lps:
                        emit(GenerationEvent(text=text, logprobs=lps))
                    if matcher.stopped:
                        finish, matched = "stop", matcher.matched
                        break
                    if produced >= limit:
                        finish = "length"
                        break
                    llama.eval([token])
            finally:
                chain.free()
            tail = matcher.feed(utf8.flush()) + matcher.flush()
            if tail and finish != "cancelled":
                emit(GenerationEvent(text=tail))
        ended = time.perf_counter()
        prompt_done = first_token_at or ended
        return GenerationEvent(
            text="",
            done=True,
            finish_reason=finish,
            stop_sequence=matched,
            stats=GenerationStats(
                prompt_tokens=n_prompt,
                completion_tokens=produced,
                prompt_eval_seconds=prompt_done - started,
                eval_seconds=ended - prompt_done,
            ),
        )

    async def embed(self, texts: list[str], *, truncate: bool = True) -> EmbeddingResult:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._embed_thread, self._embed_blocking, texts, truncate)
        except InputTooLong as exc:
            raise ContextLengthExceeded(str(exc), param="input") from exc

    def _embed_blocking(self, texts: list[str], truncate: bool) -> EmbeddingResult:
        if self._embedder is None:
            n_ctx = min(_EMBED_CTX, self._llama._model.n_ctx_train())
            self._embedder = _open_llama(self._path, self._options, embedding=True, n_ctx=n_ctx)
        if not truncate:  # counted as Llama.embed counts them, before any input is decoded
            check_lengths(
                [len(self._embedder.tokenize(text.encode("utf-8"))) for text in texts], self._embedder.n_ctx()
            )
        vectors: list[list[float]] = []
        total = 0
        # One input at a time: the batch size bounds a single input, and mean
        # pooling per sequence is what we want anyway.
        for text in texts:
            result, count = self._embedder.embed(text, normalize=True, truncate=True, return_count=True)
            vectors.append([float(x) for x in result])  # one string in, one pooled vector out
            total += count
        return EmbeddingResult(vectors=vectors, prompt_tokens=total)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._generate_thread.shutdown(wait=True, cancel_futures=True)
        self._embed_thread.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self._free)

    def _free(self) -> None:
        self._grammars.close()
        self._llama.close()
        if self._embedder is not None:
            self._embedder.close()


def _kv_cache_bytes(llama: llama_cpp.Llama) -> int:
    """f16 K and V for every layer over the whole context."""
    meta = llama.metadata
    per_token = kv_bytes_per_token(meta.get, meta.get("general.architecture", ""))
    return (per_token or 0) * llama.n_ctx()


class LlamaEngineLoader:
    async def load(self, path: Path, options: LoadOptions, *, name: str | None = None) -> LlamaEngine:
        return await asyncio.to_thread(LlamaEngine.open, path, options)

    async def close(self) -> None:
        pass  # holds nothing of its own
