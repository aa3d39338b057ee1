"""Schema migrations with yoyo: SQL files in ``migrations/``, each with a rollback file.

yoyo takes a lock in the database, so several processes starting at once apply each
migration exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from yoyo import get_backend, read_migrations


def yoyo_url(database_url: str) -> str:
    """yoyo names its psycopg 3 driver in the URL scheme."""
    for scheme in ("postgresql://", "postgres://"):
        if database_url.startswith(scheme):
            return "postgresql+psycopg://" + database_url[len(scheme) :]
    return database_url


@contextmanager
def _backend(database_url: str) -> Iterator[Any]:
    """A yoyo backend whose connection is closed afterwards (yoyo leaves it open)."""
    backend = get_backend(yoyo_url(database_url))
    try:
        yield backend
    finally:
        backend.connection.close()


def apply(database_url: str, migrations_dir: Path) -> list[str]:
    """Applies pending migrations; returns their ids."""
    migrations = read_migrations(str(migrations_dir))
    with _backend(database_url) as backend, backend.lock():
        to_apply = backend.to_apply(migrations)
        backend.apply_migrations(to_apply)
    return [m.id for m in to_apply]


def rollback(database_url: str, migrations_dir: Path, *, steps: int | None = 1) -> list[str]:
    """Rolls back the last ``steps`` applied migrations (all of them when ``steps`` is None)."""
    migrations = read_migrations(str(migrations_dir))
    with _backend(database_url) as backend, backend.lock():
        applied = backend.to_rollback(migrations)
        chosen = applied if steps is None else applied[:steps]
        backend.rollback_migrations(chosen)
    return [m.id for m in chosen]


def pending(database_url: str, migrations_dir: Path) -> list[str]:
    with _backend(database_url) as backend:
        return [m.id for m in backend.to_apply(read_migrations(str(migrations_dir)))]
