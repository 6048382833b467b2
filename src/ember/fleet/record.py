"""A node's record in the registry: what it announces about itself, signed with its node key.

Wire form (the value of its Redis key): `{"record": {...}, "signature": "<base64>"}`. The
signature is over `SIGNING_CONTEXT + canonical_json(record)`: keys sorted, no spaces, UTF-8, so
the signer and every verifier hash the same bytes whatever JSON library wrote them.

Invariants:
- `verify` accepts a record only if all of these hold: it is signed; the signature verifies
  under the public key it carries; its node id is that key's fingerprint; its timestamp is
  fresh (not older than its TTL, not from the future beyond a small clock skew); its sequence
  number is not older than the last one accepted for that node id. Anything else is a
  `Refused` with the reason, never a partial record.
- Sequence numbers come from the wall clock in milliseconds, and never go back within a
  process: a restarted node continues above its last record instead of starting at 0 (which
  every gateway would refuse as a replay until the old sequence was forgotten).
- A join proof is HMAC-SHA256 of the raw public key under the fleet's join token: it shows the
  node knew the token without sending it, and cannot be moved to another key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ember.fleet.identity import NodeIdentity, decode_key, encode_key, fingerprint, verify_signature
from ember.fleet.types import NodeInfo, NodeLoad

SIGNING_CONTEXT = b"ember-fleet-record-v1\n"
VERSION = 1
CLOCK_SKEW_S = 5.0  # how far in the future a record's timestamp may be (clocks of nodes differ)
MAX_TTL_S = 3600.0


def canonical_json(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def join_proof(token: str, public_key: bytes) -> str:
    return hmac.new(token.encode(), public_key, hashlib.sha256).hexdigest()


def proves_token(proof: str | None, token: str, public_key: bytes) -> bool:
    return proof is not None and hmac.compare_digest(proof, join_proof(token, public_key))


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    public_key: bytes
    name: str
    base_url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    resident: tuple[str, ...] = ()
    stored: tuple[str, ...] = ()
    load: NodeLoad = field(default_factory=NodeLoad)
    seq: int = 0
    ts: float = 0.0  # wall-clock seconds when it was signed
    ttl: float = 10.0  # how long it stands without a newer one
    join_proof: str | None = None

    def body(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "node_id": self.node_id,
            "public_key": encode_key(self.public_key),
            "name": self.name,
            "base_url": self.base_url,
            "labels": dict(self.labels),
            "resident": sorted(self.resident),
            "stored": sorted(self.stored),
            "load": {
                "slots": self.load.slots,
                "busy": self.load.busy,
                "queue": self.load.queue,
                "tokens_per_s": self.load.tokens_per_s,
            },
            "seq": self.seq,
            "ts": self.ts,
            "ttl": self.ttl,
            "join_proof": self.join_proof,
        }

    def signed(self, identity: NodeIdentity) -> bytes:
        """The wire form: the record and its signature, as JSON bytes."""
        body = self.body()
        signature = identity.sign(SIGNING_CONTEXT + canonical_json(body))
        return canonical_json({"record": body, "signature": base64.b64encode(signature).decode("ascii")})

    def info(self) -> NodeInfo:
        return NodeInfo(
            node_id=self.node_id,
            name=self.name,
            kind="ember",
            base_url=self.base_url,
            labels=dict(self.labels),
            resident=frozenset(self.resident),
            stored=frozenset(self.stored) | frozenset(self.resident),
            load=self.load,
            last_seen=self.ts,
            verified=True,
        )


@dataclass(frozen=True)
class Refused:
    """Why a record was not accepted; `node_id` is the id it claims (or the key's), for the log."""

    node_id: str
    reason: str
    expired: bool = False  # only out of date: a node that stopped, not a record to distrust


class Sequencer:
    """Sequence numbers for one node's records: wall-clock milliseconds, strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self, now: float | None = None) -> int:
        stamp = int((time.time() if now is None else now) * 1000)
        self._last = max(self._last + 1, stamp)
        return self._last


def verify(raw: bytes | str, *, now: float, last_seq: int | None = None) -> NodeRecord | Refused:
    """The record in `raw` if it is signed, consistent and fresh; else why not."""
    try:
        envelope = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return Refused("?", "not JSON")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("record"), dict):
        return Refused("?", "not a node record")
    body: dict[str, Any] = envelope["record"]
    node_id: Any = body.get("node_id")
    claimed = node_id if isinstance(node_id, str) else "?"
    signature_text = envelope.get("signature")
    if not isinstance(signature_text, str) or not signature_text:
        return Refused(claimed, "unsigned")
    public_key = decode_key(body["public_key"]) if isinstance(body.get("public_key"), str) else None
    if public_key is None:
        return Refused(claimed, "no valid public key")
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (ValueError, binascii.Error):
        return Refused(claimed, "signature is not base64")
    try:
        message = SIGNING_CONTEXT + canonical_json(body)
    except ValueError:
        return Refused(claimed, "not canonical JSON")
    if not verify_signature(public_key, signature, message):
        return Refused(claimed, "bad signature (not signed by the key it carries)")
    if claimed != fingerprint(public_key):
        return Refused(claimed, "node id is not its public key's fingerprint")
    record = _parse(body, public_key)
    if isinstance(record, str):
        return Refused(claimed, record)
    if record.ts > now + CLOCK_SKEW_S:
        return Refused(claimed, "timestamp is in the future")
    if now - record.ts > record.ttl:
        age = now - record.ts
        return Refused(
            claimed, f"stale: signed {age:.1f} s ago, past its ttl of {record.ttl:g} s (clocks apart?)", True
        )
    if last_seq is not None and record.seq < last_seq:
        return Refused(claimed, f"sequence {record.seq} is older than {last_seq} (a replay?)")
    return record


def _parse(body: dict[str, Any], public_key: bytes) -> NodeRecord | str:
    """The typed record, or what is wrong with a (signed) body's fields."""
    if body.get("v") != VERSION:
        return f"record version {body.get('v')!r} is not {VERSION}"
    name, base_url, labels = body.get("name"), body.get("base_url"), body.get("labels")
    if not isinstance(name, str) or not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        return "name or base_url missing or not a URL"
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return "labels are not a table of strings"
    models: dict[str, tuple[str, ...]] = {}
    for key in ("resident", "stored"):
        value = body.get(key)
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            return f"{key} is not a list of model names"
        models[key] = tuple(value)
    load = body.get("load")
    if not isinstance(load, dict):
        return "load missing"
    counts: list[Any] = [load.get(k) for k in ("slots", "busy", "queue")]
    rate: Any = load.get("tokens_per_s")
    if not all(_count(c) for c in counts) or not (rate is None or _number(rate)):
        return "load is not counts"
    seq: Any = body.get("seq")
    ts: Any = body.get("ts")
    ttl: Any = body.get("ttl")
    if not _count(seq) or not _number(ts) or not _number(ttl) or not 0 < float(ttl) <= MAX_TTL_S:
        return "seq, ts or ttl missing or out of range"
    proof = body.get("join_proof")
    if proof is not None and not isinstance(proof, str):
        return "join_proof is not a string"
    return NodeRecord(
        node_id=str(body["node_id"]),
        public_key=public_key,
        name=name,
        base_url=base_url.rstrip("/"),
        labels=labels,
        resident=models["resident"],
        stored=models["stored"],
        load=NodeLoad(
            slots=int(counts[0]),
            busy=int(counts[1]),
            queue=int(counts[2]),
            tokens_per_s=None if rate is None else float(rate),
        ),
        seq=int(seq),
        ts=float(ts),
        ttl=float(ttl),
        join_proof=proof,
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN
