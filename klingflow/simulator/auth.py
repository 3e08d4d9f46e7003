"""Credentials as fal checks them: `Key <secret>` for the API, short-lived signed tokens for the CDN.

The raw key never leaves this module: everything else sees `key_id`, a short sha256 prefix.
Tokens and signed upload URLs are HMACs over a per-state-dir secret, so they stay valid across a
restart on the same state_dir (fal_client caches its CDN token until `expires_at`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path

TOKEN_TTL_S = 3600
DEFAULT_ADMIN_KEY = "klingflow-simulator-admin"


def key_from_header(value: str | None) -> str | None:
    """The key from an `Authorization: Key <key>` header, or None if absent/malformed."""
    if not value:
        return None
    scheme, _, key = value.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "key" and key else None


def key_id(key: str) -> str:
    """A short, stable, non-reversible id for a key (what ledger, counters and logs hold)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def load_secret(state_dir: Path) -> bytes:
    """The state dir's HMAC secret, created on first use (owner-only permissions)."""
    path = state_dir / "secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


class Signer:
    """Issues and checks CDN bearer tokens and signed upload paths."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def sign(self, message: str) -> str:
        """Hex HMAC of a message."""
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, message: str, signature: str) -> bool:
        """Whether a signature matches a message."""
        return hmac.compare_digest(self.sign(message), signature)

    def issue_token(self, owner: str, ttl_s: int = TOKEN_TTL_S) -> tuple[str, datetime]:
        """A CDN token for a key id and its expiry (aware UTC, as fal_client requires)."""
        expires = int(time.time()) + ttl_s
        body = f"{owner}.{expires}"
        return f"{body}.{self.sign(body)}", datetime.fromtimestamp(expires, UTC)

    def token_owner(self, header: str | None) -> str | None:
        """The key id behind a valid, unexpired `Authorization: Bearer <token>` header."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        parts = token.strip().split(".")
        if scheme.lower() != "bearer" or len(parts) != 3:
            return None
        owner, expires, signature = parts
        if not expires.isdigit() or int(expires) < time.time():
            return None
        return owner if self.verify(f"{owner}.{expires}", signature) else None
