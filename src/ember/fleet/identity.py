"""A node's identity: an ed25519 key pair kept in EMBER_HOME, made on first use.

Invariants:
- The private key lives in `<home>/fleet/node.key` (PEM, PKCS#8, mode 0600) and never leaves it;
  `node.pub` beside it is the raw public key in base64, for an operator to copy into a fleet's
  allowlist.
- The node id is the hex sha256 of the raw 32-byte public key, so anyone holding a record can
  check that the id and the key belong together without asking anybody.
- A key file that exists but cannot be read as an ed25519 private key is an error, never
  silently replaced: replacing it would give the node a new id behind its operator's back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ember.errors import ConfigError

KEY_FILE = "node.key"
PUB_FILE = "node.pub"


def fingerprint(public_key: bytes) -> str:
    """The node id of a raw ed25519 public key."""
    return hashlib.sha256(public_key).hexdigest()


def encode_key(public_key: bytes) -> str:
    return base64.b64encode(public_key).decode("ascii")


def decode_key(text: str) -> bytes | None:
    """A raw 32-byte public key from base64 (or 64 hex digits); None if it is not one."""
    text = text.strip()
    try:
        raw = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return raw if len(raw) == 32 else None


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class NodeIdentity:
    private_key: Ed25519PrivateKey
    public_key: bytes  # raw, 32 bytes

    @property
    def node_id(self) -> str:
        return fingerprint(self.public_key)

    @property
    def public_key_b64(self) -> str:
        return encode_key(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh identity that is not saved (tests, and the simulator's nodes)."""
        return cls._of(Ed25519PrivateKey.generate())

    @classmethod
    def _of(cls, key: Ed25519PrivateKey) -> NodeIdentity:
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(private_key=key, public_key=raw)


def load_or_create(home: Path) -> NodeIdentity:
    """The node's identity from `<home>/fleet/`, made (and saved) the first time."""
    directory = home / "fleet"
    key_path = directory / KEY_FILE
    if key_path.exists():
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{key_path}: not a readable node key ({exc}); move it away to make a new one") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{key_path}: not an ed25519 key; move it away to make a new one")
        identity = NodeIdentity._of(key)
    else:
        identity = NodeIdentity.generate()
        directory.mkdir(parents=True, exist_ok=True)
        pem = identity.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Written to a temporary name with 0600 from the start, then renamed: the key is never
        # readable by others, and a crash never leaves half a key under the real name.
        partial = key_path.with_name(KEY_FILE + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(partial, key_path)
    pub_path = directory / PUB_FILE
    text = identity.public_key_b64 + "\n"
    try:
        if not pub_path.exists() or pub_path.read_text() != text:
            pub_path.write_text(text)
    except OSError:
        pass  # node.pub is a convenience copy; the key file is what matters
    return identity
