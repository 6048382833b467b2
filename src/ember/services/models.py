"""The model store as the APIs see it: list, show, delete, copy, pull with progress."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ember.errors import BadRequest
from ember.runtime.scheduler import Scheduler
from ember.runtime.store import ModelRecord, ModelStore, PullProgress

_DONE = object()


@dataclass
class PullStream:
    """Progress of a pull that has started without error; iterate to follow it."""

    first: PullProgress
    _queue: asyncio.Queue[object]
    _cancel: threading.Event

    async def __aiter__(self) -> AsyncIterator[PullProgress]:
        try:
            yield self.first
            while True:
                item = await self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, PullProgress)
                yield item
        finally:
            # A client that leaves stops the download; the partial file stays for resume.
            self._cancel.set()


class ModelService:
    def __init__(self, store: ModelStore, scheduler: Scheduler) -> None:
        self.store = store
        self._scheduler = scheduler

    def list(self) -> list[ModelRecord]:
        return self.store.list()

    def get(self, model: str) -> ModelRecord:
        return self.store.get(model)

    async def delete(self, model: str) -> None:
        record = self.store.get(model)
        await asyncio.to_thread(self.store.remove, record.ref)
        await self._scheduler.forget(str(record.ref))

    async def copy(self, source: str, destination: str) -> ModelRecord:
        return await asyncio.to_thread(self.store.copy, source, destination)

    async def start_pull(self, source: str, name: str | None = None) -> PullStream:
        """Start a pull; errors found before any progress (unknown name, bad URL) raise here."""
        if self.store.source_kind(source) == "local":
            # A server must not read arbitrary paths for its clients; the CLI imports locally.
            raise BadRequest(
                "the server pulls catalog names, hf:// paths and URLs; "
                "add a local file with `ember import PATH --name NAME`",
                param="model",
            )
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def report(progress: PullProgress) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, progress)

        def run() -> None:
            try:
                self.store.pull(source, name=name, progress=report, cancel=cancel)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as exc:  # delivered to the client as an error line or status
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        threading.Thread(target=run, name="ember-pull", daemon=True).start()
        first = await queue.get()
        if isinstance(first, BaseException):
            raise first
        if first is _DONE:
            first = PullProgress(status="success")
            queue.put_nowait(_DONE)
        assert isinstance(first, PullProgress)
        return PullStream(first=first, _queue=queue, _cancel=cancel)
