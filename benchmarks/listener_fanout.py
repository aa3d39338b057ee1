"""Notifications per second each cache listener receives, for 1, 4 and 16 simulated replicas.

Every replica runs one cache listener (``spoke_grpc.cache.CacheListener``) on the same
database. Each pings itself on a channel of its own, so a listener receives its own pings
(4 a second) and the invalidations, whatever the number of replicas. (Pinging through the
shared channel, as it did before, each listener received every replica's pings: 4·N a second,
N² in all.) The listeners here run in one process on one event loop, as N replicas would on
one database; no invalidation is sent meanwhile, so the figures are the listeners' own load.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/listener_fanout.py`` (DATABASE_URL if set,
else an embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from spoke_grpc import migrations
from spoke_grpc.cache import AccessCache, CacheListener
from spoke_grpc.config import REPO_ROOT, Settings
from tests import harness

REPLICAS = (1, 4, 16)


async def notifications_per_listener(
    database_url: str, replicas: int, seconds: float
) -> list[float]:
    """Starts ``replicas`` listeners, waits until each has heard its first ping, then counts
    what each receives during ``seconds``: one rate per listener."""
    settings = Settings()
    heard = [0] * replicas
    listeners = [CacheListener(AccessCache(), database_url, settings) for _ in range(replicas)]
    for i, listener in enumerate(listeners):
        listener.heard = lambda payload, i=i: heard.__setitem__(i, heard[i] + 1)
        listener.start()
    try:
        deadline = time.monotonic() + 30
        while not all(heard):  # every listener connected and heard itself
            if time.monotonic() > deadline:
                raise TimeoutError("the listeners did not start within 30 s")
            await asyncio.sleep(0.05)
        start, before = time.monotonic(), list(heard)
        await asyncio.sleep(seconds)  # the measurement window
        elapsed = time.monotonic() - start
        return [(after - was) / elapsed for after, was in zip(heard, before, strict=True)]
    finally:
        for listener in listeners:
            await listener.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement window")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spoke-fanout-"))
    tmp.chmod(0o755)
    admin_url = harness.admin_url(tmp)
    url = harness.create_database(admin_url, prefix="spoke_fanout")
    try:
        migrations.apply(url, REPO_ROOT / "migrations")
        print(f"{'replicas':>8} {'mean/s':>8} {'max/s':>8}  (notifications per listener)")
        for replicas in REPLICAS:
            rates = asyncio.run(notifications_per_listener(url, replicas, args.seconds))
            mean = sum(rates) / len(rates)
            print(f"{replicas:>8} {mean:>8.2f} {max(rates):>8.2f}")
    finally:
        harness.drop_database(admin_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
