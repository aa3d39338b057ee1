"""The grpc.aio server: spoke.v1 services behind the interceptors, plus health and reflection.

Interceptors, outermost first: [tracing, when on] → telemetry (request id, access line,
metrics) → errors → concurrency cap → anonymous rate limit (per client address) → request
check (decoding, text) → unit of work (one connection, one transaction for writes,
deadline, retries) → audit → auth (caller and org in one statement) → org context (access
rules) → usage → quota → servicer.

The streaming ``EventService/WatchEvents`` passes the request check's decoding only and
applies the rest of the policy itself (``spoke_grpc.servicers.events``). Background tasks
beside the calls: the usage flush, the cache listener, the webhook dispatcher, the event
listener that wakes watch streams, and the mailer (when email is on).

Lifecycle: ``start`` checks that every RPC's policy can be enforced, opens the pool and
serves; ``stop`` turns health NOT_SERVING, refuses new calls, lets in-flight calls finish
within the grace period, then closes the pool. The port is bound exclusively (no
SO_REUSEPORT) unless ``reuse_port``: a second server on a taken address fails at start
instead of silently splitting the traffic.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.trace import TracerProvider
from spoke.v1 import (
    event_pb2_grpc,
    member_pb2_grpc,
    module_pb2_grpc,
    organization_pb2_grpc,
    quota_pb2_grpc,
    user_pb2_grpc,
    webhook_pb2_grpc,
)

from spoke_grpc import metrics, tls, tracing, webhook_secrets
from spoke_grpc.anonymous_rate import AnonymousRateLimiter
from spoke_grpc.app import App
from spoke_grpc.cache import AccessCache, CacheListener
from spoke_grpc.compiler import Compiler
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.database import check_session, connect, create_pool, pool_is_full
from spoke_grpc.event_stream import EventHub
from spoke_grpc.health import DatabaseHealth
from spoke_grpc.interceptors.anonymous_rate import AnonymousRateInterceptor
from spoke_grpc.interceptors.audit import AuditInterceptor
from spoke_grpc.interceptors.auth import AuthInterceptor
from spoke_grpc.interceptors.concurrency import ConcurrencyLimitInterceptor
from spoke_grpc.interceptors.errors import ErrorsInterceptor
from spoke_grpc.interceptors.org_context import OrgContextInterceptor
from spoke_grpc.interceptors.quota import QuotaInterceptor
from spoke_grpc.interceptors.request_check import RequestCheckInterceptor
from spoke_grpc.interceptors.telemetry import TelemetryInterceptor
from spoke_grpc.interceptors.unit_of_work import UnitOfWorkInterceptor
from spoke_grpc.interceptors.usage import UsageInterceptor
from spoke_grpc.mailer import InvitationMailer
from spoke_grpc.pagination import PageTokens, load_key
from spoke_grpc.policy import POLICIES, services, unenforceable
from spoke_grpc.reflection import enable_reflection
from spoke_grpc.response_cache import ResponseCache
from spoke_grpc.servicers.events import EventServicer
from spoke_grpc.servicers.members import MemberServicer
from spoke_grpc.servicers.modules import ModuleServicer
from spoke_grpc.servicers.organizations import OrganizationServicer
from spoke_grpc.servicers.quotas import QuotaServicer
from spoke_grpc.servicers.users import UserServicer
from spoke_grpc.servicers.webhooks import WebhookServicer
from spoke_grpc.usage import Clock, UsageBuffer, utc_now
from spoke_grpc.webhook_dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 2**20
# The server pings an idle connection's client every SPOKE_KEEPALIVE_TIME and drops it
# when no answer comes within this long.
KEEPALIVE_TIMEOUT_MS = 20_000
# How often a client may ping without data before it is told off (GOAWAY too_many_pings).
MIN_CLIENT_PING_INTERVAL_MS = 10_000


def server_options(settings: Settings, *, reuse_port: bool = False) -> list[tuple[str, int]]:
    """grpc server options: message sizes, port sharing, connection age and keepalive.

    A connection is closed (GOAWAY, then ``SPOKE_MAX_CONNECTION_AGE_GRACE`` for its calls)
    after ``SPOKE_MAX_CONNECTION_AGE`` (grpc adds ±10% jitter), so clients behind an L4
    load balancer reconnect and spread over new replicas. Keepalive pings, with or without
    calls, keep an idle connection from being reaped by a load balancer or NAT (most reap
    after 4-10 minutes); clients may ping every 10 s.
    """
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
    ]
    if settings.keepalive_time_seconds > 0:
        options.append(("grpc.keepalive_time_ms", int(settings.keepalive_time_seconds * 1000)))
    if settings.max_connection_age_seconds > 0:
        age_ms = int(settings.max_connection_age_seconds * 1000)
        grace_ms = int(settings.max_connection_age_grace_seconds * 1000)
        options += [
            ("grpc.max_connection_age_ms", max(1, age_ms)),
            ("grpc.max_connection_age_grace_ms", grace_ms),
        ]
    return options


@dataclass
class SpokeServer:
    """``tracer_provider``: trace calls and statements (``spoke_grpc.tracing``; None: off).
    ``metrics_socket``: serve metrics there for a ``--workers`` supervisor instead of on
    ``SPOKE_METRICS_LISTEN`` (``spoke_grpc.metrics.WorkerMetrics``)."""

    settings: Settings
    database_url: str
    reuse_port: bool = False
    clock: Clock = utc_now
    tracer_provider: TracerProvider | None = None
    metrics_socket: Path | None = None

    def __post_init__(self) -> None:
        self.pool = create_pool(
            self.database_url,
            self.settings,
            instrument=(
                tracing.connection_instrumenter(self.tracer_provider)
                if self.tracer_provider is not None
                else None
            ),
        )
        # Sessions of their own (health, mailer, LISTEN) bypass a transaction-mode pgbouncer.
        self.direct_url = self.settings.direct_url(self.database_url)
        self.health = DatabaseHealth(
            HealthServicer(),
            self.direct_url,
            self.pool,
            [s.full_name for s in services()],
            self.settings.health_check_interval_seconds,
            settings=self.settings,
        )
        self.cache = AccessCache()
        self.responses = ResponseCache(self.settings.response_cache_bytes)
        self.cache_listener = CacheListener(
            self.cache, self.direct_url, self.settings, followers=[self.responses]
        )
        self.events = EventHub(self.direct_url, self.settings)
        self.usage = UsageBuffer(
            self.pool, self.settings.usage_flush_interval_seconds, clock=self.clock
        )
        self.anonymous_rate = AnonymousRateLimiter(
            self.settings.anonymous_rate_limit, clock=self.clock
        )
        self._server: aio.Server | None = None
        self.port = 0
        self.compiler = Compiler(
            self.settings.compile_workers,
            queue=self.settings.compile_queue,
            org_workers=self.settings.compile_org_workers,
            org_queue=self.settings.compile_org_queue,
            time_limit_seconds=self.settings.compile_time_limit_seconds,
            cache_entries=self.settings.compile_cache_entries,
            cache_bytes=self.settings.compile_cache_bytes,
            generators_path=self.settings.generators_path,
            sandbox=self.settings.compile_sandbox,
        )
        # Made here so that a bad SMTP URL fails before anything starts.
        self.mailer = (
            InvitationMailer(self.settings, self.direct_url) if self.settings.smtp_url else None
        )
        self.metrics: metrics.ServerMetrics | None = None
        self.webhooks: WebhookDispatcher | None = None  # made at start, with the secret key
        # Read here so that a bad certificate or key fails before anything starts.
        self.tls = tls.ReloadingCredentials(self.settings.tls) if self.settings.tls else None

    async def start(self, listen: str | None = None) -> int:
        """Opens the pool and starts serving; returns the bound port."""
        problems = unenforceable(POLICIES)
        if problems:
            raise ConfigError("RPC policies the server cannot enforce: " + "; ".join(problems))
        # One plain connection first: an unreachable database is then one clear error
        # rather than the pool's retry warnings. It also reads the page-token key and
        # checks what the pool's sessions get (UTC, statement timeout).
        async with await connect(
            self.database_url,
            self.settings,
            connect_timeout=max(1, int(self.settings.pool_timeout_seconds)),
            autocommit=True,
        ) as conn:
            await check_session(conn, self.settings)
            pages = PageTokens(await load_key(conn))
            webhook_key = await webhook_secrets.load_key(conn)
        self.app = App(
            self.settings,
            self.pool,
            pages,
            self.compiler,
            self.usage,
            self.responses,
            webhook_key=webhook_key,
        )
        self.webhooks = WebhookDispatcher(self.settings, self.direct_url, webhook_key)
        await self.pool.open(wait=True, timeout=self.settings.pool_timeout_seconds)
        try:
            self.metrics = self._start_metrics()
        except BaseException:
            await self.pool.close()
            raise
        cap = self.settings.max_concurrent_calls
        server = aio.server(
            interceptors=[
                *(
                    [tracing.server_interceptor(self.tracer_provider)]
                    if self.tracer_provider is not None
                    else []
                ),
                TelemetryInterceptor(
                    self.metrics.rpc if self.metrics is not None else None,
                    tracing=self.tracer_provider is not None,
                ),
                ErrorsInterceptor(
                    self.settings,
                    self.health.mark_unavailable,
                    functools.partial(pool_is_full, self.pool),
                ),
                *([ConcurrencyLimitInterceptor(cap)] if cap > 0 else []),
                *(
                    [AnonymousRateInterceptor(self.anonymous_rate)]
                    if self.anonymous_rate.limit > 0
                    else []
                ),
                RequestCheckInterceptor(),
                UnitOfWorkInterceptor(self.pool, self.settings, self.cache, self.responses),
                AuditInterceptor(
                    self.metrics.rpc.count_refused_outsider
                    if self.metrics is not None
                    else lambda method: None
                ),
                AuthInterceptor(self.cache),
                OrgContextInterceptor(),
                UsageInterceptor(self.usage),
                QuotaInterceptor(self.usage),
            ],
            options=server_options(self.settings, reuse_port=self.reuse_port),
        )
        self._add_services(server)
        address = listen or self.settings.listen
        try:
            self.port = (
                server.add_secure_port(address, self.tls.credentials)
                if self.tls is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            await self._stop_metrics()
            await self.pool.close()
            raise ConfigError(
                f"cannot listen on {address}: the address is in use or not available here"
                " (is another server running?); choose another with --listen or SPOKE_LISTEN"
            ) from None
        self.compiler.start()
        await server.start()
        self._server = server
        await self.health.set_serving(await self.health.probe())
        self.health.start()
        self.usage.start()
        self.cache_listener.start()
        self.webhooks.start()
        self.events.start()
        if self.mailer is not None:
            self.mailer.start()
        else:
            log.info(
                "email is off (SPOKE_SMTP_URL unset): invitations are not emailed;"
                " their tokens are returned by CreateInvitation"
            )
        log.info(
            "serving spoke.v1 on %s (port %d, %s)",
            address,
            self.port,
            tls.describe(self.settings.tls),
        )
        return self.port

    def _start_metrics(self) -> metrics.ServerMetrics | None:
        """The metrics endpoint: SPOKE_METRICS_LISTEN, the supervisor's socket, or none."""
        if self.metrics_socket is None and self.settings.metrics_listen is None:
            return None
        sources = metrics.StateSources(
            pool=self.pool,
            usage=self.usage,
            max_concurrent_calls=self.settings.max_concurrent_calls,
            compiler=self.compiler,
            # Read defensively: the caches are other layers' (and may move).
            caches={
                name: cache
                for name, cache in (
                    ("access", getattr(self, "cache", None)),
                    ("responses", getattr(self, "responses", None)),
                    ("build", getattr(self.compiler, "cache", None)),
                )
                if cache is not None
            },
            mailer=self.mailer,
            anonymous_rate=self.anonymous_rate,
            outbox=metrics.OutboxProbe(self.direct_url) if self.mailer is not None else None,
        )
        served = metrics.ServerMetrics(sources)
        if self.metrics_socket is not None:
            served.serve_unix(self.metrics_socket)
        elif self.settings.metrics_listen is not None:
            served.serve_http(self.settings.metrics_listen)
            log.info("serving metrics on http://%s/metrics", self.settings.metrics_listen)
        return served

    async def _stop_metrics(self) -> None:
        served, self.metrics = self.metrics, None
        if served is not None:
            await asyncio.to_thread(served.close)

    def _add_services(self, server: aio.Server) -> None:
        user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(self.app), server)
        organization_pb2_grpc.add_OrganizationServiceServicer_to_server(
            OrganizationServicer(self.app), server
        )
        member_pb2_grpc.add_MemberServiceServicer_to_server(MemberServicer(self.app), server)
        module_pb2_grpc.add_ModuleServiceServicer_to_server(ModuleServicer(self.app), server)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(self.app), server)
        webhook_pb2_grpc.add_WebhookServiceServicer_to_server(WebhookServicer(self.app), server)
        event_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(self.app, self.events), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        health = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        enable_reflection([*(s.full_name for s in services()), health], server)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, drain in-flight ones, close the pool."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        await self.health.shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        await self.usage.stop()  # after the drain: the last calls' counts are written too
        await self.cache_listener.stop()
        await self.events.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()
        if self.mailer is not None:
            await self.mailer.stop()
        await self.compiler.stop()
        await self.pool.close()
        await self._stop_metrics()
        log.info("stopped")
