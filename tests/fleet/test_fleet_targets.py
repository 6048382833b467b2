"""The fleet strategy's targets and config, without servers: a static FleetView, the real
providers (built, never connected), the real Gateway config checks."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest
from pydantic import ValidationError

from ember.fleet.types import NodeInfo, NodeLoad
from ember.gateway.config import BreakerConfig, GatewayConfig, RetryConfig, RouteConfig
from ember.gateway.fleet import FleetTargets, fleet_model
from ember.gateway.gateway import make_provider
from ember.gateway.router import Route
from ember.gateway.strategies.fleet import prompt_text
from ember.services.types import ChatMessage, TextRequest, ToolCall

MODEL = "smollm2:135m"


class StaticFleet:
    def __init__(self, nodes: list[NodeInfo]) -> None:
        self.table = nodes

    def nodes(self) -> Sequence[NodeInfo]:
        return self.table

    def candidates(self, model: str) -> Sequence[NodeInfo]:
        return sorted((n for n in self.table if n.serves(model)), key=lambda n: model not in n.resident)

    def models(self) -> Sequence[str]:
        return sorted({m for n in self.table for m in n.stored})

    def api_key(self, node: NodeInfo) -> str | None:
        return "node-key"


def node(node_id: str, name: str, tier: str = "edge", busy: int = 0) -> NodeInfo:
    return NodeInfo(
        node_id=node_id,
        name=name,
        kind="ember",
        base_url=f"http://127.0.0.1:9/{name}",
        labels={"tier": tier},
        resident=frozenset({MODEL}),
        stored=frozenset({MODEL}),
        load=NodeLoad(slots=4, busy=busy),
    )


def fleet_route(**extra: object) -> Route:
    config = RouteConfig(model="chat", strategy="fleet", targets=[f"fleet/{MODEL}"], **extra)  # type: ignore[arg-type]
    return Route(config=config, targets=[], retry=RetryConfig(), breaker=BreakerConfig())


def chat(*texts: str) -> TextRequest:
    return TextRequest(model="chat", messages=[ChatMessage(role="user", content=t) for t in texts])


def targets() -> FleetTargets:
    return FleetTargets(make_provider, BreakerConfig(), RetryConfig())


async def test_expand_orders_the_nodes_and_reuses_their_targets() -> None:
    fleet = StaticFleet([node("id-a", "a", busy=2), node("id-b", "b"), node("id-c", "c", tier="lab")])
    fleet_targets = targets()
    walk = fleet_targets.expand(fleet_route(tiers=["edge"]), chat("hello"), fleet)
    assert [t.label for t in walk.targets] == [f"b/{MODEL}", f"a/{MODEL}"]  # least loaded; no lab node
    again = fleet_targets.expand(fleet_route(tiers=["edge"]), chat("hello"), fleet)
    assert [id(t) for t in again.targets] == [id(t) for t in walk.targets]  # one Target per node
    provider = walk.targets[0].provider
    assert provider.config.base_url == "http://127.0.0.1:9/b/v1"
    assert provider.config.headers == {"Authorization": "Bearer node-key"}
    await fleet_targets.aclose()


async def test_describe_model_lists_the_node_targets_used_for_a_model() -> None:
    fleet = StaticFleet([node("id-a", "a"), node("id-b", "b")])
    fleet_targets = targets()
    assert fleet_targets.describe_model(MODEL) == []  # no request has chosen a node yet
    fleet_targets.expand(fleet_route(), chat("hello"), fleet)
    assert sorted(str(h["target"]) for h in fleet_targets.describe_model(MODEL)) == [f"a/{MODEL}", f"b/{MODEL}"]
    assert fleet_targets.describe_model("other:1b") == []
    await fleet_targets.aclose()


async def test_the_node_that_answered_learns_the_prefix() -> None:
    fleet = StaticFleet([node("id-a", "a"), node("id-b", "b")])
    fleet_targets = targets()
    request = chat("You are a helpful assistant that answers in French. " * 3)
    first = fleet_targets.expand(fleet_route(), request, fleet).targets
    fleet_targets.sent(first[1], request)  # as if the first had failed over to the second
    assert next(t.label for t in fleet_targets.expand(fleet_route(), request, fleet).targets) == first[1].label
    await fleet_targets.aclose()


async def test_a_node_that_leaves_is_forgotten_and_closed_once_idle() -> None:
    fleet = StaticFleet([node("id-a", "a"), node("id-b", "b")])
    fleet_targets = targets()
    request = chat("x" * 200)
    walk = fleet_targets.expand(fleet_route(), request, fleet)
    b = next(t for t in walk.targets if t.provider.name == "b")
    fleet_targets.sent(b, request)
    b.in_flight = 1  # a stream still running there
    fleet.table = [node("id-a", "a")]
    assert [t.provider.name for t in fleet_targets.expand(fleet_route(), request, fleet).targets] == ["a"]
    assert fleet_targets.router.tree.size("id-b") == 0  # forgotten at once
    assert "id-b" in fleet_targets._leaving  # but its provider stays open for the stream
    b.in_flight = 0
    fleet_targets.expand(fleet_route(), request, fleet)
    assert "id-b" not in fleet_targets._leaving
    await asyncio.sleep(0)
    await fleet_targets.aclose()


async def test_provider_names_are_the_node_names_unless_they_collide() -> None:
    fleet = StaticFleet([node("aaaa1111bbbb2222", "edge"), node("cccc3333dddd4444", "edge")])
    fleet_targets = targets()
    names = sorted(t.provider.name for t in fleet_targets.expand(fleet_route(), chat("hi"), fleet).targets)
    assert names == ["edge", "edge-cccc3333"]
    await fleet_targets.aclose()


async def test_no_fleet_or_no_node_leaves_no_target() -> None:
    fleet_targets = targets()
    assert fleet_targets.expand(fleet_route(), chat("hi"), None).targets == []
    assert fleet_targets.expand(fleet_route(), chat("hi"), StaticFleet([])).targets == []
    assert fleet_targets.default_route(MODEL, StaticFleet([])) is None
    assert fleet_targets.route_to(MODEL).targets == []  # a client's "fleet/MODEL": the Router's 503
    route = fleet_targets.default_route(MODEL, StaticFleet([node("id-a", "a")]))
    assert route is not None and route.config.targets == [f"fleet/{MODEL}"]


def test_prompt_text_is_the_history_in_order() -> None:
    call = ToolCall(id="c1", name="lookup", arguments='{"q": "bread"}')
    first = TextRequest(
        model="m", messages=[ChatMessage(role="system", content="S"), ChatMessage(role="user", content="U1")]
    )
    assert prompt_text(first) == "<system>S\n<user>U1"
    later = replace(first, messages=[*first.messages, ChatMessage(role="assistant", content="", tool_calls=(call,))])
    assert prompt_text(later).startswith(prompt_text(first))
    assert '<call lookup>{"q": "bread"}' in prompt_text(later)
    assert prompt_text(TextRequest(model="m", prompt="plain")) == "plain"


def test_fleet_model() -> None:
    assert fleet_model("fleet/smollm2:135m") == "smollm2:135m"
    assert fleet_model("local/smollm2:135m") is None
    assert fleet_model("fleet/") is None


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"model": "x", "strategy": "fleet", "targets": ["local/a"]}, 'strategy fleet needs a target "fleet/MODEL"'),
        ({"model": "x", "targets": ["fleet/a"]}, "it needs strategy fleet"),
        ({"model": "x", "targets": ["local/a"], "tiers": ["edge"]}, "tiers is for strategy fleet"),
        ({"model": "x", "strategy": "fleet", "targets": ["fleet/a"], "tiers": ["edge", "edge"]}, "distinct"),
    ],
)
def test_route_config_checks(route: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewayConfig.model_validate({"routes": [route]})


def test_fleet_is_a_reserved_provider_name() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        GatewayConfig.model_validate({"providers": [{"name": "fleet", "kind": "openai", "base_url": "http://x/v1"}]})
    config = GatewayConfig.model_validate(
        {"routes": [{"model": "chat", "strategy": "fleet", "targets": ["fleet/a", "local/b"], "tiers": ["edge"]}]}
    )
    assert config.routes[0].tiers == ["edge"]
