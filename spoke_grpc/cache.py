"""The read path's cache: who a token is, the organization a reference names, the caller's
role in it and its limits, as the auth interceptor's one statement returned them.

Only read-only calls use it; writes always read (and lock) the rows in their transaction.
Staleness is bounded:

- Every change to cached rows is announced on the PostgreSQL channel ``spoke_cache`` by
  triggers (migrations 0011, 0013), whoever makes it. A listener on a connection of its own
  drops the entries named ('org:<id>', 'user:<id>', 'org-names' when an organization is
  created or renamed) as the notifications arrive, typically within milliseconds of the
  commit.
- A read that missed reads the database, then stores what it read; an invalidation that
  arrives in between must not be undone by that store. Every invalidation advances one
  clock, the cache's ``generation``, and records it against what it names (an org, a user,
  the org names); a miss notes the generation when it starts and its ``put`` is dropped when
  anything its answer depends on was invalidated since. ``clear()`` drops every miss in
  flight the same way.
- The listener pings itself every ``PING_SECONDS`` on a channel of its own
  (``spoke_cache_ping_<hex>``, which it alone listens on), so a listener hears its own pings
  and the invalidations, never the other replicas' pings: what each listener receives does
  not grow with the number of replicas (``benchmarks/listener_fanout.py`` measures it).
  While its last ping is older than ``MAX_SILENCE_SECONDS`` (not yet started, stuck) or its
  connection is known lost, the cache is off: nothing is served from it or stored in it,
  and it is emptied, so a lost listener can never serve stale entries. Entries also expire
  after ``TTL_SECONDS`` whatever happens.
- A write made through this process drops the entries of its org and of its caller as it
  commits, before the response: this process sees its own security-relevant changes at once.

Organizations that do not exist are remembered too (for the caller who asked), so that a
reference to a missing org and one to an org the caller may not see are both answered from
memory after the first call: existence is not a timing oracle. Unknown tokens are not
remembered.

Memory is bounded: at most ``max_entries`` entries (least recently used first out), of
which at most ``max_missing`` for missing orgs, so a flood of made-up names cannot push out
real entries; at most ``max_generations`` invalidation records, the oldest forgotten first:
forgetting one drops the puts of misses that started before it (safe: a dropped put only
costs the next call a read).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from psycopg import sql

from spoke_grpc import background
from spoke_grpc.config import Settings
from spoke_grpc.database import connect
from spoke_grpc.store.access import Resolved

log = logging.getLogger(__name__)

CHANNEL = "spoke_cache"
PING_CHANNEL_PREFIX = "spoke_cache_ping_"
PING_SECONDS = 0.25
MAX_SILENCE_SECONDS = 1.0
TTL_SECONDS = 60.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_MISSING = 1_000
DEFAULT_MAX_GENERATIONS = 10_000

Key = tuple[bytes | None, str | None, bool]  # (token digest, org reference, public read)
# What one invalidation names: ("org", id), ("user", id), or ("org-names", None).
Scope = tuple[str, uuid.UUID | None]
ORG_NAMES: Scope = ("org-names", None)


@dataclass(frozen=True)
class _Entry:
    value: Resolved
    expires: float


class AccessCache:
    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        max_missing: int = DEFAULT_MAX_MISSING,
        max_generations: int = DEFAULT_MAX_GENERATIONS,
    ) -> None:
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._missing: OrderedDict[Key, None] = OrderedDict()  # keys of missing orgs, LRU
        self._by_org: dict[uuid.UUID, set[Key]] = {}
        self._by_user: dict[uuid.UUID, set[Key]] = {}
        self._max_entries = max_entries
        self._max_missing = max(0, min(max_missing, max_entries))
        self._generation = 0
        # The generation of each scope's last invalidation, oldest first; bounded.
        self._invalidated: OrderedDict[Scope, int] = OrderedDict()
        self._max_generations = max(1, max_generations)
        # Misses that started before this generation store nothing (clear(), forgotten records).
        self._floor = 0
        self._last_ping = float("-inf")
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.stale_puts = 0
        # Test seam: awaited by the auth interceptor between a miss's read and its put.
        self.after_miss_read: Callable[[Key], Awaitable[None]] | None = None

    @property
    def enabled(self) -> bool:
        return time.monotonic() - self._last_ping < MAX_SILENCE_SECONDS

    @property
    def generation(self) -> int:
        """The invalidation clock: a miss notes it before it reads, and hands it to ``put``."""
        return self._generation

    @property
    def missing(self) -> int:
        """How many entries remember an organization that does not exist."""
        return len(self._missing)

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
        if key in self._missing:
            self._missing.move_to_end(key)
        self.hits += 1
        return entry.value

    def put(self, key: Key, value: Resolved, since: int) -> bool:
        """Stores what a miss that started at generation ``since`` read, unless something it
        depends on was invalidated since (then the next call reads again). True if stored."""
        if not self.enabled:
            return False
        missing = key[1] is not None and value.org is None
        if self._stale(value, missing, since):
            self.stale_puts += 1
            return False
        self._forget(key)
        self._entries[key] = _Entry(value, time.monotonic() + TTL_SECONDS)
        if value.org is not None:
            self._by_org.setdefault(value.org.id, set()).add(key)
        if value.principal is not None:
            self._by_user.setdefault(value.principal.user_id, set()).add(key)
        if missing:
            self._missing[key] = None
            while len(self._missing) > self._max_missing:
                self._forget(next(iter(self._missing)))
        while len(self._entries) > self._max_entries:
            self._forget(next(iter(self._entries)))
        return True

    def invalidate_org(self, org_id: uuid.UUID) -> None:
        self._advance(("org", org_id))
        for key in self._by_org.pop(org_id, set()):
            self._forget(key)
        self.invalidations += 1

    def invalidate_user(self, user_id: uuid.UUID) -> None:
        self._advance(("user", user_id))
        for key in self._by_user.pop(user_id, set()):
            self._forget(key)
        self.invalidations += 1

    def invalidate_org_names(self) -> None:
        """An organization was created or renamed: what was missing may exist now."""
        self._advance(ORG_NAMES)
        for key in list(self._missing):
            self._forget(key)
        self.invalidations += 1

    def clear(self) -> None:
        self._generation += 1
        self._floor = self._generation
        self._invalidated.clear()
        self._entries.clear()
        self._missing.clear()
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
        if payload == "org-names":
            self.invalidate_org_names()
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

    def silenced(self) -> None:
        """The listener lost its connection: off until its next ping, emptied now."""
        self._last_ping = float("-inf")
        self.clear()

    def _advance(self, scope: Scope) -> None:
        self._generation += 1
        self._invalidated[scope] = self._generation
        self._invalidated.move_to_end(scope)
        while len(self._invalidated) > self._max_generations:
            _, forgotten = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, forgotten)

    def _stale(self, value: Resolved, missing: bool, since: int) -> bool:
        if since < self._floor:
            return True
        scopes: list[Scope] = []
        if value.org is not None:
            scopes.append(("org", value.org.id))
        if value.principal is not None:
            scopes.append(("user", value.principal.user_id))
        if missing:
            scopes.append(ORG_NAMES)
        return any(self._invalidated.get(scope, 0) > since for scope in scopes)

    def _forget(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._missing.pop(key, None)
        if entry.value.org is not None:
            keys = self._by_org.get(entry.value.org.id)
            if keys is not None:
                keys.discard(key)
        if entry.value.principal is not None:
            keys = self._by_user.get(entry.value.principal.user_id)
            if keys is not None:
                keys.discard(key)


class Listening(Protocol):
    """A cache the listener keeps honest: the access cache, and others that follow the same
    notifications (``spoke_grpc.response_cache``)."""

    def apply(self, payload: str) -> None: ...
    def pinged(self) -> None: ...
    def silenced(self) -> None: ...
    def clear(self) -> None: ...


class CacheListener:
    """Listens on ``spoke_cache`` on a connection of its own and keeps the caches honest:
    ``cache`` and ``followers``, which hear the same notifications and pings."""

    def __init__(
        self,
        cache: AccessCache,
        database_url: str,
        settings: Settings,
        *,
        followers: Sequence[Listening] = (),
    ) -> None:
        self._caches: tuple[Listening, ...] = (cache, *followers)
        self._url = database_url
        self._settings = settings
        # A channel of this listener's own: its pings reach nobody else.
        self.ping_channel = PING_CHANNEL_PREFIX + uuid.uuid4().hex
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0
        # Test seam: called with every payload heard (its own pings, "ping", too), after
        # acting on it.
        self.heard: Callable[[str], None] | None = None

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
            for cache in self._caches:
                cache.silenced()
            self.reconnects += 1
            await asyncio.sleep(PING_SECONDS)

    async def _listen(self) -> None:
        conn = await connect(
            self._url, self._settings, autocommit=True, application_name="spoke-grpc-cache"
        )
        async with conn:
            for channel in (CHANNEL, self.ping_channel):
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            for cache in self._caches:  # whatever happened while nobody listened is unknown
                cache.clear()
            while True:
                # A stuck connection ends here (TimeoutError) and is replaced.
                async with asyncio.timeout(MAX_SILENCE_SECONDS * 2):
                    await conn.execute("SELECT pg_notify(%s, 'ping')", [self.ping_channel])
                    async for notify in conn.notifies(timeout=PING_SECONDS):
                        if notify.channel == self.ping_channel:
                            for cache in self._caches:
                                cache.pinged()
                        # Markers ("ping:…") on the shared channel: tests, older servers.
                        elif not notify.payload.startswith("ping:"):
                            for cache in self._caches:
                                cache.apply(notify.payload)
                        if self.heard is not None:
                            self.heard(notify.payload)
