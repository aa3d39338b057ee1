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

from spoke_grpc.config import ConfigError


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


def _read(migrations_dir: Path) -> Any:
    """The migrations in ``migrations_dir``; ConfigError when there are none (a wrong path)."""
    migrations = read_migrations(str(migrations_dir))
    if not migrations:
        raise ConfigError(
            f"no migrations found in {migrations_dir}; set SPOKE_MIGRATIONS_DIR to the"
            " project's migrations/ directory"
        )
    return migrations


def apply(database_url: str, migrations_dir: Path) -> list[str]:
    """Applies pending migrations; returns their ids."""
    migrations = _read(migrations_dir)
    with _backend(database_url) as backend, backend.lock():
        to_apply = backend.to_apply(migrations)
        backend.apply_migrations(to_apply)
    return [m.id for m in to_apply]


def rollback(database_url: str, migrations_dir: Path, *, steps: int | None = 1) -> list[str]:
    """Rolls back the last ``steps`` applied migrations (all of them when ``steps`` is None)."""
    migrations = _read(migrations_dir)
    with _backend(database_url) as backend, backend.lock():
        applied = backend.to_rollback(migrations)
        chosen = applied if steps is None else applied[:steps]
        backend.rollback_migrations(chosen)
    return [m.id for m in chosen]


def pending(database_url: str, migrations_dir: Path) -> list[str]:
    """The ids of the migrations not yet applied, in the order they would be."""
    migrations = _read(migrations_dir)
    with _backend(database_url) as backend:
        return [m.id for m in backend.to_apply(migrations)]
