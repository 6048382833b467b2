"""GET /admin/fleet: the nodes this server knows, their labels, models, load and last heartbeat.

Admin scope (the guard gives every /admin/ path that scope). The same table `ember fleet nodes`
prints. A server that is in no fleet answers `configured: false` and empty lists, not 404, so a
dashboard or a script can ask any server. The registry's URL is shown without its password.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from ember.api.deps import Services, services
from ember.fleet.config import redacted_url
from ember.fleet.types import NodeInfo

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/fleet")
async def fleet(svc: Services = Depends(services)) -> dict[str, Any]:
    now = time.time()
    fleet = svc.fleet
    if fleet is None:
        return {"configured": False, "self": None, "nodes": [], "models": [], "down": [], "refused": []}
    registry = fleet.registry
    config = fleet.config
    return {
        "configured": True,
        "self": {
            "node_id": fleet.identity.node_id,
            "name": config.node_name(),
            "public_key": fleet.identity.public_key_b64,
            "role": config.role,
            "announcing": fleet.announcer is not None,
            "registry": redacted_url(config.join),
            "ttl": config.ttl,
        },
        "nodes": [_node(n, now, n.node_id == fleet.identity.node_id) for n in fleet.members()],
        "models": list(registry.models()),
        "down": [{"name": name, "error": error} for name, error in registry.enrolled_down()],
        "refused": [{"node_id": r.node_id, "reason": r.reason, "at": r.at} for r in registry.refused()],
    }


def _node(node: NodeInfo, now: float, is_self: bool) -> dict[str, Any]:
    load = node.load
    return {
        "node_id": node.node_id,
        "short_id": node.short_id,
        "name": node.name,
        "kind": node.kind,
        "base_url": node.base_url,
        "labels": dict(node.labels),
        "resident": sorted(node.resident),
        "stored": sorted(node.stored),
        "load": {
            "slots": load.slots,
            "busy": load.busy,
            "queue": load.queue,
            "tokens_per_s": load.tokens_per_s,
            "utilisation": round(load.utilisation, 3),
        },
        "last_seen": node.last_seen,
        "age_s": round(max(0.0, now - node.last_seen), 3),
        "verified": node.verified,
        "self": is_self,
    }
