"""The fleet's shared plain data: what the registry knows about a node, and what the router needs.

Invariants:
- `NodeInfo` is what the gateway believes about one node right now: built from a signed record
  that verified (an ember node) or from an operator's enrolment plus its scraped load (a vLLM or
  llama-server node). An unverified record never becomes a NodeInfo.
- A node id is the hex sha256 fingerprint of its raw ed25519 public key (first 16 hex digits are
  what people see); an enrolled node's id is `enrolled:<name>`.
- `FleetView` is read-only to the router: the registry (fleet/registry.py) owns the table and
  drops a node whose heartbeat is older than the TTL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

NodeKind = Literal["ember", "llama-server", "vllm", "openai"]


@dataclass(frozen=True)
class NodeLoad:
    slots: int = 0  # sequences it can decode at once (all models)
    busy: int = 0  # sequences decoding now
    queue: int = 0  # requests waiting for a slot
    tokens_per_s: float | None = None  # recent generation rate

    @property
    def utilisation(self) -> float:
        """(busy + queued) per slot; 0 for a node that published no slot count."""
        return 0.0 if self.slots <= 0 else (self.busy + self.queue) / self.slots


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    name: str  # a readable name (the node's own, or the enrolment's)
    kind: NodeKind
    base_url: str  # the API root, without /v1 (ember, llama-server and vLLM all serve /v1 below it)
    labels: Mapping[str, str] = field(default_factory=dict)  # region, zone, tier ("edge" / "cloud"), ...
    resident: frozenset[str] = frozenset()  # models loaded now
    stored: frozenset[str] = frozenset()  # models it can load (ember: its store); includes resident
    load: NodeLoad = field(default_factory=NodeLoad)
    last_seen: float = 0.0  # wall-clock time of its last heartbeat or scrape
    verified: bool = False  # True for a signed record that verified; enrolled nodes are trusted by config

    @property
    def short_id(self) -> str:
        return self.node_id[:16]

    def serves(self, model: str) -> bool:
        return model in self.resident or model in self.stored


class FleetView(Protocol):
    """What the gateway and the router read of the fleet (fleet/registry.py implements it)."""

    def nodes(self) -> Sequence[NodeInfo]:
        """Every live node, newest table (no I/O: the registry refreshes it in the background)."""
        ...

    def candidates(self, model: str) -> Sequence[NodeInfo]:
        """Live nodes that can serve `model`, resident ones first."""
        ...

    def models(self) -> Sequence[str]:
        """Every model some live node can serve, sorted."""
        ...

    def api_key(self, node: NodeInfo) -> str | None:
        """The key the gateway sends to `node` (None: none), for the fleet strategy's providers."""
        ...


class NodeChooser(Protocol):
    """Orders the nodes for one request (fleet/routing.py implements it; the gateway's `fleet`
    strategy and the fleet simulator in ember.bench both use it, so the benchmark measures the
    router that serves).

    `order` is pure given its state: the candidates that can serve the model, best first
    (longest cached prefix unless that node is over the balance threshold, then least loaded;
    resident before load-needed; `tiers` constrains and orders by the `tier` label, e.g.
    ("edge", "cloud"): nodes of an unlisted tier are left out when tiers are given).
    `sent` records that a prompt went to a node (its prefix tree learns it, its in-flight count
    rises); `finished` lowers the in-flight count; `forget` drops a node that left the fleet.
    """

    def order(
        self, model: str, prompt: str, candidates: Sequence[NodeInfo], tiers: Sequence[str] = ()
    ) -> list[NodeInfo]: ...

    def sent(self, node_id: str, model: str, prompt: str) -> None: ...

    def finished(self, node_id: str) -> None: ...

    def forget(self, node_id: str) -> None: ...
