"""Enrolled nodes' load, read from what each kind of server publishes.

vLLM and the C++ llama-server are not installed here, so their answers are served from their
documented formats through httpx's MockTransport: this tests ember's reading of /slots and
/metrics. The live test (test_registry_live.py) runs llama-cpp-python's real server, which
publishes neither, enrolled."""

from __future__ import annotations

import asyncio
import json

import httpx

from ember.fleet.config import EnrolledNode
from ember.fleet.enrolled import EnrolledNodes

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests currently running on GPU.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="qwen"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="qwen"} 5.0
"""

LLAMA_METRICS = """\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 2
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 4
"""


def _server(routes: dict[str, tuple[int, str]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        status, body = routes.get(request.url.path, (404, "not found"))
        return httpx.Response(status, text=body)

    return httpx.MockTransport(handle)


def _models(*names: str) -> tuple[int, str]:
    return 200, json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]})


def _read(node: EnrolledNode, routes: dict[str, tuple[int, str]]) -> EnrolledNodes:
    nodes = EnrolledNodes([node], scrape=5, transport=_server(routes))

    async def once() -> None:
        await nodes.scrape_all()
        await nodes.aclose()

    asyncio.run(once())
    return nodes


def test_llama_server_slots_and_its_deferred_queue() -> None:
    slots = [{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}, {"id": 2, "is_processing": True}]
    node = EnrolledNode(name="ls", kind="llama-server", base_url="http://10.0.0.1:8080", labels={"tier": "edge"})
    nodes = _read(node, {"/v1/models": _models("qwen"), "/slots": (200, json.dumps(slots)),
                         "/metrics": (200, LLAMA_METRICS)})
    [info] = nodes.live()
    assert info.node_id == "enrolled:ls" and info.kind == "llama-server" and info.resident == {"qwen"}
    assert (info.load.slots, info.load.busy, info.load.queue) == (3, 2, 4)


def test_llama_server_without_slots_falls_back_to_metrics() -> None:
    node = EnrolledNode(name="ls", kind="llama-server", base_url="http://10.0.0.1:8080", slots=8)
    nodes = _read(node, {"/v1/models": _models("qwen"), "/slots": (501, "{}"), "/metrics": (200, LLAMA_METRICS)})
    [info] = nodes.live()
    assert (info.load.slots, info.load.busy, info.load.queue) == (8, 2, 4)


def test_vllm_metrics_running_and_waiting() -> None:
    node = EnrolledNode(name="v", kind="vllm", base_url="http://10.0.0.2:8000/v1")
    nodes = _read(node, {"/v1/models": _models("qwen", "llama"), "/metrics": (200, VLLM_METRICS)})
    [info] = nodes.live()
    assert info.base_url == "http://10.0.0.2:8000" and info.stored == {"qwen", "llama"}
    assert (info.load.slots, info.load.busy, info.load.queue) == (0, 3, 5)


def test_missing_load_endpoints_leave_the_node_live_and_a_failing_models_list_does_not() -> None:
    node = EnrolledNode(name="v", kind="vllm", base_url="http://10.0.0.2:8000")
    assert [n.load.busy for n in _read(node, {"/v1/models": _models("qwen")}).live()] == [0]
    down = _read(node, {"/v1/models": (500, "boom")})
    assert down.live() == [] and down.down() == [("v", "GET http://10.0.0.2:8000/v1/models failed: answered 500")]
    garbage = _read(node, {"/v1/models": (200, "[1, 2]")})
    assert garbage.live() == [] and "models" in garbage.down()[0][1]
