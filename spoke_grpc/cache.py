"""The read path's cache: who a token is, the organization a reference names, the caller's
role in it and its limits, as the auth interceptor's one statement returned them.

Only read-only calls use it; writes always read (and lock) the rows in their transaction.
Staleness is bounded:

- Every change to cached rows is announced on the PostgreSQL channel ``spoke_cache`` by
  triggers (migration 0011), whoever makes it. A listener on a connection of its own drops
  the entries named ('org:<id>', 'user:<id>') as the notifications arrive, typically within
  milliseconds of the commit.
- The listener pings itself through the channel every ``PING_SECONDS``; while its last ping
  is older than ``MAX_SILENCE_SECONDS`` (connection lost, stuck, or not yet started) the
  cache is off: nothing is served from it and it is emptied, so a lost listener can never
  serve stale entries. Entries also expire after ``TTL_SECONDS`` whatever happens.
- A write made through this process drops the entries of its org and of its caller as it
  commits, before the response: this process sees its own security-relevant changes at once.

Memory is bounded: at most ``max_entries`` entries, least recently used first out.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from psycopg import sql

from spoke_grpc import background
from spoke_grpc.config import Settings
from spoke_grpc.database import connect
from spoke_grpc.store.access import Resolved

log = logging.getLogger(__name__)

CHANNEL = "spoke_cache"
PING_SECONDS = 0.25
MAX_SILENCE_SECONDS = 1.0
TTL_SECONDS = 60.0
DEFAULT_MAX_ENTRIES = 10_000

Key = tuple[bytes | None, str | None, bool]  # (token digest, org reference, public read)


@dataclass(frozen=True)
class _Entry:
    value: Resolved
    expires: float


class AccessCache:
    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._by_org: dict[uuid.UUID, set[Key]] = {}
        self._by_user: dict[uuid.UUID, set[Key]] = {}
        self._max_entries = max_entries
        self._last_ping = float("-inf")
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    @property
    def enabled(self) -> bool:
        return time.monotonic() - self._last_ping < MAX_SILENCE_SECONDS

    def get(self, key: Key) -> Resolved | None:
        if not self.enabled:
            if self._entries:
                self.clear()
            return None
        entry = self._entries.get(key)
        if entry is None or entry.expires < time.monotonic():
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, key: Key, value: Resolved) -> None:
        if not self.enabled:
            return
        self._forget(key)
        self._entries[key] = _Entry(value, time.monotonic() + TTL_SECONDS)
        if value.org is not None:
            self._by_org.setdefault(value.org.id, set()).add(key)
        if value.principal is not None:
            self._by_user.setdefault(value.principal.user_id, set()).add(key)
        while len(self._entries) > self._max_entries:
            self._forget(next(iter(self._entries)))

    def invalidate_org(self, org_id: uuid.UUID) -> None:
        for key in self._by_org.pop(org_id, set()):
            self._forget(key)
        self.invalidations += 1

    def invalidate_user(self, user_id: uuid.UUID) -> None:
        for key in self._by_user.pop(user_id, set()):
            self._forget(key)
        self.invalidations += 1

    def clear(self) -> None:
        self._entries.clear()
        self._by_org.clear()
        self._by_user.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, payload: str) -> None:
        """Acts on one notification of the channel."""
        if payload == "all":
            self.clear()
            self.invalidations += 1
            return
        kind, _, ident = payload.partition(":")
        try:
            parsed = uuid.UUID(ident)
        except ValueError:
            return
        if kind == "org":
            self.invalidate_org(parsed)
        elif kind == "user":
            self.invalidate_user(parsed)

    def pinged(self) -> None:
        self._last_ping = time.monotonic()

    def _forget(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        if entry.value.org is not None:
            keys = self._by_org.get(entry.value.org.id)
            if keys is not None:
                keys.discard(key)
        if entry.value.principal is not None:
            keys = self._by_user.get(entry.value.principal.user_id)
            if keys is not None:
                keys.discard(key)


class CacheListener:
    """Listens on ``spoke_cache`` on a connection of its own and keeps the cache honest."""

    def __init__(self, cache: AccessCache, database_url: str, settings: Settings) -> None:
        self._cache = cache
        self._url = database_url
        self._settings = settings
        self._ping = f"ping:{uuid.uuid4()}"
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cache-listener")

    async def stop(self) -> None:
        await background.cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cache listener lost its connection (%s); cache off until back", exc)
            self._cache.clear()
            self.reconnects += 1
            await asyncio.sleep(PING_SECONDS)

    async def _listen(self) -> None:
        conn = await connect(
            self._url, self._settings, autocommit=True, application_name="spoke-grpc-cache"
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self._cache.clear()  # whatever happened while nobody listened is unknown
            while True:
                # A stuck connection ends here (TimeoutError) and is replaced.
                async with asyncio.timeout(MAX_SILENCE_SECONDS * 2):
                    await conn.execute("SELECT pg_notify(%s, %s)", [CHANNEL, self._ping])
                    async for notify in conn.notifies(timeout=PING_SECONDS):
                        if notify.payload == self._ping:
                            self._cache.pinged()
                        elif not notify.payload.startswith("ping:"):
                            self._cache.apply(notify.payload)
