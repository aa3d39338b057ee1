"""The connection pool, and how database failures look to callers.

A lost or unreachable database surfaces as ``Unavailable`` (gRPC UNAVAILABLE): the pool
checks each connection as it is handed out, so once the server is back the next call
works without a restart.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from spoke_grpc.config import Settings
from spoke_grpc.errors import Unavailable

# SQLSTATE classes that mean "the server is not there for us", not "your query is wrong".
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")


def create_pool(database_url: str, settings: Settings) -> AsyncConnectionPool:
    """An unopened pool; ``await pool.open(wait=True)`` before use."""
    return AsyncConnectionPool(
        database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        check=AsyncConnectionPool.check_connection,
        kwargs={"application_name": "spoke-grpc"},
        name="spoke",
    )


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (rather than a bug)."""
    if isinstance(exc, PoolTimeout | PoolClosed):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith(_UNAVAILABLE_SQLSTATES)
    return False


def unavailable(exc: BaseException) -> Unavailable:
    return Unavailable("the database is unavailable; retry with backoff")


def with_database(url: str, database: str) -> str:
    """``url`` (postgresql://…) pointing at another database on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))
