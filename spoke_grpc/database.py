"""The connection pool, the unit of work a call runs in, and how database failures look.

Pool connections are autocommit: a read runs each statement as its own transaction (no
BEGIN/COMMIT round trips), a write opens one explicit transaction for everything it does.
Every session runs in UTC under the server's maximum statement time. Connections are
not checked as they are handed out: a broken one fails its call with UNAVAILABLE and the
health monitor then checks the idle ones (``pool.check()``).

Failures are told apart: a database that cannot be reached is ``Unavailable`` (and health
goes NOT_SERVING), a pool with no free connection is ``Overloaded`` (health stays
SERVING: overload is not an outage), deadlocks and serialization failures are retried by
the unit of work and surface as ``Aborted``.

Every connection, pooled or direct, is opened with ``connect_kwargs`` and set up by
``configure_session``, so it also works through pgbouncer in transaction mode: there
``SPOKE_PREPARE_THRESHOLD=none`` turns psycopg's server-side prepared statements off, and
``SPOKE_STARTUP_OPTIONS=false`` leaves out the libpq ``options`` pgbouncer refuses; the
time zone is then SET, which pgbouncer tracks per client. ``check_session`` verifies at
start what the sessions really got.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.errors import Overloaded, Unavailable

log = logging.getLogger(__name__)

# SQLSTATE classes that mean "the server is not there for us", not "your query is wrong".
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")
# Deadlock and serialization failures: the transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

RollbackHook = Callable[[AsyncConnection], Awaitable[None]]


def session_options(settings: Settings) -> str:
    """libpq ``options``: UTC sessions and the server's maximum statement time."""
    timeout_ms = max(1, int(settings.statement_timeout_seconds * 1000))
    return f"-c timezone=UTC -c statement_timeout={timeout_ms}"


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """What every connection the service opens passes to psycopg, pooled or direct."""
    kwargs: dict[str, Any] = {"prepare_threshold": settings.prepare_threshold}
    if settings.startup_options:
        kwargs["options"] = session_options(settings)
    return kwargs


async def configure_session(conn: AsyncConnection, settings: Settings) -> None:
    """Runs on every new connection: UTC by SET when the startup packet does not carry it.

    pgbouncer tracks ``TimeZone`` per client and restores it on whichever server connection
    it lends, so this holds in transaction pooling (``statement_timeout`` is not tracked:
    behind pgbouncer it is the role's or database's setting; see ``check_session``).
    """
    if settings.startup_options:
        return
    await conn.execute("SET timezone TO 'UTC'")
    if not conn.autocommit:
        await conn.commit()


async def connect(url: str, settings: Settings, **kwargs: Any) -> AsyncConnection:
    """A connection of its own (not the pool's), set up like the pool's."""
    conn = await AsyncConnection.connect(url, **connect_kwargs(settings), **kwargs)
    try:
        await configure_session(conn, settings)
    except BaseException:
        await conn.close()
        raise
    return conn


_UTC_NAMES = frozenset(
    {"utc", "etc/utc", "uct", "etc/uct", "universal", "etc/universal", "zulu", "etc/zulu"}
)


async def check_session(conn: AsyncConnection, settings: Settings) -> None:
    """Refuses a session that is not in UTC (usage hours and months are UTC, and the
    schema's CHECKs say so); warns when the database's statement timeout is not
    ``SPOKE_STATEMENT_TIMEOUT`` (calls are still cut at their budget by a cancel)."""
    cur = await conn.execute(
        "SELECT current_setting('TimeZone'),"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout')"
    )
    row = await cur.fetchone()
    if row is None:  # a SELECT without FROM always has its row
        return
    timezone, timeout_ms = str(row[0]), int(row[1])
    if timezone.lower() not in _UTC_NAMES:
        raise ConfigError(
            f"database sessions run in time zone {timezone!r}, not UTC: behind pgbouncer set"
            " SPOKE_STARTUP_OPTIONS=false (the service then sets UTC itself), or set the"
            " role's time zone (ALTER ROLE … SET timezone = 'UTC')"
        )
    wanted_ms = max(1, int(settings.statement_timeout_seconds * 1000))
    if timeout_ms != wanted_ms:
        log.warning(
            "the database's statement_timeout is %s, not SPOKE_STATEMENT_TIMEOUT (%gs): calls"
            " are still cancelled at their budget, but set it on the server too"
            " (ALTER ROLE … SET statement_timeout = '%gs') when SPOKE_STARTUP_OPTIONS=false",
            f"{timeout_ms / 1000:g}s" if timeout_ms else "off",
            settings.statement_timeout_seconds,
            settings.statement_timeout_seconds,
        )


def create_pool(
    database_url: str,
    settings: Settings,
    *,
    instrument: Callable[[AsyncConnection], None] | None = None,
) -> AsyncConnectionPool:
    """An unopened pool; ``await pool.open(wait=True)`` before use.

    ``instrument`` is applied to each new connection (tracing: ``spoke_grpc.tracing``).
    """

    async def configure(conn: AsyncConnection) -> None:
        await configure_session(conn, settings)
        if instrument is not None:
            instrument(conn)

    return AsyncConnectionPool(
        database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        kwargs={
            "autocommit": True,
            "application_name": "spoke-grpc",
            **connect_kwargs(settings),
        },
        configure=configure,
        name="spoke",
    )


class Lease:
    """The call's pooled connection, checked out on first use: a read the cache answers
    whole takes none. ``checkout`` enters the pool's context in the call's exit stack, so
    the connection goes back to the pool when the call ends, however it ends."""

    def __init__(self, checkout: Callable[[], Awaitable[AsyncConnection]]) -> None:
        self._checkout = checkout
        self.conn: AsyncConnection | None = None

    async def get(self) -> AsyncConnection:
        if self.conn is None:
            self.conn = await self._checkout()
        return self.conn


@dataclass
class UnitOfWork:
    """One call's connection (through its lease); ``writes`` when it runs in one explicit
    transaction.

    Code that must record something even when the call fails (the audit of a refused
    write) registers a hook; hooks run on the same connection after the rollback.
    """

    lease: Lease
    writes: bool
    rollback_hooks: list[RollbackHook] = field(default_factory=list)
    # Shared by every attempt of the call: what must happen once per call, not per retry.
    done_once: set[str] = field(default_factory=set)

    async def connection(self) -> AsyncConnection:
        return await self.lease.get()

    def first_time(self, what: str) -> bool:
        """True the first time ``what`` is asked about in this call, across retries."""
        if what in self.done_once:
            return False
        self.done_once.add(what)
        return True

    def on_rollback(self, hook: RollbackHook) -> None:
        self.rollback_hooks.append(hook)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (rather than a bug)."""
    if isinstance(exc, PoolClosed):
        return True
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, PoolTimeout):
        state = exc.sqlstate
        return state is None or state.startswith(_UNAVAILABLE_SQLSTATES)
    return False


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate in RETRYABLE_SQLSTATES


def pool_is_full(pool: AsyncConnectionPool) -> bool:
    """Whether ``pool`` holds all the connections it may: a checkout that timed out then
    waited for busy ones (overload), not for connections it failed to open (an outage)."""
    return int(pool.get_stats().get("pool_size", 0)) >= pool.max_size


def unavailable(exc: BaseException) -> Unavailable:
    return Unavailable("the database is unavailable; retry with backoff")


def overloaded(settings: Settings) -> Overloaded:
    return Overloaded(
        f"the server is busy: no database connection became free within"
        f" {settings.pool_timeout_seconds:g}s; retry with backoff"
    )


def with_database(url: str, database: str) -> str:
    """``url`` (postgresql://…) pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))
