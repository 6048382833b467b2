"""The model worker: one process per loaded model, started as `python -m ember.engine.worker FD`.

It owns the llama.cpp model and contexts, so a crash in native code (or the
OOM killer) takes down this process and its requests only, never the server.
It reads messages between decode steps and never blocks on the server while
it has work: generated text waits in an outbox while the socket is full.

Protocol (see ember.engine.ipc): the server sends Load, the worker answers
Ready or LoadFailed; then Generate/Cancel/Embed in, Step/Embedded/RequestFailed
out, until Shutdown or the server's end of the socket closes. Park (the model was
unloaded and the server keeps this worker as a pre-loaded spare) clears every
request and the whole KV cache, answers Parked, and the next engine's requests
follow on the same socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import llama_cpp

from ember.engine.batching import BatchConfig, BatchScheduler
from ember.engine.embedding import Embedder, InputTooLong
from ember.engine.ipc import (
    Cancel,
    Embed,
    Embedded,
    Fatal,
    Generate,
    Load,
    LoadFailed,
    Park,
    Parked,
    Ready,
    RequestFailed,
    Shutdown,
    Step,
    ToWorker,
    Update,
    connection_from_fd,
)
from ember.engine.types import LoadOptions

BATCH_TOKENS = 512  # llama.cpp's default n_batch: the most tokens one decode step reads
_BUFFER_LINE = re.compile(r"buffer size\s*=\s*([0-9.]+)\s*MiB")
_GGML_LOG_WARN = 3


class LoadError(Exception):
    pass


@dataclass
class LlamaLog:
    """Receives llama.cpp's log instead of stderr: keeps recent warnings and buffer sizes.

    The warnings explain a failed load ("tensor ... is not within the file
    bounds"); the buffer sizes are llama.cpp's own account of what it
    allocated, the honest figure for memory_bytes.
    """

    problems: deque[str] = field(default_factory=lambda: deque(maxlen=8))
    buffer_bytes: int = 0

    def install(self) -> None:
        # Kept on self: ctypes would free the trampoline if nothing referenced it.
        self._callback = llama_cpp.llama_log_callback(self._on_log)
        llama_cpp.llama_log_set(self._callback, None)

    def _on_log(self, level: int, text: bytes, _user_data: object) -> None:
        line = text.decode("utf-8", errors="replace").strip()
        if not line:
            return
        match = _BUFFER_LINE.search(line)
        if match:
            self.buffer_bytes += int(float(match.group(1)) * 1024 * 1024)
        elif level >= _GGML_LOG_WARN:
            self.problems.append(line)

    def explain(self) -> str:
        errors = [p.split(": ", 1)[-1] for p in self.problems if "error" in p.lower()]
        return errors[0] if errors else (self.problems[-1] if self.problems else "")


@dataclass
class Model:
    """The loaded model and its generation context."""

    model: llama_cpp.llama_model_p
    ctx: llama_cpp.llama_context_p
    options: LoadOptions
    threads: int

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


def load_model(load: Load, log: LlamaLog) -> Model:
    options = load.options
    if options.num_parallel < 1 or options.num_parallel > llama_cpp.llama_max_parallel_sequences():
        raise LoadError(f"num_parallel must be between 1 and {llama_cpp.llama_max_parallel_sequences()}")
    llama_cpp.llama_backend_init()
    threads = options.num_thread or os.cpu_count() or 1
    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = options.num_gpu
    model = llama_cpp.llama_model_load_from_file(str(load.path).encode(), model_params)
    if not model:
        reason = log.explain() or "llama.cpp could not read it"
        raise LoadError(f"could not load {load.path.name}: {reason}")
    params = llama_cpp.llama_context_default_params()
    # Every slot gets num_ctx cells of its own: a non-unified cache splits n_ctx
    # evenly between the n_seq_max sequences, and is faster than a unified one
    # when the sequences share little.
    params.n_ctx = options.num_ctx * options.num_parallel
    params.n_seq_max = options.num_parallel
    params.kv_unified = False
    params.n_batch = params.n_ubatch = BATCH_TOKENS
    # One sampled position per slot per step: sizing the output buffers for that
    # rather than for n_batch saves ~80 MB of compute buffer on a 49k vocabulary.
    params.n_outputs_max = options.num_parallel
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    # llama.cpp's default (on where the backend has it, as on CPU). Besides being
    # fast, its CPU kernel gives the same logits for a token whether it is decoded
    # alone, with a cached prefix, or next to other sequences; without it a prompt
    # read with a cached prefix moved logits by up to ~0.5 on SmolLM2, so answers
    # would depend on what happened to be in the cache.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
    ctx = llama_cpp.llama_init_from_model(model, params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise LoadError(f"could not create a context for {load.path.name}: {log.explain() or 'out of memory?'}")
    return Model(model=model, ctx=ctx, options=options, threads=threads)


class Outbox:
    """Generated text not yet sent, merged per request.

    While the server reads fast, each step's text leaves at once, in one
    message. When it falls behind (the socket is full) text piles up here and
    leaves as one bigger chunk per request, so the decode loop never waits.
    """

    def __init__(self) -> None:
        self._pending: dict[int, Update] = {}

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, updates: list[Update]) -> None:
        for update in updates:
            before = self._pending.get(update.rid)
            if before is not None:
                update = before.then(update)
            self._pending[update.rid] = update

    def flush(self, conn: Connection, *, wait: bool) -> None:
        if not self._pending:
            return
        if not wait and not select.select([], [conn.fileno()], [], 0)[1]:
            return
        conn.send(Step(updates=list(self._pending.values())))
        self._pending.clear()


class Worker:
    def __init__(self, conn: Connection, model: Model, log: LlamaLog, *, profile_steps: bool = False) -> None:
        self._conn = conn
        self._model = model
        self._log = log
        self._profile_steps = profile_steps
        self._scheduler = self._new_scheduler()
        self._embedder: Embedder | None = None
        self._outbox = Outbox()

    def _new_scheduler(self) -> BatchScheduler:
        model = self._model
        # llama.cpp may round the context; a slot never holds more than it really has.
        slot_context = min(model.options.num_ctx, llama_cpp.llama_n_ctx_seq(model.ctx))
        config = BatchConfig(
            slots=model.options.num_parallel,
            slot_context=slot_context,
            batch_tokens=BATCH_TOKENS,
            profile=self._profile_steps,
        )
        return BatchScheduler(model.ctx, model.model, config)

    def run(self) -> None:
        try:
            while self._receive():
                if self._scheduler.busy:
                    self._outbox.add(self._scheduler.step())
                self._outbox.flush(self._conn, wait=False)
        finally:
            self._scheduler.close()
            if self._embedder is not None:
                self._embedder.close()
            self._model.close()

    def _receive(self) -> bool:
        """Handle every message waiting; block only when there is nothing else to do.

        False when it is time to exit (Shutdown, or the server went away).
        """
        fd = self._conn.fileno()
        while True:
            idle = not self._scheduler.busy
            writes = [fd] if self._outbox else []
            readable, writable, _ = select.select([fd], writes, [], None if idle else 0)
            if writable:
                self._outbox.flush(self._conn, wait=True)
            if not readable:
                return True
            try:
                message: ToWorker = self._conn.recv()
            except (EOFError, OSError):
                return False  # the server is gone: nobody to generate for
            if not self._handle(message):
                return False

    def _handle(self, message: ToWorker) -> bool:
        if isinstance(message, Generate):
            done = self._scheduler.submit(message.rid, message.request)
            if done is not None:
                self._outbox.add([done])
        elif isinstance(message, Cancel):
            self._scheduler.cancel(message.rid)
        elif isinstance(message, Embed):
            self._embed(message)
        elif isinstance(message, Park):
            self._park()
        elif isinstance(message, Shutdown):
            return False
        return True

    def _park(self) -> None:
        """Become a spare that holds the model: no request, no cached prompt, no unsent text."""
        self._scheduler.close()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._model.ctx), True)
        self._scheduler = self._new_scheduler()
        self._outbox = Outbox()
        self._conn.send(Parked())

    def _embed(self, message: Embed) -> None:
        try:
            if self._embedder is None:
                self._embedder = Embedder(self._model.model, self._model.threads)
            result = self._embedder.embed(message.texts, truncate=message.truncate)
        except InputTooLong as exc:
            self._conn.send(RequestFailed(rid=message.rid, message=str(exc), too_long=True))
            return
        except Exception as exc:  # reported to the one request; the worker carries on
            self._conn.send(RequestFailed(rid=message.rid, message=f"embedding failed: {exc}"))
            return
        self._conn.send(Embedded(rid=message.rid, result=result, memory_bytes=self._memory_bytes()))

    def _memory_bytes(self) -> int:
        return memory_bytes(self._model.options, self._log, self._model.model)


def memory_bytes(options: LoadOptions, log: LlamaLog, model: llama_cpp.llama_model_p) -> int:
    """What llama.cpp says it allocated; a computed estimate if it said nothing."""
    if log.buffer_bytes:
        return log.buffer_bytes
    layers = llama_cpp.llama_model_n_layer(model)
    heads = max(1, llama_cpp.llama_model_n_head(model))
    kv_heads = llama_cpp.llama_model_n_head_kv(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // heads
    kv = 2 * 2 * options.num_ctx * options.num_parallel * layers * kv_heads * head_dim  # f16 K and V
    return llama_cpp.llama_model_size(model) + kv


def _log_steps_to_stderr() -> None:
    """The step profile goes where the server's own lines go (the worker shares its stderr)."""
    logger = logging.getLogger("ember.engine")
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


def main(argv: list[str]) -> int:
    # Ctrl+C in a terminal reaches the whole process group; the server decides
    # when its workers stop (Shutdown, or closing the socket).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = connection_from_fd(int(argv[0]))
    log = LlamaLog()
    log.install()
    try:
        load = conn.recv()
    except (EOFError, OSError):
        return 0
    assert isinstance(load, Load)
    started = time.perf_counter()
    try:
        model = load_model(load, log)
    except LoadError as exc:
        conn.send(LoadFailed(message=str(exc)))
        return 1
    except Exception as exc:  # anything else while loading is still a failed load, with a reason
        conn.send(LoadFailed(message=f"could not load {load.path.name}: {exc!r}"))
        return 1
    conn.send(
        Ready(
            context_length=min(load.options.num_ctx, llama_cpp.llama_n_ctx_seq(model.ctx)),
            memory_bytes=memory_bytes(load.options, log, model.model),
            slots=load.options.num_parallel,
            load_seconds=time.perf_counter() - started,
        )
    )
    try:
        if load.profile_steps:
            _log_steps_to_stderr()
        Worker(conn, model, log, profile_steps=load.profile_steps).run()
    except Exception:  # tell the server why before going; it fails the requests in flight
        with contextlib.suppress(OSError):
            conn.send(Fatal(message=traceback.format_exc(limit=5)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
