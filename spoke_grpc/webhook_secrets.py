"""Webhook signing secrets and signatures.

Signing a POST needs the secret itself, so it cannot be stored as a one-way hash. Instead
of storing it (even encrypted), it is derived: ``spkwh_`` + base64url(HMAC-SHA256(server
key, org id ‖ webhook id ‖ salt)), where the server key is ``server_secrets``'
``webhook_secret_key`` (made by a migration, shared by every replica, like the page-token
key) and the salt is 32 random bytes kept on the webhook row. Rotating draws a new salt. A
copy of the ``webhooks`` table alone yields no secret; whoever can read both tables can
sign, as the server must.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid

from psycopg import AsyncConnection

SECRET_PREFIX = "spkwh_"
KEY_NAME = "webhook_secret_key"
SALT_BYTES = 32
_CONTEXT = b"spoke-webhook-secret\x00"


async def load_key(conn: AsyncConnection) -> bytes:
    cur = await conn.execute("SELECT value FROM server_secrets WHERE name = %s", [KEY_NAME])
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("server_secrets has no webhook secret key; run the migrations")
    return bytes(row[0])


def new_salt() -> bytes:
    return secrets.token_bytes(SALT_BYTES)


def secret(key: bytes, org_id: uuid.UUID, webhook_id: uuid.UUID, salt: bytes) -> str:
    """The webhook's signing secret (the same every time for the same salt)."""
    mac = hmac.new(key, _CONTEXT + org_id.bytes + webhook_id.bytes + salt, hashlib.sha256)
    return SECRET_PREFIX + base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def signature(secret_value: str, timestamp: int, body: bytes) -> str:
    """The ``X-Spoke-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``timestamp.body``."""
    signed = str(timestamp).encode() + b"." + body
    return "sha256=" + hmac.new(secret_value.encode(), signed, hashlib.sha256).hexdigest()
