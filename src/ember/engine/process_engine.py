"""An Engine whose model lives in a worker process (ember.engine.worker), one per model.

The server side is three small parts: a writer thread that sends requests, a
reader thread that receives the worker's messages and hands each to the
event loop of the request it belongs to, and the async methods of the
Engine protocol. If the worker dies, the reader sees the socket close,
fails every request in flight with ServiceUnavailable(code="worker_died")
and the engine reports itself dead (`alive`); the server process carries on.

Tokenization never crosses the socket: the server loads the model's
vocabulary only (vocab_only, no weights) and tokenizes locally, so it never
waits behind a long decode step. The same vocabulary compiles a request's
grammar before the request is sent: a grammar llama.cpp refuses is a
GrammarError (400) from `generate` before its first event, not a failure
reported by the worker after the response has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import llama_cpp

import ember
from ember.engine.grammar import GrammarCompiler
from ember.engine.ipc import (
    Cancel,
    Embed,
    Embedded,
    Fatal,
    FromWorker,
    Generate,
    Load,
    LoadFailed,
    Ready,
    RequestFailed,
    Shutdown,
    Step,
    ToWorker,
    Update,
    socket_pair,
)
from ember.engine.sampling import tokenize
from ember.engine.types import EmbeddingResult, GenerationEvent, GenerationRequest, LoadOptions
from ember.errors import BadRequest, ContextLengthExceeded, EmberError, ModelLoadFailed, ServiceUnavailable

STOP_TIMEOUT = 5.0  # seconds a worker gets to exit after Shutdown before it is terminated
_INLINE_TOKENIZE_CHARS = 2048  # longer texts are tokenized on a thread, off the event loop
_INLINE_GRAMMAR_CHARS = 16384  # larger grammars are compiled (the first time) on a thread


class Vocabulary:
    """The model's tokenizer, loaded in the server process without its weights."""

    def __init__(self, path: Path) -> None:
        # llama-cpp-python prints llama.cpp's whole load log to stderr unless its
        # logger is raised (as Llama(verbose=False) does); respect a level set on purpose.
        cpp_logger = logging.getLogger("llama-cpp-python")
        if cpp_logger.level == logging.NOTSET:
            cpp_logger.setLevel(logging.ERROR)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadFailed(f"could not read the vocabulary of {path.name}")
        self._model: llama_cpp.llama_model_p | None = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._grammars = GrammarCompiler(self._vocab)

    def check_grammar(self, gbnf: str) -> None:
        """GrammarError unless llama.cpp compiles the grammar for this vocabulary (cached per text)."""
        if self._model is None:
            raise ServiceUnavailable("the model was unloaded")
        self._grammars.check(gbnf)

    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        if self._model is None:
            raise ServiceUnavailable("the model was unloaded")
        return tokenize(self._vocab, text, add_special=add_special, parse_special=parse_special)

    def close(self) -> None:
        if self._model is not None:
            self._grammars.close()
            llama_cpp.llama_model_free(self._model)
            self._model = None


# What a request's queue holds: its text updates, its embedding answer, or why it failed.
Item = Update | Embedded | RequestFailed | BaseException


@dataclass(frozen=True)
class _Sink:
    """Where one request's messages go: a queue read on the loop that awaits them."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Item]


def _put_all(items: list[tuple[_Sink, Item]]) -> None:
    for sink, item in items:
        sink.queue.put_nowait(item)


def _post(deliveries: list[tuple[_Sink, Item]]) -> None:
    """Hand items to their requests' event loops: one wake-up per loop, not per item."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Sink, Item]]] = {}
    for sink, item in deliveries:
        by_loop.setdefault(sink.loop, []).append((sink, item))
    for loop, batch in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_put_all, batch)


def _merge_ready(item: Item, pending: asyncio.Queue[Item]) -> Item:
    """Fold the text updates already queued behind `item` into one.

    A consumer slower than the model (a slow client) then gets fewer, longer
    events instead of falling further behind one token at a time. A failure
    queued behind text wins: the stream ends in that error either way.
    """
    while isinstance(item, Update) and item.finish is None and item.error is None and not pending.empty():
        following = pending.get_nowait()
        if not isinstance(following, Update):
            return following
        item = item.then(following)
    return item


def _describe_exit(returncode: int | None, fatal: str | None) -> str:
    if fatal:
        return f"error: {fatal.strip().splitlines()[-1]}"
    if returncode is None:
        return "connection lost"
    if returncode < 0:
        try:
            return f"killed by signal {-returncode} ({signal.Signals(-returncode).name})"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class _Channel:
    """The server's end of one worker: process, socket, threads, requests in flight."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.name = name
        self.process = process
        self._conn = conn
        self._lock = threading.Lock()
        self._sinks: dict[int, _Sink] = {}
        self._ids = itertools.count(1)
        self._outgoing: queue.SimpleQueue[ToWorker | None] = queue.SimpleQueue()
        self._fatal: str | None = None
        self.failure: tuple[str, str] | None = None  # (message, code) once the worker is gone
        # Set the moment the socket closes, before the exit status is read: until `failure` is
        # set, Popen.poll() from another thread says "running" while this thread's wait() holds
        # its lock, and a request could be handed to a worker that is already dead.
        self.gone = False
        self.closing = False
        self.memory_bytes = 0
        self._reader = threading.Thread(target=self._read, name=f"ember-worker-read-{name}", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"ember-worker-write-{name}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    # --- requests ------------------------------------------------------------

    def open_request(self) -> tuple[int, _Sink]:
        sink = _Sink(loop=asyncio.get_running_loop(), queue=asyncio.Queue())
        with self._lock:
            if self.failure is not None:
                raise ServiceUnavailable(self.failure[0], code=self.failure[1])
            rid = next(self._ids)
            self._sinks[rid] = sink
        return rid, sink

    def close_request(self, rid: int) -> None:
        with self._lock:
            self._sinks.pop(rid, None)

    def send(self, message: ToWorker) -> None:
        """Queue a message for the writer thread: never blocks the event loop on a full socket."""
        self._outgoing.put(message)

    # --- threads -------------------------------------------------------------

    def _write(self) -> None:
        while True:
            message = self._outgoing.get()
            if message is None:
                return
            try:
                self._conn.send(message)
            except (OSError, ValueError):
                return  # the worker is gone; the reader reports it

    def _read(self) -> None:
        try:
            while True:
                self._dispatch(self._conn.recv())
        except (EOFError, OSError):
            pass
        except Exception as exc:  # an unreadable message: treat the worker as lost
            self._fatal = f"unreadable message from the worker: {exc!r}"
        self._worker_gone()

    def _dispatch(self, message: FromWorker) -> None:
        if isinstance(message, Step):
            self._route([(update.rid, update) for update in message.updates])
        elif isinstance(message, Embedded | RequestFailed):
            if isinstance(message, Embedded):
                self.memory_bytes = message.memory_bytes
            self._route([(message.rid, message)])
        elif isinstance(message, Fatal):
            self._fatal = message.message

    def _route(self, items: Sequence[tuple[int, Item]]) -> None:
        with self._lock:
            # A missing sink is a request that was cancelled: its text is moot.
            deliveries = [(self._sinks[rid], item) for rid, item in items if rid in self._sinks]
        _post(deliveries)

    def _worker_gone(self) -> None:
        self.gone = True
        self._outgoing.put(None)  # stop the writer
        if self.closing:
            failure = (f"the model {self.name} was unloaded", "model_unloaded")
        else:
            try:
                returncode: int | None = self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # socket closed but the process lingers
                self.process.kill()
                returncode = self.process.wait()
            reason = _describe_exit(returncode, self._fatal)
            failure = (f"the model worker for {self.name} exited unexpectedly ({reason})", "worker_died")
        with self._lock:
            self.failure = failure
            sinks = list(self._sinks.values())
            self._sinks.clear()
        # One exception object per request: they are raised in different tasks.
        _post([(sink, ServiceUnavailable(failure[0], code=failure[1])) for sink in sinks])

    # --- shutdown ------------------------------------------------------------

    def shutdown(self) -> None:
        """Blocking: ask the worker to exit, then insist; wait for both threads."""
        self.closing = self.failure is None
        self.send(Shutdown())
        _stop_process(self.process)
        self._outgoing.put(None)
        self._reader.join(timeout=STOP_TIMEOUT)
        self._writer.join(timeout=STOP_TIMEOUT)
        self._conn.close()


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        process.terminate()
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _release(process: subprocess.Popen[bytes], vocabulary: Vocabulary) -> None:
    """Last resort when an engine is garbage-collected without close()."""
    if process.poll() is None:
        process.kill()
        process.wait()
    vocabulary.close()


class ProcessEngine:
    """Engine over a worker process; see the Engine protocol for the contract."""

    def __init__(self, channel: _Channel, vocabulary: Vocabulary, ready: Ready) -> None:
        self._channel = channel
        self._vocabulary = vocabulary
        self._context_length = ready.context_length
        self._slots = ready.slots
        self.worker_load_seconds = ready.load_seconds
        channel.memory_bytes = ready.memory_bytes
        self._closed = False
        self._finalizer = weakref.finalize(self, _release, channel.process, vocabulary)

    @property
    def context_length(self) -> int:
        return self._context_length

    @property
    def memory_bytes(self) -> int:
        return self._channel.memory_bytes

    @property
    def parallel(self) -> int:
        """Requests decoded together; more wait in the worker for a free slot."""
        return self._slots

    @property
    def pid(self) -> int:
        return self._channel.process.pid

    @property
    def alive(self) -> bool:
        """False once the worker has exited (crash or close): drop the engine, load anew."""
        channel = self._channel
        return not self._closed and not channel.gone and channel.failure is None and channel.process.poll() is None

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        if len(text) <= _INLINE_TOKENIZE_CHARS:
            return self._vocabulary.tokenize(text, add_special, parse_special)
        return await asyncio.to_thread(self._vocabulary.tokenize, text, add_special, parse_special)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        self._check_open()
        if not request.prompt_tokens:
            raise BadRequest("the prompt is empty")
        if min(request.prompt_tokens) < 0 or max(request.prompt_tokens) >= self._vocabulary.size:
            raise BadRequest(f"the prompt has token ids outside the vocabulary (0..{self._vocabulary.size - 1})")
        if request.grammar is not None:
            if len(request.grammar) <= _INLINE_GRAMMAR_CHARS:
                self._vocabulary.check_grammar(request.grammar)
            else:
                await asyncio.to_thread(self._vocabulary.check_grammar, request.grammar)
        channel = self._channel
        rid, sink = channel.open_request()
        channel.send(Generate(rid=rid, request=request))
        finished = False
        try:
            while True:
                item = _merge_ready(await sink.queue.get(), sink.queue)
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                assert isinstance(item, Update)
                if item.error is not None:
                    finished = True
                    raise EmberError(item.error)
                if item.text or item.logprobs:
                    yield GenerationEvent(text=item.text, logprobs=item.logprobs)
                if item.finish is not None:
                    finished = True
                    yield GenerationEvent(
                        text="",
                        done=True,
                        finish_reason=item.finish,
                        stats=item.stats,
                        stop_sequence=item.stop_sequence,
                    )
                    return
        finally:
            channel.close_request(rid)
            if not finished and channel.failure is None:
                # The consumer closed the stream early: free the slot at the next step.
                channel.send(Cancel(rid=rid))

    async def embed(self, texts: list[str], *, truncate: bool = True) -> EmbeddingResult:
        self._check_open()
        channel = self._channel
        rid, sink = channel.open_request()
        channel.send(Embed(rid=rid, texts=list(texts), truncate=truncate))
        try:
            item = await sink.queue.get()
        finally:
            channel.close_request(rid)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, RequestFailed):
            if item.too_long:
                raise ContextLengthExceeded(item.message, param="input")
            raise EmberError(item.message)
        assert isinstance(item, Embedded)
        return item.result

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._channel.shutdown)
        self._vocabulary.close()
        self._finalizer.detach()

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the model was unloaded", code="model_unloaded")
        failure = self._channel.failure
        if failure is not None:
            raise ServiceUnavailable(failure[0], code=failure[1])


class ProcessEngineLoader:
    """Starts one worker process per load.

    With spare=True it keeps one worker started ahead, its imports done, so a
    load skips the interpreter's start (about 0.3 s here).
    """

    def __init__(self, *, spare: bool = False, profile_steps: bool = False) -> None:
        self._keep_spare = spare
        self._profile_steps = profile_steps
        self._spare: _Spawned | None = None
        self._lock = threading.Lock()
        self._closed = False
        if spare:
            self._refill()

    def _refill(self) -> None:
        def spawn() -> None:
            try:
                spawned = _spawn("a spare worker")
            except ModelLoadFailed:
                return  # loads will start their own worker, and say why if that fails too
            with self._lock:
                keep = not self._closed and self._spare is None
                if keep:
                    self._spare = spawned
            if not keep:
                _discard_spawned(spawned)

        threading.Thread(target=spawn, name="ember-spare-worker", daemon=True).start()

    def _take_spare(self) -> _Spawned | None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None and spare.process.poll() is not None:
            _discard_spawned(spare)
            return None
        return spare

    async def close(self) -> None:
        """Stop the spare worker; loaded engines are closed by their owners."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            await asyncio.to_thread(_discard_spawned, spare)

    async def load(self, path: Path, options: LoadOptions, *, name: str | None = None) -> ProcessEngine:
        """`name` only labels messages (the scheduler's model name); the file's stem otherwise."""
        label = name or path.stem
        # The worker loads the weights while this process reads the vocabulary.
        spare = self._take_spare()
        if self._keep_spare and not self._closed:
            self._refill()
        starting = asyncio.ensure_future(
            asyncio.to_thread(_start_worker, path, options, label, spare, profile_steps=self._profile_steps)
        )
        reading = asyncio.ensure_future(asyncio.to_thread(Vocabulary, path))
        try:
            await asyncio.wait({starting, reading})
        except asyncio.CancelledError:
            # The threads cannot be interrupted: tidy up whatever they produce.
            starting.add_done_callback(_discard_worker)
            reading.add_done_callback(_discard_vocabulary)
            raise
        if starting.exception() is not None or reading.exception() is not None:
            _discard_worker(starting)
            _discard_vocabulary(reading)
            error = starting.exception() or reading.exception()
            assert error is not None
            raise error
        channel, ready = starting.result()
        return ProcessEngine(channel, reading.result(), ready)


def _discard_worker(task: asyncio.Future[tuple[_Channel, Ready]]) -> None:
    if not task.cancelled() and task.exception() is None:
        threading.Thread(target=task.result()[0].shutdown, name="ember-worker-discard", daemon=True).start()


def _discard_vocabulary(task: asyncio.Future[Vocabulary]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()


def _worker_env() -> dict[str, str]:
    """The server's environment, with ember importable even from an uninstalled source tree."""
    env = dict(os.environ)
    source_root = str(Path(ember.__file__).resolve().parent.parent)
    parts = [source_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


@dataclass
class _Spawned:
    """A worker process that has started (and imports) but has not been told what to load."""

    process: subprocess.Popen[bytes]
    conn: Connection


def _spawn(name: str) -> _Spawned:
    """A plain subprocess, not multiprocessing: nothing of the server (its event
    loop, its threads, its __main__) is forked or re-imported in the worker."""
    conn, theirs = socket_pair()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember.engine.worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_worker_env(),
        )
    except OSError as exc:
        conn.close()
        raise ModelLoadFailed(f"could not start a worker for {name}: {exc}") from exc
    finally:
        theirs.close()  # the worker holds its own copy; ours would hide its death from us
    return _Spawned(process, conn)


def _discard_spawned(spawned: _Spawned) -> None:
    spawned.conn.close()  # an unloaded worker exits when its socket closes
    _stop_process(spawned.process)


def _start_worker(
    path: Path, options: LoadOptions, name: str, spawned: _Spawned | None = None, *, profile_steps: bool = False
) -> tuple[_Channel, Ready]:
    """Blocking: start the worker (or use a spare one) and wait for its Ready; ModelLoadFailed otherwise."""
    spawned = spawned or _spawn(name)
    process, conn = spawned.process, spawned.conn
    try:
        conn.send(Load(path=path, options=options, profile_steps=profile_steps))
        reply = conn.recv()
    except (EOFError, OSError):
        reply = None
    except BaseException:
        process.kill()
        process.wait()
        conn.close()
        raise
    if isinstance(reply, Ready):
        channel = _Channel(name, process, conn)
        channel.start()
        return channel, reply
    _stop_process(process)
    conn.close()
    if isinstance(reply, LoadFailed):
        raise ModelLoadFailed(reply.message)
    raise ModelLoadFailed(
        f"could not load {path.name}: the worker exited while loading ({_describe_exit(process.returncode, None)})"
    )
