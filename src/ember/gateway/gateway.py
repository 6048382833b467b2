"""The gateway: a model name -> a local model, a route over providers, or "provider/model".

Every generation and embedding the APIs serve passes through `Gateway`, which asks the
response cache, runs the route, and writes one usage record per request for the
observers (the usage log, the guard's token and budget counters, the audit log, metrics).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from ember.engine.types import LoadOptions
from ember.errors import EmberError, InvalidModelName, ModelNotFound, ServiceUnavailable, UpstreamError
from ember.fleet.types import FleetView
from ember.gateway.breaker import CircuitBreaker
from ember.gateway.config import FLEET, LOCAL, GatewayConfig, ProviderConfig, RouteConfig
from ember.gateway.fleet import FleetTargets, fleet_model
from ember.gateway.local import LocalProvider
from ember.gateway.provider import Provider
from ember.gateway.router import Route, Router, is_client_error
from ember.gateway.target import Target
from ember.gateway.usage import UsageRecord
from ember.services.embeddings import EmbeddingOutcome, EmbeddingService
from ember.services.generation import Generation, GenerationService
from ember.services.models import ModelService
from ember.services.types import Answer, GenerationEvent, RequestContext, TextRequest

log = logging.getLogger("ember.gateway")

Observer = Callable[[UsageRecord], None]


class ResponseCache(Protocol):
    """What the gateway needs of cache/ (see ember.cache)."""

    def key_for(self, request: TextRequest, digest: Callable[[], str]) -> str | None: ...

    async def get(self, key: str, request: TextRequest) -> Generation | None: ...

    def record(self, key: str, generation: Generation) -> Generation: ...


class AgentHost(Protocol):
    """What the gateway needs of agents/ (set by the app, as the cache is): a request naming an
    agent ("agent/NAME") or an agent `mode` is run there, and the run's own model calls come back
    through `start` for a plain model (they carry no mode), so keys, limits, budgets, cache,
    usage and audit apply to every step."""

    def handles(self, request: TextRequest) -> bool: ...

    async def start(self, request: TextRequest) -> Generation: ...


def make_provider(config: ProviderConfig) -> Provider:
    if config.kind == "openai":
        from ember.gateway.remote_openai import OpenAIProvider

        return OpenAIProvider(config)
    if config.kind == "ollama":
        from ember.gateway.remote_ollama import OllamaProvider

        return OllamaProvider(config)
    if config.kind == "anthropic":
        from ember.gateway.remote_anthropic import AnthropicProvider

        return AnthropicProvider(config)
    raise ValueError(f"provider kind {config.kind} is built by the gateway itself")


class Gateway:
    def __init__(
        self, config: GatewayConfig, generation: GenerationService, embeddings: EmbeddingService, models: ModelService
    ) -> None:
        self.config = config
        self._models = models
        self._embeddings = embeddings
        local_config = next(
            (p for p in config.providers if p.kind == "local"), ProviderConfig(name=LOCAL, kind="local")
        )
        self.local = LocalProvider(local_config, generation, embeddings)
        self.providers: dict[str, Provider] = {LOCAL: self.local, local_config.name: self.local}
        for provider in config.providers:
            if provider.kind != "local":
                self.providers[provider.name] = make_provider(provider)
        self.targets: dict[str, Target] = {}
        self.routes: dict[str, Route] = {r.model: self._route(r) for r in config.routes}
        self._direct_routes: dict[str, Route] = {}
        self.router = Router()
        self.observers: list[Observer] = []
        self.cache: ResponseCache | None = None
        self.agents: AgentHost | None = None
        # The fleet's live table (fleet/registry.py), set by the app when this node is a fleet's
        # gateway; the `fleet` strategy and models only the fleet has are routed over it.
        self.fleet: FleetView | None = None
        self.fleet_targets = FleetTargets(make_provider, config.breaker, config.retry)

    # -- building -----------------------------------------------------------------------------

    def _route(self, config: RouteConfig) -> Route:
        breaker = config.breaker or self.config.breaker
        return Route(
            config=config,
            targets=[self._target(t, config) for t in config.targets if fleet_model(t) is None],
            retry=config.retry or self.config.retry,
            breaker=breaker,
        )

    def _target(self, label: str, route: RouteConfig | None) -> Target:
        if label not in self.targets:
            provider_name, _, model = label.partition("/")
            breaker = (route.breaker if route and route.breaker else None) or self.config.breaker
            self.targets[label] = Target(
                provider=self.providers[provider_name], model=model, breaker=CircuitBreaker(breaker)
            )
        return self.targets[label]

    def _route_for(self, name: str) -> Route | None:
        """The configured route of that name, or a one-target route for "provider/model" (a
        remote provider's model asked for by name; built once); None for a local model
        ("local/NAME" included: see local_model)."""
        route = self.routes.get(name) or self._direct_routes.get(name)
        if route is not None:
            return route
        provider, sep, model = name.partition("/")
        if provider == FLEET and model and self.fleet is not None:
            return self.fleet_targets.route_to(model)
        if (not sep or provider not in self.providers) and self._fleet_only(name):
            assert self.fleet is not None
            return self.fleet_targets.default_route(name, self.fleet)
        if not sep or not model or provider not in self.providers or self.providers[provider] is self.local:
            return None
        config = RouteConfig(model=name, targets=[name])
        route = Route(
            config=config, targets=[self._target(name, None)], retry=self.config.retry, breaker=self.config.breaker
        )
        self._direct_routes[name] = route
        return route

    def _fleet_only(self, name: str) -> bool:
        """Some node of the fleet serves `name`, and this node's store has no model of that name."""
        if self.fleet is None or not self.fleet.candidates(name):
            return False
        try:
            self._models.get(name)
        except (ModelNotFound, InvalidModelName):
            return True
        return False

    def _walkable(self, route: Route, request: TextRequest) -> Route:
        """`route` as the Router walks it for `request`: a fleet route with its nodes put in,
        best first for this request's prompt (gateway/fleet.py)."""
        if route.config.strategy != "fleet":
            return route
        return self.fleet_targets.expand(route, request, self.fleet)

    def local_model(self, name: str) -> str:
        """The name in this node's store that a name with no route means: "local/NAME" (or the
        local provider's configured name) is NAME, unless a model is stored under the whole
        name (a catalog name such as "local/tiny:1b"); any other name is itself."""
        provider, sep, model = name.partition("/")
        if not sep or not model or self.providers.get(provider) is not self.local:
            return name
        try:
            self._models.get(name)
        except (ModelNotFound, InvalidModelName):  # not stored under the whole name
            return model
        return name

    # -- what clients see ---------------------------------------------------------------------

    def route_names(self) -> list[str]:
        return list(self.routes)

    def describe(self) -> list[dict[str, Any]]:
        """Each route, its strategy and its targets' health (for `ember routes`); a "fleet/MODEL"
        target shows the nodes used for it so far, or itself until a request has chosen one."""
        return [
            {"model": r.name, "strategy": r.config.strategy, "targets": self._describe_targets(r)}
            for r in self.routes.values()
        ]

    def _describe_targets(self, route: Route) -> list[dict[str, Any]]:
        static = iter(route.targets)  # the route's own Targets, in order, fleet ones left out
        described: list[dict[str, Any]] = []
        for label in route.config.targets:
            model = fleet_model(label)
            if model is None:
                described.append(next(static).health())
                continue
            nodes = self.fleet_targets.describe_model(model)
            described.extend(nodes or [{"target": label, "kind": "fleet", "state": "nodes chosen per request"}])
        return described

    def _digest(self, name: str) -> str:
        if name in self.routes:
            return "route:" + hashlib.sha256(self.routes[name].config.model_dump_json().encode()).hexdigest()
        if self._route_for(name) is not None:
            return "direct:" + name
        return self._models.get(self.local_model(name)).digest

    async def complete(self, request: TextRequest) -> tuple[Generation, Answer]:
        """Generate the whole answer (a client that did not ask to stream).

        Nothing has reached the client until the answer is whole, so a target that breaks
        mid-answer is not the client's problem: the route moves on to another target.
        """
        if self.agents is not None and self.agents.handles(request):
            # An agent run retries its own steps; the answer is whole when the run is.
            generation = await self.agents.start(request)
            return generation, await generation.collect()
        failed: set[str] = set()
        while True:
            generation = await self.start(request, exclude=frozenset(failed))
            try:
                answer = await generation.collect()
            except UpstreamError as exc:
                route = self._route_for(request.model)
                label = f"{generation.provider}/{generation.served_by}" if generation.served_by else None
                if (
                    route is None
                    or label is None
                    or is_client_error(exc)
                    or len(failed) + 1 >= len(self._walkable(route, request).targets)
                ):
                    raise
                failed.add(label)
                log.warning("target %s broke mid-answer (%s); trying the route's next target", label, exc.message)
                continue
            return generation, answer

    async def start(self, request: TextRequest, *, exclude: frozenset[str] = frozenset()) -> Generation:
        if self.agents is not None and self.agents.handles(request):
            return await self.agents.start(request)
        started = time.perf_counter()
        ts = time.time()
        route = self._route_for(request.model)
        target: Target | None = None
        cache_key: str | None = None
        try:
            if self.cache is not None:
                cache_key = self.cache.key_for(request, lambda: self._digest(request.model))
                if cache_key is not None:
                    hit = await self.cache.get(cache_key, request)
                    if hit is not None:
                        hit.cache = "hit"
                        hit.route = route.name if route else None
                        return self._observed(hit, request, route, None, started, ts)
            if route is not None:
                generation, target = await self.router.start(self._walkable(route, request), request, exclude)
                self.fleet_targets.sent(target, request)  # a node learns the prompt's prefix
                generation.route = route.name
                generation.served_by = target.model
            else:
                generation = await self.local.start(request, self.local_model(request.model))
        except EmberError as exc:
            self.emit(
                _record(request, ts, started, route=route, provider=None, status=exc.status_code, error=exc.message)
            )
            raise
        if cache_key is not None and self.cache is not None:
            generation = self.cache.record(cache_key, generation)
            generation.cache = "miss"
        return self._observed(generation, request, route, target, started, ts)

    def _observed(
        self,
        generation: Generation,
        request: TextRequest,
        route: Route | None,
        target: Target | None,
        started: float,
        ts: float,
    ) -> Generation:
        """The last observer: the end of the stream, however it ends, writes the usage record."""
        finish = partial(self._finish, generation, request, route, target, started, ts)
        generation.observe(_UsageObserver(finish))
        return generation

    def _finish(
        self,
        generation: Generation,
        request: TextRequest,
        route: Route | None,
        target: Target | None,
        started: float,
        ts: float,
        first_at: float | None,
        final: GenerationEvent | None,
        status: int,
        error: str | None,
    ) -> None:
        stats = final.stats if final is not None else None
        tokens_in = stats.prompt_tokens if stats else generation.prompt_tokens
        tokens_out = stats.completion_tokens if stats else 0
        ttft_ms = (first_at - started) * 1000 if first_at is not None else None
        if target is not None:
            target.in_flight -= 1
            if status == 200:
                target.breaker.success()
                target.observe(ttft_ms, tokens_out, stats.eval_seconds if stats else 0.0)
            elif status == 499:
                target.breaker.release()
            else:
                target.failures += 1
                target.last_error = error
                target.breaker.failure()
        provider = self.providers.get(generation.provider)
        cost = 0.0
        if provider is not None and generation.cache != "hit":
            cost = (tokens_in * provider.config.price_in + tokens_out * provider.config.price_out) / 1e6
        record = _record(request, ts, started, route=route, provider=generation.provider, status=status, error=error)
        record.upstream_model = target.model if target else generation.model
        record.tokens_in, record.tokens_out, record.cost = tokens_in, tokens_out, cost
        record.ttft_ms = ttft_ms
        record.attempts = generation.attempts
        record.cache = generation.cache
        self.emit(record)

    def emit(self, record: UsageRecord) -> None:
        for observer in self.observers:
            try:
                observer(record)
            except Exception:  # an observer's bug must not break serving
                log.exception("usage observer %r failed", observer)

    async def count_tokens(self, request: TextRequest) -> int:
        """The prompt's size in tokens, as the model that would serve `request` counts it: a
        local model tokenizes the rendered prompt; a route asks its targets in order (skipping
        open breakers) until one answers. No usage record: nothing is served to the client."""
        route = self._route_for(request.model)
        if route is None:
            return await self.local.count_tokens(request, self.local_model(request.model))
        last: EmberError | None = None
        for target in self._walkable(route, request).targets:
            if not target.breaker.allow():
                continue
            try:
                counted = await target.provider.count_tokens(request, target.model)
            except EmberError as exc:
                target.breaker.release()  # a count is no verdict on the target's health
                if is_client_error(exc):
                    raise
                last = exc
                continue
            target.breaker.release()
            return counted
        if last is not None:
            raise last
        raise ServiceUnavailable(f"no target of route '{route.name}' is available to count tokens")

    # -- embeddings ---------------------------------------------------------------------------

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        context: RequestContext | None = None,
        keep_alive: float | None = None,
        load_options: LoadOptions | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> EmbeddingOutcome:
        started = time.perf_counter()
        ts = time.time()
        context = context or RequestContext()
        request = TextRequest(model=model, prompt="", context=context)
        route = self._route_for(model)
        provider_name = LOCAL
        try:
            if route is None:
                outcome = await self._embeddings.embed(
                    self.local_model(model),
                    inputs,
                    keep_alive=keep_alive,
                    load_options=load_options,
                    dimensions=dimensions,
                    truncate=truncate,
                )
            else:
                walk = self._walkable(route, request)
                outcome, provider_name = await self._embed_route(walk, inputs, dimensions, truncate)
        except EmberError as exc:
            self.emit(
                _record(request, ts, started, route=route, provider=None, status=exc.status_code, error=exc.message)
            )
            raise
        record = _record(request, ts, started, route=route, provider=provider_name, status=200, error=None)
        record.tokens_in = outcome.prompt_tokens
        record.upstream_model = outcome.model
        provider = self.providers.get(provider_name)
        if provider is not None:
            record.cost = outcome.prompt_tokens * provider.config.price_in / 1e6
        self.emit(record)
        return outcome

    async def _embed_route(
        self, route: Route, inputs: list[str], dimensions: int | None, truncate: bool
    ) -> tuple[EmbeddingOutcome, str]:
        last: EmberError | None = None
        for target in route.targets:
            if not target.breaker.allow():
                continue
            try:
                outcome = await target.provider.embed(target.model, inputs, dimensions=dimensions, truncate=truncate)
            except EmberError as exc:
                if is_client_error(exc):
                    target.breaker.release()
                    raise
                target.failures += 1
                target.last_error = exc.message
                target.breaker.failure()
                last = exc
                continue
            target.breaker.success()
            return outcome, target.provider.name
        if last is not None:
            raise last
        raise ModelNotFound(route.name, f"no target of route '{route.name}' is available for embeddings")

    async def aclose(self) -> None:
        await self.fleet_targets.aclose()
        for name, provider in self.providers.items():
            if provider is not self.local:
                try:
                    await provider.aclose()
                except Exception:
                    log.exception("closing provider %s failed", name)


def _record(
    request: TextRequest,
    ts: float,
    started: float,
    *,
    route: Route | None,
    provider: str | None,
    status: int,
    error: str | None,
) -> UsageRecord:
    ctx = request.context
    return UsageRecord(
        ts=ts,
        endpoint=ctx.endpoint,
        protocol=ctx.protocol,
        model=request.model,
        provider=provider or "",
        route=route.name if route else None,
        key=ctx.key_name,
        latency_ms=(time.perf_counter() - started) * 1000,
        status=status,
        error=error,
        request=request,
    )


class _UsageObserver:
    """Watches one generation's stream (services.generation.StreamObserver) for its usage record:
    when the first event came, the final event, and how the stream ended."""

    def __init__(self, finish: Callable[[float | None, GenerationEvent | None, int, str | None], None]) -> None:
        self._finish = finish
        self._first_at: float | None = None
        self._final: GenerationEvent | None = None

    def event(self, event: GenerationEvent) -> None:
        if self._first_at is None:
            self._first_at = time.perf_counter()

    async def done(self, event: GenerationEvent) -> None:
        self._final = event

    def closed(self, error: BaseException | None) -> None:
        if error is None:
            status, message = 200, None
        elif isinstance(error, EmberError):
            status, message = error.status_code, error.message
        else:  # GeneratorExit, a cancellation: the consumer left (anything else: it broke off)
            status, message = 499, "the client went away"
        self._finish(self._first_at, self._final, status, message)
