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
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

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
    Park,
    Parked,
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
PARK_TIMEOUT = 5.0  # seconds a worker gets to answer Park before it is shut down instead
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
        self._parked = threading.Event()
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
            while self._dispatch(self._conn.recv()):
                pass
            return  # parked: the socket now belongs to the loader's spare, not to this channel
        except (EOFError, OSError):
            pass
        except Exception as exc:  # an unreadable message: treat the worker as lost
            self._fatal = f"unreadable message from the worker: {exc!r}"
        self._worker_gone()

    def _dispatch(self, message: FromWorker) -> bool:
        """Deliver one message; False when it was the last of this channel (Parked)."""
        if isinstance(message, Parked):
            self._parked.set()
            return False
        if isinstance(message, Step):
            self._route([(update.rid, update) for update in message.updates])
        elif isinstance(message, Embedded | RequestFailed):
            if isinstance(message, Embedded):
                self.memory_bytes = message.memory_bytes
            self._route([(message.rid, message)])
        elif isinstance(message, Fatal):
            self._fatal = message.message
        return True

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

    def park(self) -> _Spawned | None:
        """Blocking: end this channel but keep its worker, model loaded and cache cleared.

        The worker and its socket, or None (the worker was busy, gone or slow to answer:
        the caller shuts it down instead).
        """
        with self._lock:
            if self.failure is not None or self.gone or self._sinks:
                return None
        self.send(Park())
        if not self._parked.wait(PARK_TIMEOUT):
            return None
        self._outgoing.put(None)  # the writer has nothing more to send on this socket
        self._reader.join(timeout=STOP_TIMEOUT)
        self._writer.join(timeout=STOP_TIMEOUT)
        return _Spawned(self.process, self._conn)

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


# What becomes of a closed engine's worker: shut down, or kept by the loader as its spare.
Retire = Callable[["_Channel", Vocabulary, Ready], None]


def _shut_down(channel: _Channel, vocabulary: Vocabulary, _ready: Ready) -> None:
    channel.shutdown()
    vocabulary.close()


class ProcessEngine:
    """Engine over a worker process; see the Engine protocol for the contract."""

    def __init__(self, channel: _Channel, vocabulary: Vocabulary, ready: Ready, retire: Retire = _shut_down) -> None:
        self._channel = channel
        self._vocabulary = vocabulary
        self._ready = ready
        self._retire = retire
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
        self._finalizer.detach()
        await asyncio.to_thread(self._retire, self._channel, self._vocabulary, self._ready)

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceUnavailable("the model was unloaded", code="model_unloaded")
        failure = self._channel.failure
        if failure is not None:
            raise ServiceUnavailable(failure[0], code=failure[1])


SparePolicy = Literal["preload", "preload-only", "imports", "off"]


@dataclass(frozen=True)
class LoadTarget:
    """A model file and the options it is loaded with: what a pre-loaded spare holds."""

    path: Path
    options: LoadOptions


@dataclass
class _Spare:
    """A started worker; with `ready`, one that has loaded `target` (and the server its vocabulary)."""

    spawned: _Spawned
    target: LoadTarget | None = None
    ready: Ready | None = None
    vocabulary: Vocabulary | None = None

    def discard(self) -> None:
        _discard_spawned(self.spawned)
        if self.vocabulary is not None:
            self.vocabulary.close()


class ProcessEngineLoader:
    """Starts one worker process per load, and keeps a spare worker by `spare`:

    - "imports": one worker always started ahead, its imports done, so a load skips the
      interpreter's start (about 0.3 s here).
    - "preload": while no model is loaded, the spare has `preload` (the default model)
      loaded already, so the first load after start, or after that model's unload, is a
      handover of a millisecond: an unloaded model's own worker is kept (its cache cleared)
      rather than stopped, if it holds `preload`. While a model is loaded the spare is an
      imports-only one, as with "imports". A load of anything else first stops the
      pre-loaded spare, so what it holds is never counted twice against the memory budget.
    - "preload-only": as "preload", but no spare at all while a model is loaded (it would
      hold ~57 MiB only to speed up the load of another model).
    - "off": every load starts its worker.
    """

    def __init__(
        self, *, spare: SparePolicy = "off", preload: LoadTarget | None = None, profile_steps: bool = False
    ) -> None:
        self._policy = spare
        self._preload = preload if spare in ("preload", "preload-only") else None
        self._profile_steps = profile_steps
        self._lock = threading.Lock()
        # The spare, while it may still be starting or loading; None: no spare.
        self._spare: concurrent.futures.Future[_Spare | None] | None = None
        self._spare_target: LoadTarget | None = None  # what the spare is (being) loaded with
        self._resident = 0  # engines loaded and not yet closed
        self._closed = False
        if spare != "off":
            self._refill()

    def _wanted(self) -> tuple[bool, LoadTarget | None]:
        """Under the lock: whether a spare is wanted now, and what it should have loaded."""
        if self._policy == "off" or self._closed:
            return False, None
        if self._resident > 0:
            return self._policy != "preload-only", None
        return True, self._preload

    def _refill(self) -> None:
        """Make the spare what the policy wants now: start one, or replace one that holds the
        wrong thing (an imports-only spare once nothing is loaded and a preload is wanted)."""
        with self._lock:
            want, target = self._wanted()
            if self._spare is not None and self._spare_target == target:
                return
            old, self._spare, self._spare_target = self._spare, None, None
            future: concurrent.futures.Future[_Spare | None] = concurrent.futures.Future()
            if want:
                self._spare, self._spare_target = future, target
        if old is not None:
            threading.Thread(target=_discard_future, args=(old,), name="ember-spare-discard", daemon=True).start()
        if not want:
            return
        profile = self._profile_steps

        def spawn() -> None:
            try:
                future.set_result(_start_spare(target, profile_steps=profile))
            except BaseException as exc:  # the future carries it; nothing waits on this thread
                future.set_exception(exc)

        threading.Thread(target=spawn, name="ember-spare-worker", daemon=True).start()

    def _take_spare(self) -> tuple[concurrent.futures.Future[_Spare | None], LoadTarget | None] | None:
        with self._lock:
            future, target = self._spare, self._spare_target
            self._spare, self._spare_target = None, None
        return None if future is None else (future, target)

    async def close(self) -> None:
        """Stop the spare worker; loaded engines are closed by their owners."""
        with self._lock:
            self._closed = True
        taken = self._take_spare()
        if taken is not None:
            await asyncio.to_thread(_discard_future, taken[0])

    async def load(self, path: Path, options: LoadOptions, *, name: str | None = None) -> ProcessEngine:
        """`name` only labels messages (the scheduler's model name); the file's stem otherwise."""
        label = name or path.stem
        wanted = LoadTarget(path, options)
        spare: _Spare | None = None
        taken = self._take_spare()
        if taken is not None:
            future, target = taken
            if target is not None and target != wanted:
                # It holds another model's memory: free it before this one is loaded.
                await asyncio.to_thread(_discard_future, future)
            else:
                spare = await _spare_result(future)
        with self._lock:
            self._resident += 1
        try:
            engine = await self._load(wanted, label, spare)
        except BaseException:
            with self._lock:
                self._resident -= 1
            self._refill()
            raise
        self._refill()
        return engine

    async def _load(self, wanted: LoadTarget, label: str, spare: _Spare | None) -> ProcessEngine:
        if spare is not None and spare.ready is not None and spare.vocabulary is not None:
            if spare.target == wanted and spare.spawned.process.poll() is None:
                channel = _Channel(label, spare.spawned.process, spare.spawned.conn)
                channel.start()
                return ProcessEngine(channel, spare.vocabulary, spare.ready, functools.partial(self._retire, wanted))
            await asyncio.to_thread(spare.discard)
            spare = None
        spawned = spare.spawned if spare is not None else None
        # The worker loads the weights while this process reads the vocabulary.
        starting = asyncio.ensure_future(
            asyncio.to_thread(
                _start_worker, wanted.path, wanted.options, label, spawned, profile_steps=self._profile_steps
            )
        )
        reading = asyncio.ensure_future(asyncio.to_thread(Vocabulary, wanted.path))
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
        return ProcessEngine(channel, reading.result(), ready, functools.partial(self._retire, wanted))

    def _retire(self, target: LoadTarget, channel: _Channel, vocabulary: Vocabulary, ready: Ready) -> None:
        """Blocking, when an engine closes: keep its worker as the pre-loaded spare if it
        holds what the spare should, otherwise shut it down (and start the spare that is
        wanted now that one model fewer is loaded)."""
        with self._lock:
            self._resident -= 1
            keep = self._wanted() == (True, target)
        parked = channel.park() if keep else None
        if parked is not None:
            future: concurrent.futures.Future[_Spare | None] = concurrent.futures.Future()
            future.set_result(_Spare(parked, target, ready, vocabulary))
            with self._lock:
                kept = self._wanted() == (True, target)
                replaced = self._spare  # an imports-only spare kept while the model was loaded
                if kept:
                    self._spare, self._spare_target = future, target
            if not kept:
                _discard_future(future)
            elif replaced is not None:
                _discard_future(replaced)
            return
        _shut_down(channel, vocabulary, ready)
        self._refill()


async def _spare_result(future: concurrent.futures.Future[_Spare | None]) -> _Spare | None:
    """The spare once it has started (or loaded); None if it could not start (the load then
    starts its own worker, and says why if that fails too)."""
    try:
        return await asyncio.wrap_future(future)
    except Exception:
        return None


def _discard_future(future: concurrent.futures.Future[_Spare | None]) -> None:
    """Blocking: stop a spare, waiting for it to finish starting first."""
    try:
        spare = future.result()
    except Exception:
        return
    if spare is not None:
        spare.discard()


def _start_spare(target: LoadTarget | None, *, profile_steps: bool) -> _Spare | None:
    """Blocking: a started worker, with `target` loaded when there is one."""
    try:
        spawned = _spawn("a spare worker")
    except ModelLoadFailed:
        return None
    if target is None:
        return _Spare(spawned)
    try:
        vocabulary = Vocabulary(target.path)
    except ModelLoadFailed:
        _discard_spawned(spawned)
        return None
    try:
        ready = _handshake(spawned, target.path, target.options, profile_steps=profile_steps)
    except ModelLoadFailed:
        vocabulary.close()
        return None
    return _Spare(spawned, target, ready, vocabulary)


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
    ready = _handshake(spawned, path, options, profile_steps=profile_steps)
    channel = _Channel(name, spawned.process, spawned.conn)
    channel.start()
    return channel, ready


def _handshake(spawned: _Spawned, path: Path, options: LoadOptions, *, profile_steps: bool) -> Ready:
    """Blocking: tell a started worker what to load and wait for its Ready; ModelLoadFailed
    (the worker stopped) otherwise."""
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
        return reply
    _stop_process(process)
    conn.close()
    if isinstance(reply, LoadFailed):
        raise ModelLoadFailed(reply.message)
    raise ModelLoadFailed(
        f"could not load {path.name}: the worker exited while loading ({_describe_exit(process.returncode, None)})"
    )
