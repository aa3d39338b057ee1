"""Wakes ``WatchEvents`` streams when their organization has a new event.

One listener per server process, on a connection of its own, LISTENs on ``spoke_events``
(a trigger on ``events`` notifies the org's id at commit). Each stream registers a
``Watcher`` for its org; a notification sets the watchers' flags, and each stream then
reads what follows its own cursor from the database (``spoke_grpc.store.events``), so
nothing is buffered per stream beyond one page of events, and a missed notification
(the listener reconnecting) costs at most ``POLL_SECONDS`` of delay: streams also look on
their own that often, and all are woken after a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from psycopg import sql

from spoke_grpc import background
from spoke_grpc.config import Settings
from spoke_grpc.database import connect

log = logging.getLogger(__name__)

CHANNEL = "spoke_events"
POLL_SECONDS = 5.0
RECONNECT_SECONDS = 1.0


class Watcher:
    """One stream's wake-up flag."""

    def __init__(self) -> None:
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def wait(self) -> None:
        """Returns when woken (the flag is cleared) or after ``POLL_SECONDS``."""
        try:
            async with asyncio.timeout(POLL_SECONDS):
                await self._woken.wait()
        except TimeoutError:
            return
        self._woken.clear()


class EventHub:
    def __init__(self, database_url: str, settings: Settings) -> None:
        self._url = database_url
        self._settings = settings
        self._watchers: dict[uuid.UUID, set[Watcher]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self.count = 0  # streams open in this process
        self.slow_consumers = 0  # streams cut off for not reading
        # Test seam: called when a stream is cut off for not reading.
        self.cut_off: Callable[[], None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-listener")

    async def stop(self) -> None:
        await background.cancel(self._task)
        self._task = None

    @property
    def full(self) -> bool:
        cap = self._settings.max_watchers
        return cap > 0 and self.count >= cap

    @contextmanager
    def watching(self, org_id: uuid.UUID) -> Iterator[Watcher]:
        watcher = Watcher()
        self._watchers[org_id].add(watcher)
        self.count += 1
        try:
            yield watcher
        finally:
            self.count -= 1
            watchers = self._watchers.get(org_id)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[org_id]

    def note_slow_consumer(self) -> None:
        self.slow_consumers += 1
        if self.cut_off is not None:
            self.cut_off()

    def _wake(self, payload: str) -> None:
        try:
            org_id = uuid.UUID(payload)
        except ValueError:
            return
        for watcher in self._watchers.get(org_id, ()):
            watcher.wake()

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for watcher in watchers:
                watcher.wake()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event listener lost its connection (%s); reconnecting", exc)
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _listen(self) -> None:
        conn = await connect(
            self._url, self._settings, autocommit=True, application_name="spoke-grpc-events"
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self._wake_all()  # whatever was committed while nobody listened
            async for notify in conn.notifies():
                self._wake(notify.payload)
