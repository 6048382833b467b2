"""Jobs: the batch parts one app holds (store, file bytes, queue, batches, runner), built and
closed together by app.py's lifespan and reached by the routes through `Services.jobs`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ember.config import Settings
from ember.jobs.batches import BatchLimits, BatchService
from ember.jobs.files import FileStorage
from ember.jobs.queue import LineQueue
from ember.jobs.runner import ASGIApp, BatchRunner, RunnerConfig
from ember.jobs.store import JobStore

if TYPE_CHECKING:
    from ember.guard import Guard
    from ember.runtime.scheduler import Scheduler


@dataclass
class Jobs:
    store: JobStore
    files: FileStorage
    queue: LineQueue
    batches: BatchService
    runner: BatchRunner

    async def aclose(self) -> None:
        await self.runner.stop()
        await self.queue.aclose()
        self.store.close()


def make_queue(settings: Settings) -> LineQueue:
    """Redis Streams with EMBER_REDIS_URL (several nodes share the lines), else SQLite."""
    if settings.redis_url:
        from ember.jobs.redis_queue import RedisLineQueue

        return RedisLineQueue(settings.redis_url, min_idle=settings.batch_claim_idle)
    from ember.jobs.sqlite_queue import SqliteLineQueue

    return SqliteLineQueue(settings.state_dir / "jobs.db")


async def build_jobs(settings: Settings, app: ASGIApp, scheduler: Scheduler, guard: Guard) -> Jobs:
    """Everything for /v1/files and /v1/batches, with the runner started."""
    store = JobStore(settings.state_dir / "jobs.db")
    files = FileStorage(settings.state_dir / "files", store)
    queue = make_queue(settings)
    limits = BatchLimits(max_lines=settings.batch_max_lines, max_input_bytes=settings.max_file_bytes)
    batches = BatchService(store, files, queue, limits)
    config = RunnerConfig(
        concurrency=settings.batch_concurrency,
        default_slots=settings.num_parallel,
        max_attempts=settings.batch_max_attempts,
    )
    runner = BatchRunner(batches, app, scheduler, guard, config)
    await runner.start()
    return Jobs(store=store, files=files, queue=queue, batches=batches, runner=runner)
