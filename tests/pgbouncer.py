"""A real pgbouncer in transaction-pooling mode in front of a test database.

It listens on an ephemeral loopback port with a config and an auth file of its own
(SCRAM for clients, the server reached over TCP or the embedded server's unix socket),
keeps only a few server connections so clients really share them, and ignores no
startup parameter: whatever the service sends, pgbouncer must accept as it is.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from tests.conftest import free_port

PASSWORD = "bouncer-test-secret"
SERVER_CONNECTIONS = 4  # per database and user: two server processes share these


def binary() -> str | None:
    """The pgbouncer executable (Debian puts it in /usr/sbin), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


@dataclass
class Pgbouncer:
    url: str  # postgresql:// URL of the target database through pgbouncer
    database: str
    log: Path
    command: list[str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Starts pgbouncer (again, on the same port) and waits until it answers."""
        self.proc = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_ready(self.proc, self)

    def stop(self) -> None:
        """Stops pgbouncer: its clients' connections drop and new ones are refused."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def clients(self) -> list[dict[str, Any]]:
        """SHOW CLIENTS of the test database (who is connected through pgbouncer now)."""
        return [r for r in self._show(sql.SQL("SHOW CLIENTS")) if r["database"] == self.database]

    def servers(self) -> list[dict[str, Any]]:
        """SHOW SERVERS of the test database (the server connections pgbouncer holds)."""
        return [r for r in self._show(sql.SQL("SHOW SERVERS")) if r["database"] == self.database]

    def _show(self, query: sql.SQL) -> list[dict[str, Any]]:
        # The admin console speaks only the simple query protocol: a ClientCursor does.
        admin = self.url.rsplit("/", 1)[0] + "/pgbouncer"
        with psycopg.connect(
            admin, autocommit=True, prepare_threshold=None, cursor_factory=psycopg.ClientCursor
        ) as conn:
            cur = conn.cursor(row_factory=dict_row)
            return cur.execute(query).fetchall()


def _run_as(socket_dir: str | None) -> str | None:
    """pgbouncer refuses to run as root: run it as the owner of the server's socket
    directory (the embedded server's user), else as nobody."""
    if os.geteuid() != 0:
        return None
    if socket_dir is not None:
        return pwd.getpwuid(Path(socket_dir).stat().st_uid).pw_name
    return "nobody"


@contextlib.contextmanager
def running(database_url: str) -> Iterator[Pgbouncer]:
    """pgbouncer in transaction mode in front of ``database_url``; stopped afterwards."""
    exe = binary()
    if exe is None:
        raise RuntimeError("pgbouncer is not installed")
    target = conninfo_to_dict(database_url)
    host = str(target.get("host") or "127.0.0.1")
    socket_dir = host if host.startswith("/") else None
    user = str(target.get("user") or "postgres")
    database = str(target["dbname"])
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="spoke-pgbouncer-"))
    run_as = _run_as(socket_dir)
    server = make_conninfo(host=host, port=str(target.get("port") or 5432), dbname=database)
    (work / "users.txt").write_text(f'"{user}" "{PASSWORD}"\n')
    (work / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"{database} = {server}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = scram-sha-256",
                f"auth_file = {work / 'users.txt'}",
                "pool_mode = transaction",
                f"admin_users = {user}",
                f"default_pool_size = {SERVER_CONNECTIONS}",
                "max_client_conn = 200",
                f"logfile = {work / 'pgbouncer.log'}",
                *([f"user = {run_as}"] if run_as else []),
                "",
            ]
        )
    )
    if run_as:
        entry = pwd.getpwnam(run_as)
        for path in (work, *work.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    bouncer = Pgbouncer(
        f"postgresql://{quote(user)}:{PASSWORD}@127.0.0.1:{port}/{quote(database)}",
        database,
        work / "pgbouncer.log",
        [exe, str(work / "pgbouncer.ini")],
    )
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
        shutil.rmtree(work, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], bouncer: Pgbouncer) -> None:
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {proc.returncode}:\n{bouncer.log_text()}")
        try:
            with psycopg.connect(bouncer.url, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
