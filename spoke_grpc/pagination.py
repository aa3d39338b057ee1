"""Keyset pagination shared by every ``List*`` RPC, with authenticated page tokens.

A page token is ``base64url(payload) "." base64url(mac)``: the payload names the list and
the last row's sort key; the MAC (HMAC-SHA256, truncated to 128 bits) covers the payload
and the list's scope (whose list it is: the caller, the organization), under a key kept in
the database so that every replica accepts every other's tokens. A token from another
list or scope, an edited or a hand-made one, is refused before anything reads its content.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from spoke_grpc.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_LENGTH = 1024
_MAC_BYTES = 16
KEY_NAME = "page_token_key"


@dataclass(frozen=True)
class PageRequest:
    """How many rows to return and the sort key to continue after (None: from the start)."""

    size: int
    after: list[Any] | None

    @property
    def fetch(self) -> int:
        """Rows to ask the database for: one more than a page, to know if another follows."""
        return self.size + 1


# Parsers for the parts of a sort key.
KeyPart = Callable[[Any], Any]


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def timestamp(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(text(value))


def uuid_part(value: Any) -> uuid.UUID:
    return uuid.UUID(text(value))


async def load_key(conn: AsyncConnection) -> bytes:
    """The shared page-token key (made by a migration, one per database)."""
    cur = await conn.execute("SELECT value FROM server_secrets WHERE name = %s", [KEY_NAME])
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("server_secrets has no page token key; run the migrations")
    return bytes(row[0])


class PageTokens:
    """Makes and checks page tokens under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def request(
        self,
        list_name: str,
        scope: object,
        page_size: int,
        page_token: str,
        key_parts: Sequence[KeyPart],
    ) -> PageRequest:
        """The page asked for; INVALID_ARGUMENT for a negative size or a foreign token."""
        if page_size < 0:
            raise InvalidArgument.field("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if not page_token:
            return PageRequest(size, None)
        raw = self._open(list_name, scope, page_token)
        if len(raw) != len(key_parts):
            raise _bad_token()
        try:
            return PageRequest(
                size, [part(value) for part, value in zip(key_parts, raw, strict=True)]
            )
        except (TypeError, ValueError):
            raise _bad_token() from None

    def next_token(
        self,
        list_name: str,
        scope: object,
        rows: Sequence[Any],
        page: PageRequest,
        key: Callable[[Any], Sequence[Any]],
    ) -> str:
        """The token after the page's last row, or "" when ``rows`` held no extra row."""
        if len(rows) <= page.size:
            return ""
        parts = [_jsonable(part) for part in key(rows[page.size - 1])]
        payload = json.dumps({"l": list_name, "k": parts}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(list_name, scope, payload))}"

    def _mac(self, list_name: str, scope: object, payload: bytes) -> bytes:
        message = f"{list_name}\0{scope}\0".encode() + payload
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def _open(self, list_name: str, scope: object, token: str) -> list[Any]:
        bad = _bad_token()
        if len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 1:
            raise bad
        encoded_payload, encoded_mac = token.split(".")
        try:
            payload = _unb64(encoded_payload)
            mac = _unb64(encoded_mac)
        except (binascii.Error, ValueError):
            raise bad from None
        if not hmac.compare_digest(mac, self._mac(list_name, scope, payload)):
            raise bad
        data = json.loads(payload)
        if not isinstance(data, dict) or data.get("l") != list_name:
            raise bad
        key = data.get("k")
        if not isinstance(key, list):
            raise bad
        return key


def _bad_token() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a page token of this list; start over")


def _jsonable(part: Any) -> Any:
    if isinstance(part, uuid.UUID):
        return str(part)
    if isinstance(part, dt.datetime):
        return part.isoformat()
    return part


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
