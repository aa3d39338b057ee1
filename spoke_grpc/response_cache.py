"""Immutable reads served from bytes: ``GetVersion``, ``GetDependencyGraph`` and cached
``CompileVersion`` responses, kept serialized and handed back as they are.

A version never changes once stored, but what a response shows of it depends on who reads
(``spoke_grpc.store.visibility``: a dependency edge or graph node only where the reader may
read its module; a compile refused when the closure holds one it may not). So the key is
the method, the reader's class, the organization, the module and version references as
sent, and what else decides the answer (the languages):

- The reader's class is the anonymous caller, a platform admin (every admin reads the same:
  the rule does not look at an admin's id), or the user's id. Nothing coarser: two users
  see different edges when they belong to different organizations.
- The organization is its id, resolved per call by the access cache; the module and
  version references resolve to rows that change only when a module is created, deleted or
  changes visibility, or a membership changes, all of which invalidate (below).

Each entry remembers every organization its answer was decided from: the version's own
and those of every dependency looked at, shown or not (a hidden edge becomes visible
through a change in its target's organization). It is dropped when any of them is
invalidated: the notifications of ``spoke_cache`` ('org:<id>' for a membership, a
module's visibility, creation or deletion, the organization's own changes; 'all' after a
TRUNCATE), and this process's own writes as they commit (a write that consumes a compile
job records only the job, its count and its audit event, and invalidates nothing). As in
``spoke_grpc.cache``, a miss notes the invalidation clock before it reads and its put is
dropped if anything it depends on was invalidated meanwhile; with no live listener the
cache is off and empty. The access policy (token, membership, suspension) is checked per
call before any of this, by the interceptors. Memory is bounded in bytes (least recently
used out first); entries also expire after ``TTL_SECONDS``.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from spoke_grpc.cache import MAX_SILENCE_SECONDS, TTL_SECONDS
from spoke_grpc.store.visibility import Reader

DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_MAX_GENERATIONS = 10_000
_ENTRY_OVERHEAD = 256  # the key, the entry and the indexes, roughly

ReaderClass = str  # "anonymous", "admin" or a user id
Key = tuple[str, ReaderClass, uuid.UUID, str, str, tuple[str, ...]]


def reader_class(reader: Reader) -> ReaderClass:
    """Who reads, as coarsely as the visibility rule allows and no coarser."""
    if reader.is_platform_admin:
        return "admin"
    if reader.user_id is None:
        return "anonymous"
    return str(reader.user_id)


@dataclass(frozen=True, slots=True)
class Entry:
    """A serialized response, what it was decided from, and what else a hit needs
    (``detail``: for a compile, the module and version its job record names)."""

    data: bytes
    orgs: frozenset[uuid.UUID]
    expires: float
    detail: object = None


class ResponseCache:
    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        max_generations: int = DEFAULT_MAX_GENERATIONS,
    ) -> None:
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._by_org: dict[uuid.UUID, set[Key]] = {}
        self._max_bytes = max_bytes
        self.size_bytes = 0
        self._generation = 0
        self._invalidated: OrderedDict[uuid.UUID, int] = OrderedDict()
        self._max_generations = max(1, max_generations)
        self._floor = 0
        self._last_ping = float("-inf")
        self.hits = 0
        self.misses = 0
        self.invalidations = 0
        self.evictions = 0
        self.stale_puts = 0

    @property
    def enabled(self) -> bool:
        return self._max_bytes > 0 and time.monotonic() - self._last_ping < MAX_SILENCE_SECONDS

    @property
    def generation(self) -> int:
        """The invalidation clock: a miss notes it before it reads, and hands it to ``put``."""
        return self._generation

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> Entry | None:
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
        return entry

    def put(
        self,
        key: Key,
        data: bytes,
        orgs: Iterable[uuid.UUID],
        since: int,
        detail: object = None,
    ) -> bool:
        """Keeps what a miss that started at generation ``since`` built from the state of
        ``orgs``, unless one of them was invalidated since. True if kept."""
        if not self.enabled:
            return False
        depends = frozenset(orgs)
        if since < self._floor or any(self._invalidated.get(o, 0) > since for o in depends):
            self.stale_puts += 1
            return False
        cost = len(data) + _ENTRY_OVERHEAD
        if cost > self._max_bytes // 4:  # one answer may not push out most of the others
            return False
        self._forget(key)
        self._entries[key] = Entry(data, depends, time.monotonic() + TTL_SECONDS, detail)
        self.size_bytes += cost
        for org in depends:
            self._by_org.setdefault(org, set()).add(key)
        while self.size_bytes > self._max_bytes:
            self._forget(next(iter(self._entries)))
            self.evictions += 1
        return True

    def invalidate_org(self, org_id: uuid.UUID) -> None:
        self._generation += 1
        self._invalidated[org_id] = self._generation
        self._invalidated.move_to_end(org_id)
        while len(self._invalidated) > self._max_generations:
            _, forgotten = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        for key in self._by_org.pop(org_id, set()):
            self._forget(key)
        self.invalidations += 1

    def clear(self) -> None:
        self._generation += 1
        self._floor = self._generation
        self._invalidated.clear()
        self._entries.clear()
        self._by_org.clear()
        self.size_bytes = 0

    # --- what the cache listener (spoke_grpc.cache.CacheListener) calls ---------------------

    def apply(self, payload: str) -> None:
        """Acts on one notification of ``spoke_cache``: 'org:<id>' and 'all' concern it;
        users ('user:<id>') and org names do not (the key holds the reader's id and admin
        flag as the access cache read them for this call, and the organization's id)."""
        if payload == "all":
            self.clear()
            self.invalidations += 1
            return
        kind, _, ident = payload.partition(":")
        if kind != "org":
            return
        try:
            self.invalidate_org(uuid.UUID(ident))
        except ValueError:
            return

    def pinged(self) -> None:
        self._last_ping = time.monotonic()

    def silenced(self) -> None:
        self._last_ping = float("-inf")
        self.clear()

    def _forget(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self.size_bytes -= len(entry.data) + _ENTRY_OVERHEAD
        for org in entry.orgs:
            keys = self._by_org.get(org)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_org[org]
