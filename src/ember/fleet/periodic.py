"""Periodic: one asyncio task that runs a coroutine every `interval` seconds until stopped.

The fleet's heartbeat, registry refresh and enrolled-node scrape share it. A tick that
raises is logged and the loop goes on (one bad tick must not end a heartbeat); `stop`
cancels the task and waits for it, and may be called when it never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("ember.fleet")


class Periodic:
    def __init__(self, name: str, interval: float, tick: Callable[[], Awaitable[object]], failure: str) -> None:
        self._name = name
        self._interval = interval
        self._tick = tick
        self._failure = failure  # what the log says when a tick raises
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._tick()
            except Exception:  # the loop must outlive one bad tick; say what broke
                log.exception("fleet: %s failed", self._failure)
