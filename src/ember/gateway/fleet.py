"""The fleet's nodes as route targets: what the `fleet` strategy walks.

A route of strategy `fleet` names "fleet/MODEL" targets. For each request they are put in
place, in the order FleetRouter gives for that request's prompt, as one Target per node
(`expand`), so the gateway's Router walks them as any route's targets: breakers, retries,
failover before the first token and in-flight counts are the Router's and the Target's, not
written again here. A model no route names, that this node does not store and that some node
of the fleet serves, gets a one-target route "fleet/MODEL" (`default_route`).

Invariants:
- One provider (OpenAI kind, `base_url + "/v1"`) and one Target per (node, model), built on
  first use and reused, so a node's breaker and connection pool outlive one request.
- A node that has left the fleet's table is forgotten by the router at once; its targets are
  dropped and its provider closed once nothing is in flight on it (a closed pool would break a
  stream still running there).
- The router learns a prompt only for the node that produced its first token (`sent`), so a
  node that failed over is not credited with a prefix it never cached.
- The provider's name, shown as X-Ember-Provider, is the node's name, or "name-<id>" when
  another live node has that name already.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from ember.fleet.routing import FleetRouter, RoutingPolicy
from ember.fleet.types import FleetView, NodeInfo
from ember.gateway.breaker import CircuitBreaker
from ember.gateway.config import FLEET, BreakerConfig, ProviderConfig, RetryConfig, RouteConfig
from ember.gateway.provider import Provider
from ember.gateway.router import Route
from ember.gateway.strategies.fleet import prompt_text
from ember.gateway.target import Target
from ember.services.types import TextRequest

log = logging.getLogger("ember.gateway")

ProviderFactory = Callable[[ProviderConfig], Provider]


def fleet_model(label: str) -> str | None:
    """MODEL of a "fleet/MODEL" target, else None."""
    provider, sep, model = label.partition("/")
    return model if sep and provider == FLEET and model else None


@dataclass
class _Node:
    info: NodeInfo
    provider: Provider
    targets: dict[str, Target]  # by model


class FleetTargets:
    def __init__(
        self,
        make_provider: ProviderFactory,
        breaker: BreakerConfig,
        retry: RetryConfig,
        policy: RoutingPolicy | None = None,
    ) -> None:
        self._make_provider = make_provider
        self._breaker = breaker
        self._retry = retry
        # The router reads its in-flight counts from the node Targets: one count, the Router's.
        self.router = FleetRouter(policy, in_flight=self.in_flight)
        self._nodes: dict[str, _Node] = {}
        self._node_of: dict[int, str] = {}  # id(Target) -> node id
        self._leaving: dict[str, _Node] = {}  # gone from the table, still streaming
        self._closing: set[asyncio.Task[None]] = set()

    # -- what the gateway asks ----------------------------------------------------------------

    def route_to(self, model: str) -> Route:
        """The one-target route "fleet/MODEL" (a client naming "fleet/MODEL"; with no live node
        for MODEL it has no target, which the Router answers with a 503 no_fleet_node)."""
        label = f"{FLEET}/{model}"
        config = RouteConfig(model=label, targets=[label], strategy="fleet")
        return Route(config=config, targets=[], retry=self._retry, breaker=self._breaker)

    def default_route(self, model: str, view: FleetView) -> Route | None:
        """The route "fleet/MODEL" for a model some live node serves (else None)."""
        return self.route_to(model) if view.candidates(model) else None

    def expand(self, route: Route, request: TextRequest, view: FleetView | None) -> Route:
        """The route with its "fleet/MODEL" targets replaced by the live nodes serving MODEL, best
        first for this request; its other targets keep their place. Never raises: a fleet with no
        node for the model leaves no target (see `unavailable`)."""
        self._sync(view)
        static = iter(route.targets)  # the route's own Targets, in its order, fleet ones left out
        prompt = prompt_text(request)
        targets: list[Target] = []
        for label in route.config.targets:
            model = fleet_model(label)
            if model is None:
                targets.append(next(static))
                continue
            if view is None:
                continue
            ordered = self.router.order(model, prompt, view.candidates(model), route.config.tiers)
            targets.extend(self._target(info, model, route.breaker, view) for info in ordered)
        return Route(config=route.config, targets=targets, retry=route.retry, breaker=route.breaker)

    def sent(self, target: Target, request: TextRequest) -> None:
        """The request's first token came from `target`: if it is a node, its prefix is learnt."""
        node_id = self._node_of.get(id(target))
        if node_id is not None:
            self.router.sent(node_id, target.model, prompt_text(request))

    def in_flight(self, node_id: str) -> int:
        node = self._nodes.get(node_id)
        return 0 if node is None else sum(t.in_flight for t in node.targets.values())

    def describe(self) -> list[dict[str, object]]:
        """Each node target's health (for `ember routes` and /admin views)."""
        return [t.health() for node in self._nodes.values() for t in node.targets.values()]

    def describe_model(self, model: str) -> list[dict[str, object]]:
        """The health of the node targets serving `model` that requests have used so far."""
        return [t.health() for node in self._nodes.values() for t in node.targets.values() if t.model == model]

    async def aclose(self) -> None:
        nodes = [*self._nodes.values(), *self._leaving.values()]
        self._nodes.clear()
        self._leaving.clear()
        for node in nodes:
            await _close(node)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # -- the table ----------------------------------------------------------------------------

    def _target(self, info: NodeInfo, model: str, breaker: BreakerConfig, view: FleetView) -> Target:
        node = self._nodes.get(info.node_id)
        if node is None:
            node = self._nodes[info.node_id] = self._new_node(info, view)
        node.info = info
        target = node.targets.get(model)
        if target is None:
            target = node.targets[model] = Target(provider=node.provider, model=model, breaker=CircuitBreaker(breaker))
            self._node_of[id(target)] = info.node_id
        return target

    def _new_node(self, info: NodeInfo, view: FleetView) -> _Node:
        taken = {n.provider.name for n in self._nodes.values()}
        name = _safe(info.name) or _safe(info.short_id)
        if name in taken or name in (FLEET, "local"):
            name = f"{name}-{_safe(info.short_id)[:8]}"
        key = view.api_key(info)  # read once: a node's provider lives as long as it is in the table
        config = ProviderConfig(
            name=name,
            kind="openai",
            base_url=info.base_url.rstrip("/") + "/v1",
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )
        log.info("fleet: node %s (%s) at %s joins the routing table", name, info.short_id, info.base_url)
        return _Node(info=info, provider=self._make_provider(config), targets={})

    def _sync(self, view: FleetView | None) -> None:
        """Forget the nodes that left the table; close their providers once idle."""
        live = {n.node_id for n in view.nodes()} if view is not None else set()
        for node_id in [i for i in self._nodes if i not in live]:
            node = self._nodes.pop(node_id)
            self.router.forget(node_id)
            log.info("fleet: node %s (%s) left the routing table", node.provider.name, node.info.short_id)
            self._leaving[node_id] = node
        for node_id, node in list(self._leaving.items()):
            if node_id in live and node_id not in self._nodes:
                self._nodes[node_id] = self._leaving.pop(node_id)  # back before it was closed
            elif all(t.in_flight == 0 for t in node.targets.values()):
                del self._leaving[node_id]
                for target in node.targets.values():
                    self._node_of.pop(id(target), None)
                task = asyncio.get_running_loop().create_task(_close(node))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)


async def _close(node: _Node) -> None:
    try:
        await node.provider.aclose()
    except Exception:
        log.exception("closing the provider of fleet node %s failed", node.provider.name)


def _safe(text: str) -> str:
    """A provider name (letters, digits, _ . -) made of a node's name or id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")
