"""Which models are resident: load on demand, keep_alive expiry, least-recently-used eviction.

Requests take a Lease on a Runner for as long as they use it; a runner with
leases is never unloaded. Everything here runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace

from ember.config import Settings
from ember.engine.protocol import Engine, EngineLoader
from ember.engine.types import LoadOptions
from ember.errors import EmberError, ServiceUnavailable
from ember.runtime.store import ModelRecord, ModelStore

log = logging.getLogger("ember.scheduler")


@dataclass
class Runner:
    """One loaded model."""

    key: str
    record: ModelRecord
    engine: Engine
    options: LoadOptions
    load_seconds: float
    keep_alive: float
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    expires_at: float | None = None  # wall-clock time.time(); None: never while idle
    _timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        return self.in_flight == 0

    @property
    def slots_busy(self) -> int:
        return min(self.in_flight, self.engine.parallel)

    @property
    def queued(self) -> int:
        return max(0, self.in_flight - self.engine.parallel)


def estimate_memory(record: ModelRecord, options: LoadOptions) -> int:
    """Weights plus a KV cache for every slot's full context, from the GGUF's metadata."""
    per_token = record.metadata.kv_bytes_per_token or 0
    return record.size + per_token * options.num_ctx * options.num_parallel


def default_options(s: Settings) -> LoadOptions:
    """What a request that names no options loads a model with."""
    return LoadOptions(num_ctx=s.num_ctx, num_thread=s.num_thread, num_gpu=s.num_gpu, num_parallel=s.num_parallel)


def fit_options(record: ModelRecord, options: LoadOptions, settings: Settings) -> LoadOptions:
    """The model's own limits and per-model settings applied to what a request asked for."""
    trained = record.metadata.context_length or options.num_ctx
    parallel = settings.model_parallel.get(str(record.ref), options.num_parallel)
    return replace(options, num_ctx=min(options.num_ctx, trained), num_parallel=parallel)


def default_load(store: ModelStore, settings: Settings) -> tuple[ModelRecord, LoadOptions] | None:
    """The default model as a request with no options would load it, if it is in the store
    and fits the memory budget: what the process engine's spare worker may hold ready."""
    try:
        record = store.get(settings.default_model)
    except EmberError:
        return None
    options = fit_options(record, default_options(settings), settings)
    if estimate_memory(record, options) > settings.max_memory:
        return None
    return record, options


@dataclass(frozen=True)
class Lease:
    runner: Runner
    loaded_now: bool  # this request paid for the load
    load_seconds: float


class Scheduler:
    def __init__(self, store: ModelStore, loader: EngineLoader, settings: Settings) -> None:
        self._store = store
        self._loader = loader
        self._settings = settings
        self._runners: dict[str, Runner] = {}
        self._loading: dict[str, asyncio.Future[Runner]] = {}
        self._changed = asyncio.Condition()
        self._expiring: set[asyncio.Task[None]] = set()  # held so the loop does not drop them mid-unload

    def default_options(self) -> LoadOptions:
        return default_options(self._settings)

    def running(self) -> list[Runner]:
        return sorted(self._runners.values(), key=lambda r: r.key)

    @asynccontextmanager
    async def lease(
        self, model: str, *, options: LoadOptions | None = None, keep_alive: float | None = None
    ) -> AsyncIterator[Lease]:
        """Hold a loaded model for one request."""
        record = self._store.get(model)
        key = str(record.ref)
        wanted = self._fit_options(record, options or self.default_options())
        runner, loaded_now, load_seconds = await self._get_or_load(key, record, wanted)
        if runner.in_flight >= runner.engine.parallel + self._settings.max_queue:
            raise ServiceUnavailable(
                f"model '{key}' is busy: {runner.engine.parallel} requests running and "
                f"{runner.queued} waiting (EMBER_MAX_QUEUE={self._settings.max_queue}); retry shortly",
                retry_after=1,
                code="queue_full",
            )
        runner.in_flight += 1
        runner.last_used = time.monotonic()
        if runner._timer is not None:
            runner._timer.cancel()
            runner._timer = None
        runner.expires_at = None
        if keep_alive is not None:
            runner.keep_alive = keep_alive
        try:
            yield Lease(runner=runner, loaded_now=loaded_now, load_seconds=load_seconds)
        finally:
            runner.in_flight -= 1
            runner.last_used = time.monotonic()
            if not runner.engine.alive:
                if runner.idle:
                    await self._unload(runner)  # the next request loads it afresh
            elif runner.idle:
                self._arm_expiry(runner)
            await self._notify()

    async def load(self, model: str, *, options: LoadOptions | None = None, keep_alive: float | None = None) -> Lease:
        """Load without generating (Ollama's empty-prompt request); returns the finished lease."""
        async with self.lease(model, options=options, keep_alive=keep_alive) as lease:
            return lease

    async def unload(self, model: str) -> bool:
        """Unload now if resident and idle; a busy model unloads when its last request ends."""
        record = self._store.get(model)
        runner = self._runners.get(str(record.ref))
        if runner is None:
            return False
        runner.keep_alive = 0
        if runner.idle:
            await self._unload(runner)
        return True

    async def forget(self, key: str) -> None:
        """A model was deleted from the store: drop it from memory when idle."""
        runner = self._runners.get(key)
        if runner is not None:
            runner.keep_alive = 0
            if runner.idle:
                await self._unload(runner)

    async def shutdown(self) -> None:
        for runner in list(self._runners.values()):
            await self._unload(runner)
        await self._loader.close()

    def _fit_options(self, record: ModelRecord, options: LoadOptions) -> LoadOptions:
        return fit_options(record, options, self._settings)

    async def _get_or_load(self, key: str, record: ModelRecord, options: LoadOptions) -> tuple[Runner, bool, float]:
        while True:
            runner = self._runners.get(key)
            if runner is not None and not runner.engine.alive:
                # Its worker died: requests still holding it fail on their own; new ones reload.
                await self._unload(runner)
                continue
            if runner is not None and (runner.options == options or not runner.idle):
                # A busy model keeps serving with the options it has rather than
                # stalling everyone for a reload.
                return runner, False, 0.0
            if runner is not None:
                await self._unload(runner)
                continue
            pending = self._loading.get(key)
            if pending is not None:
                # Someone else is loading it: wait for that one load.
                await asyncio.shield(pending)
                continue
            future: asyncio.Future[Runner] = asyncio.get_running_loop().create_future()
            self._loading[key] = future
            try:
                runner = await self._load(key, record, options)
            except BaseException as exc:
                future.set_exception(exc)
                future.exception()  # mark retrieved: the waiters retry and see their own error
                raise
            finally:
                self._loading.pop(key, None)
            future.set_result(runner)
            return runner, True, runner.load_seconds

    async def _load(self, key: str, record: ModelRecord, options: LoadOptions) -> Runner:
        await self._make_room(key, estimate_memory(record, options))
        record = await asyncio.to_thread(self._store.verify, record.ref)
        started = time.perf_counter()
        engine = await self._loader.load(record.path, options, name=key)
        seconds = time.perf_counter() - started
        log.info("loaded %s in %.2fs (ctx %d)", key, seconds, options.num_ctx)
        runner = Runner(
            key=key,
            record=record,
            engine=engine,
            options=options,
            load_seconds=seconds,
            keep_alive=self._settings.keep_alive,
        )
        self._runners[key] = runner
        return runner

    async def _make_room(self, incoming: str, needed: int) -> None:
        """Evict idle models, least recently used first, until the newcomer fits."""
        limit = self._settings.max_loaded_models
        budget = self._settings.max_memory
        if needed > budget:
            raise ServiceUnavailable(
                f"model '{incoming}' needs about {needed / 2**20:.0f} MiB, more than the memory budget "
                f"of {budget / 2**20:.0f} MiB (EMBER_MAX_MEMORY); lower num_ctx or EMBER_NUM_PARALLEL",
                code="insufficient_memory",
            )

        def crowded() -> bool:
            # `incoming` is already in _loading, hence the -1.
            too_many = limit > 0 and len(self._runners) + len(self._loading) - 1 >= limit
            resident = sum(r.engine.memory_bytes for r in self._runners.values())
            return too_many or resident + needed > budget

        while crowded():
            idle = [r for r in self._runners.values() if r.idle and r.key != incoming]
            if idle:
                victim = min(idle, key=lambda r: r.last_used)
                log.info("evicting %s to make room for %s", victim.key, incoming)
                await self._unload(victim)
                continue
            async with self._changed:
                # Time-boxed so a wake-up that raced the check cannot strand us.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=1.0)

    def _arm_expiry(self, runner: Runner) -> None:
        if runner.keep_alive < 0:
            runner.expires_at = None
            return
        loop = asyncio.get_running_loop()
        runner.expires_at = time.time() + runner.keep_alive

        def expire() -> None:
            if runner.idle and self._runners.get(runner.key) is runner:
                task = loop.create_task(self._unload(runner))
                self._expiring.add(task)
                task.add_done_callback(self._expiring.discard)

        runner._timer = loop.call_later(runner.keep_alive, expire)

    async def _unload(self, runner: Runner) -> None:
        if self._runners.get(runner.key) is not runner:
            return
        del self._runners[runner.key]
        if runner._timer is not None:
            runner._timer.cancel()
        log.info("unloading %s", runner.key)
        await runner.engine.close()
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
