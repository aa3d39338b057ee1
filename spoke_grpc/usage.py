"""API requests per organization and UTC hour: counted in memory, flushed in batches.

The request path only adds to a dict (``count``); a background task flushes it every
``SPOKE_USAGE_FLUSH_INTERVAL`` in ONE statement (``store.usage.flush``) that adds the counts
to the hourly and monthly rows, in a stable key order (so flushes from several processes
never deadlock), and returns each hour's database total. What this process knows of an
hour is then that total plus what it counted since: ``requests_this_hour``, which the
quota and usage interceptors read without any statement.

Accuracy across processes: another process's calls reach this process's view at its next
flush after theirs, so with N processes a count can lag by up to about two flush
intervals of the other N-1 processes' traffic; each process always sees its own calls.

A flush that fails (database down) puts its counts back and is retried at the next
interval; a stop flushes what is left. Memory is bounded: at most ``max_keys`` org-hours
are held (while the database is unreachable), the oldest hours are dropped beyond that,
with a warning.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Callable

from psycopg_pool import AsyncConnectionPool

from spoke_grpc import background
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
        self._flushed: dict[Key, int] = {}  # database totals as of this process's last flush
        self._task: asyncio.Task[None] | None = None
        self.failed_flushes = 0
        self.dropped = 0
        # Wall time when the buffer was last written through (or started): for metrics.
        self.last_flush_at = time.time()

    def count(self, org_id: uuid.UUID) -> int:
        """Counts one request now; returns this process's view of the hour's total."""
        key = (org_id, hour_start(self.clock()))
        pending = self._pending.get(key, 0) + 1
        if pending == 1 and len(self._pending) >= self._max_keys:
            self._drop_oldest()
        self._pending[key] = pending
        return self._flushed.get(key, 0) + pending

    def requests_this_hour(self, org_id: uuid.UUID) -> int:
        key = (org_id, hour_start(self.clock()))
        return self._flushed.get(key, 0) + self._pending.get(key, 0)

    def unflushed(self, org_id: uuid.UUID, since: dt.datetime) -> int:
        """Requests counted here for ``org_id`` from ``since`` on, not yet in the database."""
        return sum(n for (org, hour), n in self._pending.items() if org == org_id and hour >= since)

    @property
    def pending_keys(self) -> int:
        return len(self._pending)

    @property
    def pending_requests(self) -> int:
        """Requests counted and not yet written (safe to read from another thread)."""
        return sum(self._pending.copy().values())

    async def flush(self) -> bool:
        """Writes the pending counts; True when there was nothing to write or it worked."""
        if not self._pending:
            self.last_flush_at = time.time()
            return True
        batch, self._pending = self._pending, {}
        try:
            async with self._pool.connection() as conn:
                totals = await store.flush(conn, batch)
        except Exception as exc:
            self.failed_flushes += 1
            for key, n in batch.items():  # put the counts back, with what came since
                self._pending[key] = self._pending.get(key, 0) + n
            log.warning("usage flush of %d org-hours failed; will retry: %s", len(batch), exc)
            return False
        self.last_flush_at = time.time()
        current = hour_start(self.clock())
        self._flushed = {
            key: n for key, n in {**self._flushed, **totals}.items() if key[1] >= current
        }
        return True

    def start(self) -> None:
        self.last_flush_at = time.time()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def stop(self) -> None:
        """Stops the flush task and flushes what is left (once)."""
        await background.cancel(self._task)
        self._task = None
        if not await self.flush() and self._pending:
            log.error(
                "usage: %d org-hours of API request counts could not be written at shutdown",
                len(self._pending),
            )

    def _drop_oldest(self) -> None:
        oldest = min(self._pending, key=lambda key: key[1])
        self.dropped += self._pending.pop(oldest)
        log.warning("usage buffer full (%d org-hours): dropped the oldest count", self._max_keys)
