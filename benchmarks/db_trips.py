"""Counts what one call costs the database: pool checkouts, statements, round trips, transactions.

Runs a real SpokeServer (in this process, on an ephemeral port) whose database traffic goes
through a TCP proxy that reads the PostgreSQL frontend protocol, so every figure is counted
on the wire, not estimated:

- checkouts: connection requests made to the server's pool (``pool.get_stats()``)
- statements: queries executed (simple ``Query`` or extended ``Execute`` messages), with the
  BEGIN/COMMIT/ROLLBACK among them shown apart
- round trips: times the server waited for PostgreSQL (``Query`` and ``Sync`` messages)
- transactions: explicit BEGIN blocks plus statements run outside any block (autocommit)

Usage: ``make db-trips`` (DATABASE_URL if set, else an embedded PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from spoke.v1 import (
    module_pb2,
    module_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

from spoke_grpc import migrations
from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import REPO_ROOT, Settings
from spoke_grpc.server import SpokeServer
from tests import harness
from tests.proxy import DatabaseProxy

_UNTYPED = {80877103, 80877104}  # SSLRequest, GSSENCRequest: the startup message follows
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


class ProtocolCounter:
    """Reads one connection's frontend messages and counts what they ask PostgreSQL to do."""

    def __init__(self, tally: Counter[str], lock: threading.Lock) -> None:
        self._buffer = b""
        self._started = False
        self._statements: dict[bytes, str] = {}
        self._in_block = False
        self._bound = ""
        self._tally = tally
        self._lock = lock

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if not self._started:
                if len(self._buffer) < 8:
                    return
                length, code = struct.unpack("!II", self._buffer[:8])
                if len(self._buffer) < length:
                    return
                self._buffer = self._buffer[length:]
                self._started = code not in _UNTYPED
                continue
            if len(self._buffer) < 5:
                return
            kind = self._buffer[:1]
            (length,) = struct.unpack("!I", self._buffer[1:5])
            if len(self._buffer) < 1 + length:
                return
            body = self._buffer[5 : 1 + length]
            self._buffer = self._buffer[1 + length :]
            self._message(kind, body)

    def _message(self, kind: bytes, body: bytes) -> None:
        if kind == b"P":
            name, _, rest = body.partition(b"\0")
            self._statements[name] = rest.partition(b"\0")[0].decode(errors="replace")
        elif kind == b"B":
            _portal, _, rest = body.partition(b"\0")
            self._bound = self._statements.get(rest.partition(b"\0")[0], "")
        elif kind == b"E":
            self._statement(self._bound)
        elif kind == b"Q":
            self._count("round_trips")
            self._statement(body.rstrip(b"\0").decode(errors="replace"))
        elif kind == b"S":
            self._count("round_trips")

    def _statement(self, text: str) -> None:
        word = text.strip().split(None, 1)[0].upper() if text.strip() else ""
        if word in _CONTROL:
            self._count("control")
            if word == "BEGIN":
                self._in_block = True
                self._count("transactions")
            elif word in ("COMMIT", "ROLLBACK"):
                self._in_block = False
            return
        self._count("statements")
        if not self._in_block:
            self._count("transactions")

    def _count(self, key: str) -> None:
        with self._lock:
            self._tally[key] += 1


class CountingProxy(DatabaseProxy):
    """DatabaseProxy whose client-to-server direction is read by a ProtocolCounter."""

    def __init__(self, database_url: str) -> None:
        self.tally: Counter[str] = Counter()
        self._tally_lock = threading.Lock()
        super().__init__(database_url)

    def client_reader(self) -> Callable[[bytes], None]:
        return ProtocolCounter(self.tally, self._tally_lock).feed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="spoke-trips-"))
    tmp.chmod(0o755)
    admin_url = harness.admin_url(tmp)
    url = harness.create_database(admin_url, prefix="spoke_trips")
    migrations.apply(url, REPO_ROOT / "migrations")
    proxy = CountingProxy(url)
    # A long health interval keeps probes out of the counts.
    settings = Settings(health_check_interval_seconds=3600, pool_min_size=2, pool_max_size=4)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def make() -> SpokeServer:
        return SpokeServer(settings, proxy.url)

    server = run(make())
    port = run(server.start("127.0.0.1:0"))
    try:
        token_file = run(ensure_bootstrap_admin(server.pool, tmp / "token"))
        metadata = [("authorization", f"Bearer {token_file.read_text().strip()}")]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            users = user_pb2_grpc.UserServiceStub(channel)
            orgs = organization_pb2_grpc.OrganizationServiceStub(channel)
            orgs.CreateOrganization(
                organization_pb2.CreateOrganizationRequest(name="trips"), metadata=metadata
            )
            modules = module_pb2_grpc.ModuleServiceStub(channel)
            modules.CreateModule(
                module_pb2.CreateModuleRequest(org="trips", name="api"), metadata=metadata
            )
            modules.CreateVersion(
                module_pb2.CreateVersionRequest(
                    org="trips",
                    module="api",
                    version="1.0.0",
                    files=[
                        module_pb2.ProtoFile(
                            path="api/a.proto",
                            content='syntax = "proto3";\npackage api.v1;\nmessage A {}\n',
                        )
                    ],
                ),
                metadata=metadata,
            )
            counter = iter(range(10**9))
            calls = {
                "GetOrganization": lambda: orgs.GetOrganization(
                    organization_pb2.GetOrganizationRequest(org="trips"), metadata=metadata
                ),
                "GetCurrentUser": lambda: users.GetCurrentUser(
                    user_pb2.GetCurrentUserRequest(), metadata=metadata
                ),
                "GetVersion": lambda: modules.GetVersion(
                    module_pb2.GetVersionRequest(org="trips", module="api", version="1.0.0"),
                    metadata=metadata,
                ),
                "CreateOrganization": lambda: orgs.CreateOrganization(
                    organization_pb2.CreateOrganizationRequest(name=f"trips-{next(counter)}"),
                    metadata=metadata,
                ),
            }
            columns = ("checkouts", "statements", "control", "round_trips", "transactions")
            print(f"{'rpc':<20}" + "".join(f"{c:>14}" for c in columns))
            for name, call in calls.items():
                for _ in range(10):  # warm up: prepared statements, pool connections
                    call()
                before_pool = server.pool.get_stats().get("requests_num", 0)
                with proxy._tally_lock:
                    proxy.tally.clear()
                for _ in range(args.calls):
                    call()
                checkouts = server.pool.get_stats().get("requests_num", 0) - before_pool
                with proxy._tally_lock:
                    tally = dict(proxy.tally)
                figures = [checkouts, *(tally.get(c, 0) for c in columns[1:])]
                print(f"{name:<20}" + "".join(f"{f / args.calls:>14.2f}" for f in figures))
            print(f"(per call, over {args.calls} calls; statements exclude BEGIN/COMMIT/ROLLBACK)")
    finally:
        run(server.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        proxy.close()
        harness.drop_database(admin_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
