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
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from spoke_grpc.config import Settings
from spoke_grpc.errors import Overloaded, Unavailable

# SQLSTATE classes that mean "the server is not there for us", not "your query is wrong".
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")
# Deadlock and serialization failures: the transaction may simply be run again.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

RollbackHook = Callable[[AsyncConnection], Awaitable[None]]


def session_options(settings: Settings) -> str:
    """libpq ``options``: UTC sessions and the server's maximum statement time."""
    timeout_ms = max(1, int(settings.statement_timeout_seconds * 1000))
    return f"-c timezone=UTC -c statement_timeout={timeout_ms}"


def create_pool(database_url: str, settings: Settings) -> AsyncConnectionPool:
    """An unopened pool; ``await pool.open(wait=True)`` before use."""
    return AsyncConnectionPool(
        database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        kwargs={
            "autocommit": True,
            "application_name": "spoke-grpc",
            "options": session_options(settings),
        },
        name="spoke",
    )


@dataclass
class UnitOfWork:
    """One call's connection; ``writes`` when it runs in one explicit transaction.

    Code that must record something even when the call fails (the audit of a refused
    write) registers a hook; hooks run on the same connection after the rollback.
    """

    conn: AsyncConnection
    writes: bool
    rollback_hooks: list[RollbackHook] = field(default_factory=list)
    # Shared by every attempt of the call: what must happen once per call, not per retry.
    done_once: set[str] = field(default_factory=set)

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
