"""/admin/audit: the newest audit rows and a check of the hash chain (the dashboard's Audit page).

Reads go through a read-only connection of their own (guard/audit.py open_readonly), never the
writer's, after the writer's queue is flushed so a row for a request just answered is there.
Prompt text is never returned: a row that holds an encrypted prompt says so (`prompt_encrypted`),
and reading it stays with `ember audit tail --show-prompts`, which needs EMBER_AUDIT_KEY.
Both reads run in a worker thread: a long chain takes a while to walk and must not stall requests.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from ember.api.deps import Services, services
from ember.guard import audit

router = APIRouter(prefix="/admin/audit", tags=["admin"])


def _row_view(row: audit.Row) -> dict[str, Any]:
    fields = row.fields()
    view: dict[str, Any] = {"seq": row.seq, "hash": row.hash, "prev_hash": row.prev_hash}
    if fields is None:  # a row edited into something that is not a JSON object: show it as it is
        return {**view, "kind": "unreadable", "data": row.data}
    encrypted = "prompt" in fields
    fields = {k: v for k, v in fields.items() if k not in ("prompt", "seq")}
    return {**fields, **view, "prompt_encrypted": encrypted}


def _newest(svc: Services, limit: int, before: int | None) -> dict[str, Any]:
    svc.audit.flush()
    db = audit.open_readonly(svc.audit.path)
    try:
        query = "SELECT seq, data, prev_hash, hash FROM audit"
        params: tuple[int, ...] = (limit,)
        if before is not None:
            query += " WHERE seq < ?"
            params = (before, limit)
        found = db.execute(query + " ORDER BY seq DESC LIMIT ?", params).fetchall()
        total = int(db.execute("SELECT count(*) FROM audit").fetchone()[0])
    finally:
        db.close()
    data = [_row_view(audit.Row(int(s), str(d), str(p), str(h))) for s, d, p, h in found]
    return {"object": "list", "data": data, "total": total, "has_more": len(data) == limit and data[-1]["seq"] > 1}


def _verify(svc: Services) -> dict[str, Any]:
    svc.audit.flush()
    db = audit.open_readonly(svc.audit.path)
    try:
        count, problems = audit.verify(db)
    finally:
        db.close()
    return {"ok": not problems, "rows": count, "problems": problems}


@router.get("")
async def newest(
    limit: int = Query(50, ge=1, le=1000, description="How many rows, newest first."),
    before: int | None = Query(None, ge=1, le=2**62, description="Only rows with a seq below this (the next page)."),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    return await run_in_threadpool(_newest, svc, limit, before)


@router.get("/verify")
async def verify_get(svc: Services = Depends(services)) -> dict[str, Any]:
    return await run_in_threadpool(_verify, svc)


@router.post("/verify")
async def verify_post(svc: Services = Depends(services)) -> dict[str, Any]:
    """The same check; POST for clients that treat a GET as cacheable."""
    return await run_in_threadpool(_verify, svc)
