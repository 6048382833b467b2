"""/admin/keys: list, create and revoke API keys over HTTP (the dashboard's Keys page).

The same key store as `ember keys` (guard/keys.py, the server's own KeyStore): a key made here
works on the next request, a revoked one is refused from the next request. The secret leaves the
server once, in the answer to its POST; every other answer carries only the record (name, prefix,
scopes, limits, dates). Each create and revoke is an admin row in the audit log, naming the key
that did it. Unknown fields are refused (400), so a misspelt limit never makes an unlimited key.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ember.api.deps import Services, request_context, services
from ember.errors import BadRequest
from ember.guard.keys import SCOPES, KeyRecord, parse_expires, parse_scopes

router = APIRouter(prefix="/admin/keys", tags=["admin"])


MAX_INT = 2**62
LAST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC).timestamp()


def _default_scopes() -> list[str]:
    return ["chat", "embed", "models"]  # the CLI's default


class CreateKey(BaseModel):
    """The body of POST /admin/keys: the CLI's `ember keys create` options, by the same names."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    # Checked by parse_scopes against guard/keys.py SCOPES: one list of scopes, one message.
    scopes: list[str] = Field(default_factory=_default_scopes, min_length=1)
    # Bounded so every value fits SQLite's 64-bit INTEGER (a larger one would fail the insert).
    rpm: int | None = Field(None, ge=1, le=MAX_INT)
    tpm: int | None = Field(None, ge=1, le=MAX_INT)
    max_concurrent: int | None = Field(None, ge=1, le=MAX_INT)
    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_tokens: int | None = Field(None, ge=0, le=MAX_INT)
    budget_period: Literal["day", "month", "total"] = "month"
    expires: str | None = Field(None, description="'30d', '12h', '2w' or a date such as 2026-12-31 (UTC).")


def key_view(key: KeyRecord, now: float | None = None) -> dict[str, Any]:
    """A key's record as JSON: never its hash or secret."""
    now = time.time() if now is None else now
    if key.revoked is not None:
        status = "revoked"
    elif key.expires is not None and now >= key.expires:
        status = "expired"
    else:
        status = "active"
    return {
        "name": key.name,
        "prefix": key.prefix,
        "scopes": sorted(key.scopes),
        "rpm": key.rpm,
        "tpm": key.tpm,
        "max_concurrent": key.max_concurrent,
        "budget_usd": key.budget_usd,
        "budget_tokens": key.budget_tokens,
        "budget_period": key.budget_period,
        "created": key.created,
        "expires": key.expires,
        "revoked": key.revoked,
        "status": status,
    }


def _find(svc: Services, name: str) -> KeyRecord | None:
    return next((k for k in svc.guard.keys.list() if k.name == name), None)


@router.get("")
async def list_keys(svc: Services = Depends(services)) -> dict[str, Any]:
    now = time.time()
    return {"object": "list", "data": [key_view(k, now) for k in svc.guard.keys.list()], "scopes": list(SCOPES)}


@router.post("", status_code=201)
async def create_key(body: CreateKey, http: Request, svc: Services = Depends(services)) -> JSONResponse:
    # parse_scopes and parse_expires are the CLI's: one set of rules and messages for both.
    scopes = parse_scopes(",".join(body.scopes))
    expires = None
    if body.expires:
        try:
            expires = parse_expires(body.expires)
        except OverflowError:  # '99…9d' with hundreds of digits: no float holds it
            expires = LAST_EXPIRY + 1
        if expires > LAST_EXPIRY:  # past year 9999 no date can be written (`ember keys list` among others)
            raise BadRequest(f"--expires {body.expires[:40]!r} is after the year 9999", param="expires")
    secret, record = svc.guard.keys.create(
        body.name,
        scopes,
        rpm=body.rpm,
        tpm=body.tpm,
        max_concurrent=body.max_concurrent,
        budget_usd=body.budget_usd,
        budget_tokens=body.budget_tokens,
        budget_period=body.budget_period,
        expires=expires,
    )
    detail = {"name": record.name, "scopes": sorted(scopes), "rpm": body.rpm, "tpm": body.tpm}
    svc.audit.admin(
        "keys.create", request_context(http).key_name, {**detail, "budget_usd": body.budget_usd}, status=201
    )
    # no-store: the one answer that holds the secret must not sit in a cache.
    return JSONResponse({**key_view(record), "key": secret}, status_code=201, headers={"Cache-Control": "no-store"})


async def _revoke(name: str, http: Request, svc: Services) -> dict[str, Any]:
    svc.guard.keys.revoke(name)  # NotFound (404) for an unknown name; a second revoke keeps the first date
    svc.audit.admin("keys.revoke", request_context(http).key_name, {"name": name})
    record = _find(svc, name)
    assert record is not None  # revoke() just found it, and keys are never deleted
    return key_view(record)


@router.delete("/{name}")
async def delete_key(name: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    """Revoke (the row stays, so usage and audit rows still name a known key)."""
    return await _revoke(name, http, svc)


@router.post("/{name}/revoke")
async def revoke_key(name: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    return await _revoke(name, http, svc)
