"""``spoke-grpc serve --workers N``: N server processes sharing one port, and their supervisor.

The supervisor (this process) applies migrations and creates the bootstrap admin once,
then starts N worker processes (``spoke-grpc serve --worker``), each a whole server with
its own pool, usage buffer and caches, all listening on the same address with
SO_REUSEPORT so the kernel spreads connections over them. A worker that dies is logged and
started again (with a growing pause if it keeps dying); SIGTERM or SIGINT is passed on to
every worker, which drains its calls within the grace period, and the supervisor exits 0
once they are gone. With ``SPOKE_METRICS_LISTEN`` the supervisor serves the metrics of all
the workers, each read from its own unix socket at scrape time (``spoke_grpc.metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from spoke_grpc.bootstrap import bootstrap_before_serving
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.metrics import WorkerMetrics
from spoke_grpc.tls import probe_channel

log = logging.getLogger(__name__)

_RESTART_PAUSE_MAX = 30.0
_POLL_SECONDS = 0.2


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    failures: int = 0


def supervise(settings: Settings, database_url: str, address: str, count: int) -> int:
    _, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        raise ConfigError(f"--workers needs a fixed port to share, got {address!r}")
    check_free(address)
    token_file = asyncio.run(bootstrap_before_serving(database_url, settings, settings.token_file))
    if token_file is not None:
        print(f"bootstrap platform-admin token written to {token_file} (mode 0600)", flush=True)
    metrics = WorkerMetrics(settings.metrics_listen) if settings.metrics_listen else None
    sockets = [metrics.socket(i) if metrics else None for i in range(count)]
    stop = _StopSignal()
    workers = [_start(i, database_url, address, sockets[i]) for i in range(count)]
    try:
        _wait_ready(address, settings, workers)
        print(f"spoke-grpc serving on {address} with {count} workers", flush=True)
        while not stop.requested:
            for i, worker in enumerate(workers):
                code = worker.process.poll()
                if code is not None and not stop.requested:
                    workers[i] = _restart(worker, code, database_url, address, sockets[i])
            time.sleep(_POLL_SECONDS)
        log.info("signal received; stopping %d workers", count)
    finally:
        _stop_all(workers, settings.shutdown_grace_seconds + 5)
        if metrics is not None:
            metrics.close()
    return 0


class _StopSignal:
    def __init__(self) -> None:
        self.requested = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._set)

    def _set(self, signum: int, frame: object) -> None:
        self.requested = True


def check_free(address: str) -> None:
    """ConfigError if something serves on ``address`` (``host:port``) already: binding
    without SO_REUSEPORT fails then. Port 0 (any free port) is always free."""
    host, _, raw_port = address.rpartition(":")
    if not raw_port.isdigit() or int(raw_port) == 0:
        return  # the server's own bind reports anything else
    port = int(raw_port)
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As grpc does: connections of a server that just stopped (TIME_WAIT) do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", port))
        except OSError:
            raise ConfigError(
                f"cannot listen on {address}: the address is in use or not available here"
                " (is another server running?); choose another with --listen or SPOKE_LISTEN"
            ) from None


def _start(index: int, database_url: str, address: str, metrics: Path | None) -> _Worker:
    env = {**os.environ, "DATABASE_URL": database_url}
    command = [
        *(sys.executable, "-m", "spoke_grpc", "serve", "--worker", "--no-migrate"),
        *("--listen", address),
        *(("--metrics-socket", str(metrics)) if metrics is not None else ()),
    ]
    process = subprocess.Popen(command, env=env)
    log.info("worker %d started (pid %d)", index, process.pid)
    return _Worker(index, process)


def _restart(
    worker: _Worker, code: int, database_url: str, address: str, metrics: Path | None
) -> _Worker:
    lived = time.monotonic() - worker.started
    failures = worker.failures + 1 if lived < _RESTART_PAUSE_MAX else 0
    pause = min(_RESTART_PAUSE_MAX, 0.5 * 2**failures) if failures else 0.0
    log.warning(
        "worker %d (pid %d) exited with code %s after %.1fs; restarting%s",
        worker.index,
        worker.process.pid,
        code,
        lived,
        f" in {pause:.1f}s" if pause else "",
    )
    time.sleep(pause)
    restarted = _start(worker.index, database_url, address, metrics)
    restarted.failures = failures
    return restarted


def _wait_ready(address: str, settings: Settings, workers: list[_Worker]) -> None:
    """Until a worker answers SERVING on ``address``, over TLS when the port serves it."""
    target = address.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]")
    timeout = settings.pool_timeout_seconds + 30
    deadline = time.monotonic() + timeout
    with probe_channel(target, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if any(w.process.poll() is not None for w in workers):
                raise ConfigError("a worker exited while starting; see its error above")
            with contextlib.suppress(grpc.RpcError):
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(_POLL_SECONDS)
    raise ConfigError(f"the workers did not answer on {address} within {timeout:.0f}s")


def _stop_all(workers: list[_Worker], timeout: float) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for worker in workers:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            worker.process.wait(remaining)
        except subprocess.TimeoutExpired:
            log.error("worker %d did not stop in time; killing it", worker.index)
            worker.process.kill()
            worker.process.wait()
