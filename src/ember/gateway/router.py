"""Walk a route's targets: breakers, fallback, retries with backoff, racing.

A target fails over (to the next one) on anything that is not the client's fault:
connection errors, 5xx, 429, timeouts before the first token, a missing model. The
client's own mistakes (400, 413, 422) are answered at once. Providers raise before the
first token, so everything here happens before the client has seen a byte.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from ember.errors import (
    BadRequest,
    EmberError,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
    retry_after_seconds,
)
from ember.gateway.config import BreakerConfig, RetryConfig, RouteConfig
from ember.gateway.strategies import STRATEGIES
from ember.gateway.target import Target
from ember.services.generation import Generation
from ember.services.types import TextRequest

log = logging.getLogger("ember.gateway")


@dataclass
class Route:
    config: RouteConfig
    targets: list[Target]
    retry: RetryConfig
    breaker: BreakerConfig

    @property
    def name(self) -> str:
        return self.config.model


def is_client_error(exc: EmberError) -> bool:
    """The request itself is wrong: another target would refuse it too."""
    if isinstance(exc, (BadRequest, PayloadTooLarge)):
        return True
    if isinstance(exc, UpstreamError):
        return exc.upstream_status in (400, 413, 422)
    return False


class Router:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    async def start(
        self, route: Route, request: TextRequest, exclude: frozenset[str] = frozenset()
    ) -> tuple[Generation, Target]:
        """Start on the first target that produces a token; `exclude` names targets to skip."""
        if not route.targets:  # only a fleet route can be empty: no live node serves its model
            raise ServiceUnavailable(
                f"route '{route.name}' has no target now: no live node of the fleet serves its model",
                code="no_fleet_node",
            )
        started = time.monotonic()
        deadline = started + route.retry.deadline
        attempts = 0
        errors: list[tuple[Target, EmberError]] = []
        order_fn = STRATEGIES[route.config.strategy]
        for pass_no in range(route.retry.passes):
            order = [t for t in order_fn(route.targets, route.config, request) if t.label not in exclude]
            if route.config.strategy == "race":
                won, tried = await self._race(order[: route.config.race], request, errors, deadline)
                attempts += tried
                if won is not None:
                    won[0].attempts = attempts
                    return won
                order = order[route.config.race :]
            for target in order:
                if time.monotonic() >= deadline:
                    break
                if time.monotonic() < target.retry_at or not target.breaker.allow():
                    continue
                attempts += 1
                try:
                    generation = await self._try(target, request)
                except EmberError as exc:
                    if is_client_error(exc):
                        target.breaker.release()
                        raise
                    errors.append((target, exc))
                    continue
                generation.attempts = attempts
                return generation, target
            if pass_no + 1 < route.retry.passes:
                pause = self._backoff(route.retry, pass_no, route.targets)
                if time.monotonic() + pause >= deadline:
                    break
                await asyncio.sleep(pause)
        raise self._exhausted(route, errors, attempts)

    async def _try(self, target: Target, request: TextRequest) -> Generation:
        target.requests += 1
        target.in_flight += 1
        try:
            generation = await target.provider.start(request, target.model)
        except EmberError as exc:
            target.in_flight -= 1
            if not is_client_error(exc):
                self._failed(target, exc)
            raise
        except BaseException:
            target.in_flight -= 1
            target.breaker.release()
            raise
        return generation

    def _failed(self, target: Target, exc: EmberError) -> None:
        target.failures += 1
        target.last_error = exc.message
        target.breaker.failure()
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            target.retry_at = time.monotonic() + float(retry_after)
        log.warning("target %s failed (%s); breaker %s", target.label, exc.message, target.breaker.state)

    async def _race(
        self,
        racers: list[Target],
        request: TextRequest,
        errors: list[tuple[Target, EmberError]],
        deadline: float,
    ) -> tuple[tuple[Generation, Target] | None, int]:
        """Start every racer at once; the first to produce a token wins, the rest are cancelled."""
        allowed = [t for t in racers if time.monotonic() >= t.retry_at and t.breaker.allow()]
        if not allowed:
            return None, 0
        tasks = {asyncio.create_task(self._try(t, request)): t for t in allowed}
        winner: tuple[Generation, Target] | None = None
        try:
            pending = set(tasks)
            while pending and winner is None:
                timeout = max(0.0, deadline - time.monotonic())
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    break
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        if winner is None:  # a tie's second finisher is closed below
                            winner = (task.result(), tasks[task])
                    elif isinstance(exc, EmberError):
                        if is_client_error(exc):
                            raise exc
                        errors.append((tasks[task], exc))
                    else:
                        raise exc
        finally:
            # The losers: cancel those still waiting for a first token (their connections
            # close), and close any that produced one too late.
            leftovers = [t for t in tasks if not t.done()]
            for task in leftovers:
                task.cancel()
            if leftovers:
                await asyncio.gather(*leftovers, return_exceptions=True)
            for task in tasks:
                if task.cancelled() or task.exception() is not None:
                    continue
                generation = task.result()
                if winner is None or generation is not winner[0]:
                    tasks[task].in_flight -= 1
                    tasks[task].breaker.release()
                    await generation.aclose()
        return winner, len(allowed)

    def _backoff(self, retry: RetryConfig, pass_no: int, targets: list[Target]) -> float:
        """Exponential backoff with full jitter, but never shorter than a Retry-After we were given."""
        ceiling = min(retry.max_backoff, retry.backoff * (2**pass_no))
        pause = self._rng.uniform(ceiling / 2, ceiling) if ceiling > 0 else 0.0
        waits = [t.retry_at - time.monotonic() for t in targets if t.retry_at > time.monotonic()]
        if waits and len(waits) == len(targets):
            pause = max(pause, min(waits))
        return pause

    def _exhausted(self, route: Route, errors: list[tuple[Target, EmberError]], attempts: int) -> EmberError:
        if not errors:
            # Every target was skipped: its breaker is open, or it asked us to wait (Retry-After).
            now = time.monotonic()
            wait = min(
                (max(t.breaker.retry_in(), t.retry_at - now) for t in route.targets), default=route.breaker.cooldown
            )
            return ServiceUnavailable(
                f"no target of route '{route.name}' is available (circuit breakers open or "
                f"rate limited upstream); retry in {wait:.0f}s",
                retry_after=retry_after_seconds(wait),
                code="no_healthy_target",
            )
        _, last = errors[-1]
        summary = "; ".join(f"{t.label}: {e.message}" for t, e in errors[-4:])
        if isinstance(last, EmberError) and last.status_code in (429, 503, 504):
            last.message = f"route '{route.name}' failed after {attempts} attempts: {summary}"
            return last
        return UpstreamError(
            f"route '{route.name}' failed after {attempts} attempts: {summary}", code="all_targets_failed"
        )
