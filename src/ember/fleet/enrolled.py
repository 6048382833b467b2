"""Nodes the operator enrolls by hand (`[[fleet.nodes]]`): vLLM, llama-server, any OpenAI API.

They cannot sign a record, so they are trusted by config, and what the fleet knows of them is
read over HTTP every `scrape` seconds:
- models: GET <base_url>/v1/models (the `id`s); this read is also the liveness check;
- load, from what each kind publishes:
  - llama-server: GET /slots (one entry per slot; `is_processing`, or `state` != 0 on older
    builds), else GET /metrics (`llamacpp:requests_processing`, `llamacpp:requests_deferred`);
  - vllm: GET /metrics (`vllm:num_requests_running`, `vllm:num_requests_waiting`);
  - openai: nothing; its load is what the router counts itself.
  A server that publishes running/waiting but no slot count gets the enrolment's `slots`.

Invariants:
- An enrolled node is live only while its last /v1/models read succeeded and is recent (three
  scrape periods); an unreachable one is not in the table, and `down()` says why.
- A load endpoint that is missing or unreadable leaves the load unknown (zeros), never the node
  down: the models list is what decides whether it can serve.
- Only the operator's base_url is ever contacted; the polls run in one background task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ember.fleet.config import EnrolledNode
from ember.fleet.periodic import Periodic
from ember.fleet.types import NodeInfo, NodeLoad

log = logging.getLogger("ember.fleet")

ENROLLED_PREFIX = "enrolled:"


def enrolled_id(name: str) -> str:
    return ENROLLED_PREFIX + name


@dataclass
class _State:
    node: EnrolledNode
    info: NodeInfo | None = None  # the last successful read
    error: str | None = "not read yet"
    warned: set[str] = field(default_factory=set)


class EnrolledNodes:
    def __init__(
        self,
        nodes: Sequence[EnrolledNode],
        scrape: float,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._states = {enrolled_id(n.name): _State(n) for n in nodes}
        self._scrape = scrape
        self._clock = clock
        # trust_env off: a proxy set for the internet must not carry calls to the operator's hosts.
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(2.0), transport=transport, trust_env=False)
        self._scraper = Periodic("fleet-enrolled", scrape, self.scrape_all, "reading the enrolled nodes")

    def live(self) -> list[NodeInfo]:
        now = self._clock()
        return [
            s.info
            for s in self._states.values()
            if s.info is not None and s.error is None and now - s.info.last_seen <= 3 * self._scrape
        ]

    def down(self) -> list[tuple[str, str]]:
        return [(s.node.name, s.error) for s in self._states.values() if s.error is not None]

    def api_key(self, node_id: str) -> str | None:
        state = self._states.get(node_id)
        return state.node.api_key() if state is not None else None

    async def start(self) -> None:
        if not self._states:
            return
        await self.scrape_all()  # a first reading before the server takes requests
        self._scraper.start()

    async def aclose(self) -> None:
        await self._scraper.stop()
        await self._http.aclose()

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self._scrape_one(s) for s in self._states.values()))

    async def _scrape_one(self, state: _State) -> None:
        node = state.node
        headers = {"Authorization": f"Bearer {key}"} if (key := node.api_key()) else {}
        try:
            models = await self._models(node, headers)
        except (httpx.HTTPError, ValueError) as exc:
            error = f"GET {node.base_url}/v1/models failed: {_describe(exc)}"
            if state.error != error:
                log.warning("fleet: enrolled node %s is not live: %s", node.name, error)
            state.error = error
            return
        if state.error is not None and state.info is not None:
            log.info("fleet: enrolled node %s answers again", node.name)
        load = await self._load(state, headers)
        state.error = None
        state.info = NodeInfo(
            node_id=enrolled_id(node.name),
            name=node.name,
            kind=node.kind,
            base_url=node.base_url,
            labels=dict(node.labels),
            # What an OpenAI-style server lists is loaded and served as it is: resident.
            resident=frozenset(models),
            stored=frozenset(models),
            load=load,
            last_seen=self._clock(),
            verified=False,
        )

    async def _models(self, node: EnrolledNode, headers: dict[str, str]) -> list[str]:
        response = await self._http.get(node.base_url + "/v1/models", headers=headers)
        response.raise_for_status()
        body = response.json()
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise ValueError("its /v1/models answer has no data list")
        return [str(m["id"]) for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def _load(self, state: _State, headers: dict[str, str]) -> NodeLoad:
        node = state.node
        slots = node.slots or 0
        if node.kind == "openai":
            return NodeLoad(slots=slots)
        if node.kind == "llama-server":
            from_slots = await self._slots(state, headers)
            found = await self._metrics(
                state, headers, {"llamacpp:requests_processing": "busy", "llamacpp:requests_deferred": "queue"}
            )
            if from_slots is not None:  # its slots are exact; only the queue is in /metrics alone
                return replace(from_slots, queue=int(found.get("queue", 0)))
        else:
            found = await self._metrics(
                state, headers, {"vllm:num_requests_running": "busy", "vllm:num_requests_waiting": "queue"}
            )
        return NodeLoad(slots=slots, busy=int(found.get("busy", 0)), queue=int(found.get("queue", 0)))

    async def _slots(self, state: _State, headers: dict[str, str]) -> NodeLoad | None:
        body = await self._get_json(state, "/slots", headers)
        if not isinstance(body, list):
            return None
        busy = sum(
            1
            for slot in body
            if isinstance(slot, dict) and (slot.get("is_processing") is True or slot.get("state", 0) not in (0, None))
        )
        return NodeLoad(slots=len(body), busy=busy)

    async def _metrics(self, state: _State, headers: dict[str, str], wanted: dict[str, str]) -> dict[str, float]:
        """The sums of the wanted Prometheus samples (over their label sets), by their short names."""
        try:
            response = await self._http.get(state.node.base_url + "/metrics", headers=headers)
        except httpx.HTTPError as exc:
            self._warn_once(state, "/metrics", _describe(exc))
            return {}
        if response.status_code != 200:
            self._warn_once(state, "/metrics", f"answered {response.status_code}")
            return {}
        found: dict[str, float] = {}
        try:
            for family in text_string_to_metric_families(response.text):
                for sample in family.samples:
                    if sample.name in wanted:
                        short = wanted[sample.name]
                        found[short] = found.get(short, 0.0) + float(sample.value)
        except ValueError as exc:
            self._warn_once(state, "/metrics", f"not Prometheus text ({exc})")
            return {}
        return found

    async def _get_json(self, state: _State, path: str, headers: dict[str, str]) -> object:
        try:
            response = await self._http.get(state.node.base_url + path, headers=headers)
            if response.status_code != 200:
                self._warn_once(state, path, f"answered {response.status_code}")
                return None
            return response.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._warn_once(state, path, _describe(exc))
            return None

    def _warn_once(self, state: _State, path: str, why: str) -> None:
        # A server without the endpoint says so on every poll; say it once, at debug level:
        # the node stays usable, with the load the router counts itself.
        if path not in state.warned:
            state.warned.add(path)
            log.debug("fleet: enrolled node %s publishes no load at %s (%s)", state.node.name, path, why)


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"answered {exc.response.status_code}"
    return str(exc) or type(exc).__name__
