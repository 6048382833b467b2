"""Guardrails: API keys and scopes, rate limits, budgets, request caps (the audit log is guard/audit.py).

The Guard holds the state (key store, limiters); GuardMiddleware (guard/auth.py) asks it about each
request; Guard.observe hears each finished request's tokens and cost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ember.config import Settings
from ember.errors import EmberError, Forbidden, PayloadTooLarge, RateLimited, Unauthorized
from ember.gateway.usage import UsageRecord
from ember.guard.auth import GuardMiddleware, Principal, auth_enabled, required_scope
from ember.guard.keys import KeyRecord, KeyStore
from ember.guard.limits import Admission, MemoryLimiter

__all__ = ["Guard", "GuardMiddleware", "Principal", "auth_enabled", "build_guard", "required_scope"]

log = logging.getLogger("ember.guard")

_UNAUTHORIZED = "invalid or missing API key"


class Guard:
    def __init__(self, settings: Settings, telemetry: Any = None) -> None:
        self.settings = settings
        self.telemetry = telemetry
        self.enabled = auth_enabled(settings)
        self.keys = KeyStore(settings.state_dir / "keys.db")
        usage_db = settings.state_dir / "usage.db"
        self.memory = MemoryLimiter(usage_db)
        self.redis = None
        if settings.redis_url:
            from ember.guard.redis_limits import RedisLimiter

            self.redis = RedisLimiter(settings.redis_url, usage_db, on_state=self._redis_state)
            self._redis_state(True)
        # The latest record of each key seen at admission: observe() gets only the key's name.
        self._seen: dict[str, KeyRecord] = {}
        if self.enabled:
            log.info(
                "API keys are required (EMBER_AUTH=%s, bound to %s); make one with "
                "`ember keys create --name NAME --scopes chat,embed,models`",
                settings.auth,
                settings.host,
            )
            try:
                self.keys.list()  # open now, so a broken store shows in the log at start
            except Exception as exc:  # any failure: requests will get 503, not access
                log.error(
                    "the API key store %s cannot be read: %s; requests needing a key get 503", self.keys.path, exc
                )

    # -- the middleware's questions -----------------------------------------------------------

    def authenticate(self, secret: str | None) -> KeyRecord:
        """The key's record, or 401 (one message for missing, unknown, expired and revoked)."""
        if not secret:
            raise Unauthorized(_UNAUTHORIZED)
        key = self.keys.lookup(secret)  # 503 when the store cannot be read: fail closed
        if key is None or not key.usable(time.time()):
            raise Unauthorized(_UNAUTHORIZED)
        self._seen[key.name] = key
        return key

    def trust(self, key: KeyRecord) -> KeyRecord:
        """A key this process vouches for (a batch line running as its batch's key, guard/auth.py
        BATCH_KEY): no secret to check, but expiry and revocation apply as to a presented key."""
        if not key.usable(time.time()):
            raise Unauthorized(_UNAUTHORIZED)
        self._seen[key.name] = key
        return key

    async def admit(self, key: KeyRecord) -> Admission:
        if self.redis is not None and self.redis.up:
            try:
                return await self.redis.admit(key, time.time())
            except Exception as exc:  # RedisError, or a reply we cannot read
                self.redis.mark_down(exc)
        return self.memory.admit(key)

    def release(self, key: KeyRecord, admission: Admission) -> None:
        if admission.lease is not None and self.redis is not None:
            self.redis.release(key, admission.lease)
        else:
            self.memory.release(key)

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: count tokens and spend against the key's limits and budgets."""
        key = self._seen.get(record.key) if record.key else None
        if key is None or not key.limited:
            return
        tokens = record.tokens_in + record.tokens_out
        if tokens <= 0 and record.cost <= 0:
            return
        if self.redis is not None and self.redis.up:
            try:
                self.redis.record(
                    key, tokens, record.cost, time.time(), fallback=lambda: self.memory.record(key, tokens, record.cost)
                )
                return
            except RuntimeError:  # no running event loop: count here
                pass
        self.memory.record(key, tokens, record.cost)

    def reject(
        self,
        scope: Any,
        error: EmberError,
        key: KeyRecord | None,
        body: bytes | None,
        started: float,
        reason: str | None,
        *,
        protocol: str,
    ) -> None:
        """Count a refused request in telemetry and report it as a usage record."""
        if reason is None:
            reason = {Unauthorized: "auth", Forbidden: "scope", PayloadTooLarge: "size", RateLimited: "rpm"}.get(
                type(error), "auth" if error.status_code == 503 else "size"
            )
        count = getattr(self.telemetry, "count_rejection", None)
        if count is not None:
            try:
                count(reason)
            except Exception:  # metrics must not break serving
                log.exception("count_rejection failed")
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        gateway = getattr(services, "gateway", None)
        if gateway is None:
            return
        path = scope["path"]
        gateway.emit(
            UsageRecord(
                ts=time.time(),
                endpoint=path,
                protocol=protocol,
                model=_model_of(body),
                provider="",
                key=key.name if key else None,
                latency_ms=(time.perf_counter() - started) * 1000,
                status=error.status_code,
                error=f"{reason}: {error.message}",
            )
        )

    def _redis_state(self, up: bool) -> None:
        report = getattr(self.telemetry, "set_redis_up", None)
        if report is not None:
            try:
                report(up)
            except Exception:  # metrics must not break serving
                log.exception("set_redis_up failed")

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        self.keys.close()


def _model_of(body: bytes | None) -> str:
    if not body or len(body) > 65536:
        return ""
    import json

    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    model = data.get("model") if isinstance(data, dict) else None
    # The guard refuses before the JSON-body check: a lone surrogate would fail the row's write.
    return model.encode("utf-8", "backslashreplace").decode() if isinstance(model, str) else ""


def build_guard(settings: Settings, telemetry: Any = None) -> Guard:
    return Guard(settings, telemetry)
