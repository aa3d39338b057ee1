"""The background tasks the server runs beside its calls (health probe, usage flush, cache
listener, mailer, webhook dispatcher): how they are stopped, and how a polling loop reports
a database outage, in one place."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from spoke_grpc.database import is_unavailable


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancels ``task`` (if any) and waits until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class OutageLog:
    """Runs one tick of a polling loop (the mailer's, a webhook sender's): an unreachable
    database is logged once when it goes and once when it is back, any other failure each
    time; the loop goes on at its next tick either way."""

    def __init__(self, log: logging.Logger, name: str) -> None:
        self._log = log
        self._name = name
        self.database_down = False

    async def tick(self, step: Callable[[], Awaitable[object]]) -> None:
        try:
            await step()
        except Exception as exc:
            if is_unavailable(exc) or isinstance(exc, TimeoutError):
                if not self.database_down:
                    self._log.warning("%s: the database is unavailable; retrying", self._name)
                self.database_down = True
            else:
                self._log.exception("%s failed; retrying on the next tick", self._name)
            return
        if self.database_down:
            self._log.info("%s: the database is back", self._name)
            self.database_down = False
