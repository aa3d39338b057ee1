"""Makes concurrent calls really overlap, without sleeps: a test transaction holds a row
lock the calls need, the calls start, the test waits until PostgreSQL shows every one of
them waiting for a lock (``pg_stat_activity``), then releases them all at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from tests.servicers.test_modules import code_of


def waiting_on_locks(db: psycopg.Connection[Any]) -> int:
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row[0])


def released_together(
    database_url: str,
    lock: str,
    params: Sequence[Any],
    calls: Sequence[Callable[[], Any]],
    *,
    timeout: float = 10,
) -> list[str]:
    """Runs ``calls`` while the statement ``lock`` (e.g. ``SELECT … FOR UPDATE``) holds
    what they need; once all of them wait for it, releases it. Their status code names."""
    with (
        psycopg.connect(database_url, autocommit=True) as db,
        psycopg.connect(database_url) as holder,
        ThreadPoolExecutor(len(calls)) as pool,
    ):
        holder.execute(lock, params)
        futures = [pool.submit(code_of, call) for call in calls]
        deadline = time.monotonic() + timeout
        while waiting_on_locks(db) < len(calls):
            done = [f.result() for f in futures if f.done()]
            assert not done, f"calls finished without waiting for the lock: {done}"
            assert time.monotonic() < deadline, "the calls never reached the lock"
            time.sleep(0.01)
        holder.rollback()
        return [future.result(timeout=30) for future in futures]
