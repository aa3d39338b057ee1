"""Prometheus metrics, served on their own HTTP address (``SPOKE_METRICS_LISTEN``; off when
unset) in the text exposition format.

What a call costs: the telemetry interceptor updates one counter, one histogram and one
gauge in memory (``RpcMetrics``), nothing else. Everything else is read when Prometheus
scrapes, by ``StateCollector`` on the metrics server's thread: the pool's own counters
(``get_stats()``), the usage buffer, the compile pool, the caches, the mailer, and the
email outbox (one short query on a connection of its own, only when email is on). Nothing
polls.

Each server has a registry of its own (several servers in one test process do not mix);
``cache_event`` counts cache hits, misses and invalidations per process, for any cache
layer to call::

    from spoke_grpc import metrics
    metrics.cache_event("access", "hit")   # → spoke_cache_events_total{cache="access",event="hit"}

Several workers (``serve --workers N``): one scrape must show them all, with the live
state of each (pool, usage buffer…), which prometheus_client's multiprocess mode cannot
give (its collectors cannot run in another process, and its mmap files turn every
request-path update into a file write). Instead the supervisor serves
``SPOKE_METRICS_LISTEN`` with a ``WorkerMetrics`` hub; each worker serves its own registry
on a unix socket in the hub's private directory (``SpokeServer(metrics_socket=
hub.socket(i))``); a scrape reads every worker's socket then, adds a ``worker`` label to
each of its series and answers with all of them, plus ``spoke_worker_up{worker}``. A
restarted worker's counters start again from zero under the same label, which
Prometheus' ``rate()`` reads as a counter reset.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from spoke_grpc.anonymous_rate import AnonymousRateLimiter
from spoke_grpc.config import ConfigError
from spoke_grpc.usage import UsageBuffer

log = logging.getLogger(__name__)

# Seconds: from a cached read (about a millisecond) to the longest statement budget.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
OUTBOX_QUERY_TIMEOUT_SECONDS = 2
WORKER_SCRAPE_TIMEOUT_SECONDS = 5.0

# Process-wide cache events, (cache, event) → count: a dict update on the request path.
_cache_events: dict[tuple[str, str], int] = {}


def cache_event(cache: str, event: str) -> None:
    """Counts one cache event (``hit``, ``miss``, ``invalidation``, ``eviction``…) of the
    named cache; exported as ``spoke_cache_events_total{cache, event}``."""
    key = (cache, event)
    _cache_events[key] = _cache_events.get(key, 0) + 1


class RpcMetrics:
    """The per-call metrics of one server, labelled by full method name
    (``spoke.v1.ModuleService/CreateVersion``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "spoke_rpc_calls",
            "spoke.v1 calls finished, by method, status code and google.rpc ErrorInfo reason",
            ["method", "code", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "spoke_rpc_duration_seconds",
            "Time from a spoke.v1 call's arrival in the server to its answer",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "spoke_rpc_in_flight", "spoke.v1 calls being served now", ["method"], registry=registry
        )
        self.refused_outsider_calls = Counter(
            "spoke_refused_outsider_calls",
            "Calls into an organization refused to a caller who is not its member (a stranger"
            " or an anonymous caller); they write no audit event into the organization",
            ["method"],
            registry=registry,
        )

    def count_refused_outsider(self, method: str) -> None:
        self.refused_outsider_calls.labels(method).inc()


class OutboxProbe:
    """Reads the email outbox's backlog when scraped, on a connection of its own (opened on
    first use, reopened after a failure) with a short statement timeout."""

    _QUERY = (
        "SELECT count(*), count(*) FILTER (WHERE attempts > 0),"
        " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8"
        " FROM email_outbox WHERE sent_at IS NULL"
    )

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self.errors = 0

    def read(self) -> tuple[int, int, float] | None:
        """(pending, retrying, oldest pending age in seconds); None when it cannot tell."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    timeout_ms = OUTBOX_QUERY_TIMEOUT_SECONDS * 1000
                    self._conn = psycopg.connect(
                        self._database_url,
                        autocommit=True,
                        connect_timeout=OUTBOX_QUERY_TIMEOUT_SECONDS,
                        application_name="spoke-grpc-metrics",
                        prepare_threshold=None,
                        options=f"-c statement_timeout={timeout_ms}",
                    )
                row = self._conn.execute(self._QUERY).fetchone()
            except psycopg.Error as exc:
                self.errors += 1
                log.warning("metrics: cannot read the email outbox: %s", exc)
                self.close()
                return None
        if row is None:
            return None
        return int(row[0]), int(row[1]), float(row[2])

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()


class _Mailer(Protocol):
    sent: int
    failures: int


@dataclass
class StateSources:
    """What ``StateCollector`` reads. ``compiler`` and the caches are read defensively
    (attributes they have now or may grow): a missing one is left out, never an error."""

    pool: AsyncConnectionPool
    usage: UsageBuffer
    max_concurrent_calls: int = 0
    compiler: object | None = None
    caches: Mapping[str, object] = field(default_factory=dict)
    mailer: _Mailer | None = None
    outbox: OutboxProbe | None = None
    anonymous_rate: AnonymousRateLimiter | None = None


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _int_attribute(obj: object, *names: str) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return None


class StateCollector(Collector):
    """The server's state, read at scrape time."""

    def __init__(self, sources: StateSources) -> None:
        self._s = sources

    def collect(self) -> Iterator[Metric]:
        yield _gauge(
            "spoke_rpc_max_concurrent_calls",
            "SPOKE_MAX_CONCURRENT_CALLS: calls beyond it are refused (0: no cap)",
            self._s.max_concurrent_calls,
        )
        yield from self._pool()
        yield from self._usage()
        yield from self._anonymous_rate()
        yield from self._compiler()
        yield from self._caches()
        yield from self._email()

    def _pool(self) -> Iterator[Metric]:
        stats = self._s.pool.get_stats()
        gauges = {
            "min_size": ("pool_min", "Connections the pool keeps open at least"),
            "max_size": ("pool_max", "Connections the pool may open at most"),
            "size": ("pool_size", "Connections open now, in use or idle"),
            "idle": ("pool_available", "Connections open and idle now"),
            "waiting": ("requests_waiting", "Calls waiting now for a connection"),
        }
        for name, (key, doc) in gauges.items():
            yield _gauge(f"spoke_db_pool_{name}", doc, stats.get(key, 0))
        counters = {
            "checkouts": ("requests_num", 1, "Connections handed out"),
            "checkouts_queued": ("requests_queued", 1, "Checkouts that had to wait"),
            "checkout_wait_seconds": (
                "requests_wait_ms",
                1000,
                "Time spent waiting for a connection (divide by checkouts: mean checkout time)",
            ),
            "checkout_timeouts": (
                "requests_errors",
                1,
                "Checkouts that timed out (UNAVAILABLE, SERVER_OVERLOADED)",
            ),
            "connections_opened": ("connections_num", 1, "Connections opened"),
            "connect_seconds": ("connections_ms", 1000, "Time spent opening connections"),
            "connection_errors": ("connections_errors", 1, "Failed connection attempts"),
            "connections_lost": ("connections_lost", 1, "Connections found broken"),
        }
        for name, (key, scale, doc) in counters.items():
            yield _counter(f"spoke_db_pool_{name}", doc, stats.get(key, 0) / scale)

    def _usage(self) -> Iterator[Metric]:
        usage = self._s.usage
        yield _gauge(
            "spoke_usage_unflushed_requests",
            "API requests counted in memory, not yet written to the database",
            usage.pending_requests,
        )
        yield _gauge(
            "spoke_usage_unflushed_keys", "Org-hours with unflushed counts", usage.pending_keys
        )
        yield _gauge(
            "spoke_usage_last_flush_age_seconds",
            "Seconds since the usage buffer was last written through (or started)",
            max(0.0, time.time() - usage.last_flush_at),
        )
        yield _counter(
            "spoke_usage_failed_flushes",
            "Usage flushes that failed (their counts are kept and retried)",
            usage.failed_flushes,
        )
        yield _counter(
            "spoke_usage_dropped_requests",
            "API request counts dropped because the buffer was full",
            usage.dropped,
        )

    def _anonymous_rate(self) -> Iterator[Metric]:
        limiter = self._s.anonymous_rate
        if limiter is None or limiter.limit <= 0:
            return
        yield _gauge(
            "spoke_anonymous_rate_limit",
            "SPOKE_ANONYMOUS_RATE_LIMIT: anonymous calls per minute per client address",
            limiter.limit,
        )
        yield _gauge(
            "spoke_anonymous_rate_addresses",
            "Client addresses counted in the current minute",
            limiter.tracked,
        )
        yield _counter(
            "spoke_anonymous_rate_refused",
            "Anonymous calls refused for their address's rate limit",
            limiter.refused,
        )
        yield _counter(
            "spoke_anonymous_rate_evicted",
            "Addresses forgotten before their minute ended, to bound memory",
            limiter.evicted,
        )

    def _compiler(self) -> Iterator[Metric]:
        compiler = self._s.compiler
        if compiler is None:
            return
        workers = _int_attribute(compiler, "workers", "_workers")
        running = _int_attribute(compiler, "running")
        queued = _int_attribute(compiler, "queued")
        if workers is not None:
            yield _gauge("spoke_compile_workers", "protoc worker processes", workers)
        if running is not None and queued is not None:
            yield _gauge("spoke_compile_running", "Compiles running in a worker", running)
            yield _gauge(
                "spoke_compile_queued",
                "Compiles admitted and not running: loading their sources or waiting",
                queued,
            )
        capacity = _int_attribute(compiler, "capacity")
        if capacity is not None:
            yield _gauge("spoke_compile_capacity", "Compiles running or queued at most", capacity)
        for attribute, name, doc in (
            ("protoc_runs", "spoke_compile_jobs", "Compile jobs sent to the workers"),
            ("timeouts", "spoke_compile_timeouts", "Compiles killed at the time limit"),
            (
                "refused",
                "spoke_compile_refused",
                "Compiles refused: pool and queue full, an org's share taken, or too near a"
                " deadline",
            ),
            ("pool_replacements", "spoke_compile_pool_replacements", "Worker pools restarted"),
        ):
            value = _int_attribute(compiler, attribute)
            if value is not None:
                yield _counter(name, doc, value)

    def _caches(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "spoke_cache_events",
            "Cache events (hit, miss, invalidation, eviction…) by cache",
            labels=["cache", "event"],
        )
        counts = dict(_cache_events)
        for cache, obj in self._s.caches.items():
            for event, attribute in (
                ("hit", "hits"),
                ("miss", "misses"),
                ("invalidation", "invalidations"),
                ("eviction", "evictions"),
            ):
                value = _int_attribute(obj, attribute)
                if value is not None and (cache, event) not in counts:
                    counts[cache, event] = value
        for (cache, event), value in sorted(counts.items()):
            family.add_metric([cache, event], value)
        yield family

    def _email(self) -> Iterator[Metric]:
        mailer, outbox = self._s.mailer, self._s.outbox
        if mailer is not None:
            yield _counter("spoke_email_sent", "Invitation emails sent", mailer.sent)
            yield _counter(
                "spoke_email_failures", "Invitation email sends that failed", mailer.failures
            )
        if outbox is None:
            return
        backlog = outbox.read()
        yield _counter(
            "spoke_email_outbox_query_errors",
            "Scrapes that could not read the email outbox",
            outbox.errors,
        )
        if backlog is None:
            return
        pending, retrying, oldest = backlog
        yield _gauge(
            "spoke_email_outbox_pending",
            "Outbox emails not sent yet (database-wide: every process reports it)",
            pending,
        )
        yield _gauge(
            "spoke_email_outbox_retrying",
            "Outbox emails whose sending failed at least once",
            retrying,
        )
        yield _gauge(
            "spoke_email_outbox_oldest_age_seconds",
            "Age of the oldest unsent outbox email (0: none)",
            oldest,
        )


class _Forward(Collector):
    """Collects another collector's metrics when this registry is scraped."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class ServerMetrics:
    """One server's metrics: its registry (call metrics, its state, the process's) and the
    endpoint that serves it (``serve_http`` or, as a worker, ``serve_unix``)."""

    def __init__(self, sources: StateSources) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.rpc = RpcMetrics(self.registry)
        self.registry.register(StateCollector(sources))
        self._outbox = sources.outbox
        self.endpoint: HttpEndpoint | UnixEndpoint | None = None

    def serve_http(self, address: str) -> None:
        self.endpoint = HttpEndpoint(address, self.registry)

    def serve_unix(self, path: Path) -> None:
        self.endpoint = UnixEndpoint(path, self.registry)

    def close(self) -> None:
        """Stops serving (blocking: a scrape in progress is let finish)."""
        endpoint, self.endpoint = self.endpoint, None
        if endpoint is not None:
            endpoint.close()
        if self._outbox is not None:
            self._outbox.close()


# --- endpoints ----------------------------------------------------------------------------


def split_listen(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) → (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class HttpEndpoint:
    """Serves a registry at ``http://address/metrics`` from a thread."""

    def __init__(self, address: str, registry: CollectorRegistry) -> None:
        host, port = split_listen(address)
        try:
            self._server, self._thread = start_http_server(port, host, registry=registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {address} ({exc.strerror or exc}): the address is"
                " in use or not available here; choose another with SPOKE_METRICS_LISTEN"
            ) from None
        self.port: int = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    registry: CollectorRegistry


class _WriteExposition(socketserver.StreamRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        self.wfile.write(generate_latest(self.server.registry))


class UnixEndpoint:
    """Serves a registry's exposition to whoever connects to the unix socket ``path``."""

    def __init__(self, path: Path, registry: CollectorRegistry) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a worker that died
        self._path = path
        self._server = _UnixServer(str(path), _WriteExposition)
        self._server.registry = registry
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="spoke-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


def read_unix(path: Path, timeout: float = WORKER_SCRAPE_TIMEOUT_SECONDS) -> str:
    """What the endpoint at ``path`` serves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


class WorkerCollector(Collector):
    """Every worker's metrics, read from their sockets at scrape time, labelled ``worker``."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily(
            "spoke_worker_up", "1 when the worker answered this scrape", labels=["worker"]
        )
        for path in sorted(self._directory.glob("worker-*.sock")):
            worker = path.stem.removeprefix("worker-")
            try:
                text = read_unix(path)
            except OSError as exc:
                log.warning("metrics: worker %s did not answer: %s", worker, exc)
                up.add_metric([worker], 0)
                continue
            up.add_metric([worker], 1)
            for family in text_string_to_metric_families(text):
                target = merged.get(family.name)
                if target is None:
                    target = Metric(family.name, family.documentation, family.type, family.unit)
                    merged[family.name] = target
                target.samples.extend(
                    s._replace(labels={**s.labels, "worker": worker}) for s in family.samples
                )
        yield from merged.values()
        yield up


class WorkerMetrics:
    """The supervisor's side of ``--workers N``: serves ``listen`` for all the workers.

    ``socket(i)`` is where worker ``i`` serves its own metrics (pass it to its
    ``SpokeServer`` as ``metrics_socket``); the directory is private to the run (0700) and
    removed by ``close``.
    """

    def __init__(self, listen: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="spoke-metrics-"))
        self.directory.chmod(0o700)
        registry = CollectorRegistry()
        registry.register(WorkerCollector(self.directory))
        try:
            self._endpoint = HttpEndpoint(listen, registry)
        except BaseException:
            self.directory.rmdir()
            raise
        self.port = self._endpoint.port

    def socket(self, worker: int) -> Path:
        return self.directory / f"worker-{worker}.sock"

    def close(self) -> None:
        self._endpoint.close()
        for path in self.directory.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)
