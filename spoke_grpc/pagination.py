"""Keyset pagination shared by every ``List*`` RPC.

A page token is url-safe base64 of ``{"l": list name, "k": last row's sort key}``: opaque
to clients, stable under concurrent inserts, and refused when replayed on another list.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from spoke_grpc.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True)
class PageRequest:
    """How many rows to return and the sort key to continue after (None: from the start)."""

    size: int
    after: list[Any] | None

    @property
    def fetch(self) -> int:
        """Rows to ask the database for: one more than a page, to know if another follows."""
        return self.size + 1


# Parsers for the parts of a sort key, so a tampered token is refused before SQL sees it.
KeyPart = Callable[[Any], Any]


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def timestamp(value: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(text(value))


def uuid_part(value: Any) -> uuid.UUID:
    return uuid.UUID(text(value))


def page_request(
    list_name: str, page_size: int, page_token: str, key_parts: Sequence[KeyPart]
) -> PageRequest:
    if page_size < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    if not page_token:
        return PageRequest(size, None)
    raw = _decode(list_name, page_token)
    if len(raw) != len(key_parts):
        raise _bad_token()
    try:
        return PageRequest(size, [part(value) for part, value in zip(key_parts, raw, strict=True)])
    except (TypeError, ValueError):
        raise _bad_token() from None


def _bad_token() -> InvalidArgument:
    return InvalidArgument.field("page_token", "is not a page token of this list; start over")


def _decode(list_name: str, token: str) -> list[Any]:
    bad = _bad_token()
    if len(token) > _MAX_TOKEN_LENGTH:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if (
        not isinstance(data, dict)
        or data.get("l") != list_name
        or not isinstance(data.get("k"), list)
    ):
        raise bad
    key: list[Any] = data["k"]
    return key


def next_page_token(list_name: str, rows: Sequence[Any], page: PageRequest, key: Any) -> str:
    """The token after the page's last row, or "" when ``rows`` held no extra row."""
    if len(rows) <= page.size:
        return ""
    last = rows[page.size - 1]
    parts = [str(part) if isinstance(part, uuid.UUID) else part for part in key(last)]
    parts = [part.isoformat() if isinstance(part, dt.datetime) else part for part in parts]
    payload = json.dumps({"l": list_name, "k": parts}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
