"""API requests per organization and UTC hour: counted in memory, flushed in batches.

The request path only adds to a dict (``count``); a background task flushes it every
``SPOKE_USAGE_FLUSH_INTERVAL`` in ONE statement (``store.usage.flush``) that adds the counts
to the hourly and monthly rows, in a stable key order (so flushes from several processes
never deadlock), and returns each hour's database total. What this process knows of an
hour is then that total plus what it counted since: ``requests_this_hour``, which the
quota and usage interceptors read without any statement.

Exactness. A flush takes the pending counts as a numbered batch (this buffer's id and a
sequence number) and keeps that batch counted, beside the new pending counts, until the
database has confirmed it: a burst during a flush cannot pass the hourly limit. At most one
batch is in flight. A batch that fails (database down, reply lost) is kept and retried
as it is, with the same number, before any newer counts: the database applies a batch
number once, so a batch whose COMMIT succeeded but whose reply was lost adds nothing the
second time. ``stop`` waits for a flush in flight and then flushes what is left.

Accuracy across processes: another process's calls reach this process's view at its next
flush after theirs, so with N processes a count can lag by up to about two flush
intervals of the other N-1 processes' traffic; each process always sees its own calls.

Usage alerts for API requests (``spoke_grpc.domain.usage_alerts``): the interceptor tells
the buffer each organization's hourly limit and alert thresholds (``watch``); after a
flush, a total that reached a threshold not yet alerted by this process raises the alert in
a transaction of its own (the database keeps it to one per hour across processes). The
flush itself stays one statement.

Memory is bounded: at most ``max_keys`` org-hours wait besides the batch in flight (while
the database is unreachable); the oldest hours are dropped beyond that, with a warning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from spoke_grpc import background
from spoke_grpc.domain import usage_alerts
from spoke_grpc.store import usage as store

log = logging.getLogger(__name__)

Clock = Callable[[], dt.datetime]
Key = tuple[uuid.UUID, dt.datetime]  # (org id, start of the UTC hour)
DEFAULT_MAX_KEYS = 100_000


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hour_start(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def hour_end(moment: dt.datetime) -> dt.datetime:
    return hour_start(moment) + dt.timedelta(hours=1)


def month_start(moment: dt.datetime) -> dt.datetime:
    return hour_start(moment).replace(day=1, hour=0)


def month_end(moment: dt.datetime) -> dt.datetime:
    start = month_start(moment)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


@dataclass(frozen=True)
class Unflushed:
    """One org's counts in a buffer that were not confirmed written at some moment: those of
    the batch in flight and those pending, with the batch numbers that will carry them."""

    writing: int
    writing_number: int
    pending: int
    pending_number: int

    def beyond(self, applied: int | None) -> int:
        """What a database read made after that moment lacks, when it saw this buffer's
        writer at batch number ``applied`` (None: no batch of it yet)."""
        seen = applied or 0
        return (self.writing if seen < self.writing_number else 0) + (
            self.pending if seen < self.pending_number else 0
        )


class UsageBuffer:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        interval: float,
        *,
        clock: Clock = utc_now,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        self._pool = pool
        self._interval = interval
        self.clock = clock
        self._max_keys = max_keys
        self._pending: dict[Key, int] = {}
        # The batch being written (or to be retried), counted until the database confirms it.
        self._batch: store.Batch | None = None
        self._writing: Mapping[Key, int] = {}  # its counts (empty when there is none)
        self._writer = uuid.uuid4()
        self._numbered = 0  # the number of the last batch formed
        self._flushed: dict[Key, int] = {}  # database totals as of this process's last flush
        self._flushing = asyncio.Lock()  # one flush at a time: the task's, stop's, a test's
        self._task: asyncio.Task[None] | None = None
        self._background_flush: asyncio.Future[bool] | None = None
        self.failed_flushes = 0
        self.dropped = 0
        # Wall time when the buffer was last written through (or started): for metrics.
        self.last_flush_at = time.time()
        # Test seam: called once a batch has committed, before this process takes note of
        # it; raising there is a COMMIT whose reply was lost.
        self.committed: Callable[[], None] | None = None
        # Hourly limits and alert thresholds of the orgs seen, and the alerts raised here.
        self._watched: dict[uuid.UUID, tuple[int, tuple[int, ...]]] = {}
        self._alerted: set[tuple[uuid.UUID, dt.datetime, int]] = set()

    @property
    def running(self) -> bool:
        """Whether the background flush task runs (False from the start of ``stop``)."""
        return self._task is not None

    @property
    def writer(self) -> uuid.UUID:
        """This buffer's id in ``usage_flush_writers``."""
        return self._writer

    def count(self, org_id: uuid.UUID) -> int:
        """Counts one request now; returns this process's view of the hour's total."""
        key = (org_id, hour_start(self.clock()))
        pending = self._pending.get(key, 0) + 1
        if pending == 1 and len(self._pending) >= self._max_keys:
            self._drop_oldest()
        self._pending[key] = pending
        return self._flushed.get(key, 0) + self._writing.get(key, 0) + pending

    def watch(self, org_id: uuid.UUID, limit: int, thresholds: tuple[int, ...]) -> None:
        """Remembers the org's hourly limit and alert thresholds, for alerts after flushes."""
        if len(self._watched) >= self._max_keys and org_id not in self._watched:
            self._watched.clear()
        self._watched[org_id] = (limit, thresholds)

    def requests_this_hour(self, org_id: uuid.UUID) -> int:
        key = (org_id, hour_start(self.clock()))
        return self._flushed.get(key, 0) + self._writing.get(key, 0) + self._pending.get(key, 0)

    def unflushed(self, org_id: uuid.UUID, since: dt.datetime) -> Unflushed:
        """Requests counted here for ``org_id`` from ``since`` on that were not confirmed
        written, now: taken before a read of the database's counts, to add to them."""

        def total(counts: Mapping[Key, int]) -> int:
            return sum(n for (org, hour), n in counts.items() if org == org_id and hour >= since)

        batch = self._batch
        return Unflushed(
            writing=total(self._writing),
            writing_number=batch.number if batch else 0,
            pending=total(self._pending),
            pending_number=self._numbered + 1,
        )

    @property
    def pending_keys(self) -> int:
        """Org-hours with counts not yet confirmed written (safe to read from another thread)."""
        return len(self._pending.copy().keys() | self._writing.keys())

    @property
    def pending_requests(self) -> int:
        """Requests counted and not yet confirmed written (safe to read from another thread)."""
        return sum(self._pending.copy().values()) + sum(self._writing.values())

    async def flush(self) -> bool:
        """Writes the batch in flight (if a write of it failed), then the pending counts; True
        when there was nothing to write or it worked."""
        async with self._flushing:
            if self._batch is not None and not await self._write(self._batch):
                return False
            if self._pending:
                self._numbered += 1
                self._batch = store.Batch(self._writer, self._numbered, self._pending)
                self._writing, self._pending = self._batch.counts, {}
                return await self._write(self._batch)
            self.last_flush_at = time.time()
            return True

    async def _write(self, batch: store.Batch) -> bool:
        try:
            async with self._pool.connection() as conn:
                totals = await store.flush(conn, batch)
            if self.committed is not None:
                self.committed()
        except Exception as exc:
            self.failed_flushes += 1
            log.warning(
                "usage flush of %d org-hours failed; will retry: %s", len(batch.counts), exc
            )
            return False
        self._batch, self._writing = None, {}
        self.last_flush_at = time.time()
        current = hour_start(self.clock())
        self._flushed = {
            key: n for key, n in {**self._flushed, **totals}.items() if key[1] >= current
        }
        self._alerted = {a for a in self._alerted if a[1] >= current}
        await self._raise_alerts(totals)
        return True

    async def _raise_alerts(self, totals: Mapping[Key, int]) -> None:
        """Alerts for the hours whose totals reached a threshold not alerted from here."""
        for (org_id, hour), total in totals.items():
            watched = self._watched.get(org_id)
            if watched is None:
                continue
            limit, levels = watched
            new = [
                t
                for t in usage_alerts.crossed(levels, total, limit)
                if (org_id, hour, t) not in self._alerted
            ]
            if not new:
                continue
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    await usage_alerts.check_api_requests(conn, org_id, hour, total, limit)
            except Exception as exc:
                log.warning("could not raise the API request alerts of %s: %s", org_id, exc)
                continue
            self._alerted.update((org_id, hour, t) for t in new)

    def start(self) -> None:
        self.last_flush_at = time.time()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            # Shielded (and held here): stopping the task never abandons a write half way.
            self._background_flush = asyncio.ensure_future(self.flush())
            await asyncio.shield(self._background_flush)

    async def stop(self) -> None:
        """Stops the flush task, waits for a flush in flight and flushes what is left (once)."""
        await background.cancel(self._task)
        self._task = None
        if self._background_flush is not None:
            await self._background_flush
        if not await self.flush():
            log.error(
                "usage: %d org-hours of API request counts could not be written at shutdown",
                self.pending_keys,
            )

    def _drop_oldest(self) -> None:
        oldest = min(self._pending, key=lambda key: key[1])
        self.dropped += self._pending.pop(oldest)
        log.warning("usage buffer full (%d org-hours): dropped the oldest count", self._max_keys)
