"""Secrets handed to callers (API and invitation tokens): made here, stored only as SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

API_TOKEN_PREFIX = "spoke_"
INVITATION_TOKEN_PREFIX = "spkinv_"
_PREFIX_SHOWN = 10


@dataclass(frozen=True)
class IssuedToken:
    """A new secret: ``value`` goes to the caller once, ``digest`` to the database."""

    value: str
    digest: bytes

    @property
    def prefix(self) -> str:
        return self.value[:_PREFIX_SHOWN]


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue(prefix: str = API_TOKEN_PREFIX) -> IssuedToken:
    """``prefix`` + 32 random bytes, url-safe base64 without padding."""
    value = prefix + secrets.token_urlsafe(32)
    return IssuedToken(value=value, digest=digest(value))
