"""FleetRouter: the fleet's NodeChooser, prefix-aware and load-aware.

For one request it orders the candidate nodes best first:
1. `tiers` (e.g. ("edge", "cloud")) keeps the nodes whose `tier` label is listed, in that order
   of tiers; without tiers every candidate is in one tier.
2. Within a tier, nodes with the model resident come before those that would have to load it.
3. Within each of those groups, the node holding the longest cached prefix of the prompt leads,
   when its match is at least `min_match` of the prompt's blocks and it is not overloaded; the
   rest follow least loaded first (then the fewest cached blocks, i.e. the most room for a new
   conversation, then the node id, so ties break the same way every time).

A node's load is its published busy + queue or the requests this router has in flight to it,
whichever is more: heartbeats lag behind what was just sent, and once a heartbeat catches up
it counts our requests too, so adding the two would count them twice. A node is overloaded
(its prefix is not worth the wait) when it is full (this router's own requests in flight to it at
its slot count) while another node of its group has a free slot, or when its load exceeds the
least loaded one's by more than `balance_abs` and by more than `balance_rel` times (SGLang's two
balance thresholds).

Invariants: `order` reads only (no I/O, no LRU touch); `sent` is what teaches the prefix tree,
so it learns only where a prompt really went; `forget` drops everything kept for a node.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ember.fleet.prefix_tree import PrefixConfig, PrefixTree
from ember.fleet.types import NodeInfo

TIER_LABEL = "tier"


@dataclass(frozen=True)
class RoutingPolicy:
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    min_match: float = 0.1  # share of the prompt's blocks a node must hold to be preferred for it
    balance_abs: int = 4  # requests more than the least loaded node ...
    balance_rel: float = 1.5  # ... and this many times its load: overloaded

    def __post_init__(self) -> None:
        if not 0 <= self.min_match <= 1:
            raise ValueError("min_match is a share of the prompt, between 0 and 1")
        if self.balance_abs < 0 or self.balance_rel < 1:
            raise ValueError("balance_abs must be at least 0 and balance_rel at least 1")


class FleetRouter:
    """Implements fleet.types.NodeChooser.

    `in_flight`, when given, is where the router reads its in-flight count per node (the
    gateway's node Targets already count their requests: one count, not two); without it the
    router counts `sent` minus `finished` itself (the fleet simulator).
    """

    def __init__(self, policy: RoutingPolicy | None = None, in_flight: Callable[[str], int] | None = None) -> None:
        self.policy = policy or RoutingPolicy()
        self.tree = PrefixTree(self.policy.prefix)
        self._in_flight_of = in_flight
        self._own: dict[str, int] = {}

    # -- NodeChooser ---------------------------------------------------------------------------

    def order(
        self, model: str, prompt: str, candidates: Sequence[NodeInfo], tiers: Sequence[str] = ()
    ) -> list[NodeInfo]:
        hashes = self.tree.hashes(model, prompt)
        needed = max(1, math.ceil(self.policy.min_match * len(hashes)))
        groups: dict[tuple[int, bool], list[NodeInfo]] = {}
        for node in candidates:
            if not node.serves(model):
                continue
            if tiers:
                tier = node.labels.get(TIER_LABEL, "")
                if tier not in tiers:
                    continue
                rank = list(tiers).index(tier)
            else:
                rank = 0
            groups.setdefault((rank, model not in node.resident), []).append(node)
        ordered: list[NodeInfo] = []
        for key in sorted(groups):
            ordered.extend(self._order_group(groups[key], hashes, needed))
        return ordered

    def sent(self, node_id: str, model: str, prompt: str) -> None:
        self.tree.add(node_id, self.tree.hashes(model, prompt))
        if self._in_flight_of is None:
            self._own[node_id] = self._own.get(node_id, 0) + 1

    def finished(self, node_id: str) -> None:
        if self._in_flight_of is None and self._own.get(node_id, 0) > 0:
            self._own[node_id] -= 1

    def forget(self, node_id: str) -> None:
        self.tree.forget(node_id)
        self._own.pop(node_id, None)

    # -- the parts -----------------------------------------------------------------------------

    def in_flight(self, node_id: str) -> int:
        return self._in_flight_of(node_id) if self._in_flight_of is not None else self._own.get(node_id, 0)

    def load(self, node: NodeInfo) -> int:
        return max(node.load.busy + node.load.queue, self.in_flight(node.node_id))

    def _order_group(self, nodes: list[NodeInfo], hashes: list[int], needed: int) -> list[NodeInfo]:
        loads = {n.node_id: self.load(n) for n in nodes}

        def pressure(node: NodeInfo) -> tuple[float, int, int, str]:
            load = loads[node.node_id]
            share = load / node.load.slots if node.load.slots > 0 else float(load)
            return (share, load, self.tree.size(node.node_id), node.node_id)

        by_load = sorted(nodes, key=pressure)
        if not hashes:
            return by_load
        matches = {n.node_id: self.tree.match(n.node_id, hashes) for n in nodes}
        best = max(by_load, key=lambda n: matches[n.node_id])  # max keeps the first of equals
        if matches[best.node_id] < needed or self._overloaded(best, nodes, loads):
            return by_load
        return [best, *(n for n in by_load if n is not best)]

    def _overloaded(self, node: NodeInfo, group: list[NodeInfo], loads: dict[str, int]) -> bool:
        load = loads[node.node_id]
        # "Full" is judged by this router's own in-flight counts: a published report lags by up to
        # a heartbeat and still counts the turn that just ended, which made a conversation's own
        # node look full exactly when its next turn arrived (the simulator's N=8 runs moved 7-12 %
        # of follow-up turns off their cached history). Other clients' load on a node is still
        # seen, through the balance thresholds below, which read the published figures.
        own = {n.node_id: self.in_flight(n.node_id) for n in group}
        if _full(node, own[node.node_id]) and any(not _full(n, own[n.node_id]) for n in group if n is not node):
            return True
        least = min(loads.values())
        return load - least > self.policy.balance_abs and load > self.policy.balance_rel * least


def _full(node: NodeInfo, load: int) -> bool:
    """Every slot is taken (a node that publishes no slot count is never full by this test)."""
    return node.load.slots > 0 and load >= node.load.slots
