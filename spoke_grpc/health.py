"""grpc.health.v1 status that follows the database.

A probe runs ``SELECT 1`` every interval on a connection of its own (never one of the
request pool's, so a pool saturated by load does not look like an outage; on the direct
URL, past pgbouncer, whose own saturation is not an outage either): SERVING while
it works, NOT_SERVING once two in a row fail (one slow answer under load is not an outage;
at start, one failure is enough). The errors interceptor reports an unreachable
database at once, so health flips without waiting for the next probe; the probe flips it
back when the database returns and a connection drawn from the pool answers too (behind
pgbouncer the probe's direct path may be up while the pooler is down), after the pool has
checked its idle connections so that broken ones are replaced before calls draw them. On
shutdown everything goes NOT_SERVING and stays there.

The ``liveness`` service is SERVING from start to shutdown whatever the database does:
liveness probes ask it, so that a database outage takes replicas out of rotation (the
readiness probe asks ``""``) without restarting them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

import psycopg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from spoke_grpc import background
from spoke_grpc.config import Settings
from spoke_grpc.database import connect, is_unavailable

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LIVENESS_SERVICE = "liveness"
PROBE_FAILURES = 2  # probes failed in a row that take a SERVING server out of rotation


class DatabaseHealth:
    def __init__(
        self,
        servicer: HealthServicer,
        database_url: str,
        pool: AsyncConnectionPool,
        services: Iterable[str],
        interval: float,
        *,
        settings: Settings,
    ) -> None:
        self.servicer = servicer
        self._database_url = database_url
        self._settings = settings
        self._conn: psycopg.AsyncConnection | None = None
        self._pool = pool
        self._services = ["", *services]
        self._interval = interval
        self._timeout = max(interval, 1.0)  # for each probe, and the pool check after an outage
        self._serving: bool | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._failure = "the probe failed"  # why health last went NOT_SERVING, for the log
        self._failures = 0  # probes failed in a row

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    async def set_serving(self, serving: bool) -> None:
        if self._stopped or serving == self._serving:
            return
        if serving and self._serving is False:
            await self._pool.check()  # drop the connections the outage broke
            if not await self._pool_answers():
                return  # the pool's own path (e.g. through pgbouncer) is still down
        self._serving = serving
        if serving:
            log.info("health: SERVING")
        else:
            log.warning("health: NOT_SERVING (%s)", self._failure)
        for service in self._services:
            await self.servicer.set(service, SERVING if serving else NOT_SERVING)

    def mark_unavailable(self) -> None:
        """Called from request handling when the database could not be reached."""
        if self._serving and not self._stopped:
            self._failure = "a call could not reach the database"
            asyncio.get_running_loop().create_task(self.set_serving(False))

    async def probe(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.closed:
                    self._conn = await connect(
                        self._database_url,
                        self._settings,
                        autocommit=True,
                        application_name="spoke-grpc-health",
                    )
                await self._conn.execute("SELECT 1")
        except Exception as exc:
            if not (is_unavailable(exc) or isinstance(exc, TimeoutError)):
                log.exception("health probe failed unexpectedly")
            self._failure = _why(exc, self._timeout)
            await self._close_connection()
            return False
        return True

    async def _pool_answers(self) -> bool:
        """After an outage: can calls reach the database the way they do, through the pool?

        The probe's own connection may take another path (the direct URL, past a pooler
        that may be the part that is down); SERVING comes back only when both answer."""
        try:
            async with asyncio.timeout(self._timeout), self._pool.connection(self._timeout) as conn:
                await conn.execute("SELECT 1")
        except Exception as exc:
            if not (is_unavailable(exc) or isinstance(exc, TimeoutError | PoolTimeout)):
                log.exception("health: the pool check failed unexpectedly")
            return False
        return True

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health-probe")

    async def check_once(self) -> None:
        """One probe, and what it means: SERVING when it answers; NOT_SERVING when it fails
        at start, or for the ``PROBE_FAILURES``-th time in a row. A single slow answer under
        load is not an outage; a call that cannot reach the database flips health at once."""
        ok = await self.probe()
        self._failures = 0 if ok else self._failures + 1
        if ok or self._serving is not True or self._failures >= PROBE_FAILURES:
            await self.set_serving(ok)

    async def _run(self) -> None:
        await self.servicer.set(LIVENESS_SERVICE, SERVING)
        while not self._stopped:
            await self.check_once()
            await asyncio.sleep(self._interval)

    async def shutdown(self) -> None:
        self._stopped = True
        await background.cancel(self._task)
        await self._close_connection()
        await self.servicer.enter_graceful_shutdown()


def _why(exc: Exception, timeout: float) -> str:
    """Why the probe failed, in a few words for the log."""
    if isinstance(exc, TimeoutError):
        return f"the probe had no answer within {timeout:g}s"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
