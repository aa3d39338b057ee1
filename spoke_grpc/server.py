"""The grpc.aio server: spoke.v1 services behind the interceptors, plus health and reflection.

Interceptors, outermost first: errors → request check (decoding, text) → unit of work
(one connection, one transaction for writes, deadline, retries) → audit → auth (caller and
org in one statement) → org context (access rules) → servicer.

Lifecycle: ``start`` checks that every RPC's policy can be enforced, opens the pool and
serves; ``stop`` turns health NOT_SERVING, refuses new calls, lets in-flight calls finish
within the grace period, then closes the pool. The port is bound exclusively (no
SO_REUSEPORT) unless ``reuse_port``: a second server on a taken address fails at start
instead of silently splitting the traffic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from spoke.v1 import (
    member_pb2_grpc,
    module_pb2_grpc,
    organization_pb2_grpc,
    quota_pb2_grpc,
    user_pb2_grpc,
)

from spoke_grpc.app import App
from spoke_grpc.compiler import Compiler
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.database import create_pool, session_options
from spoke_grpc.health import DatabaseHealth
from spoke_grpc.interceptors.audit import AuditInterceptor
from spoke_grpc.interceptors.auth import AuthInterceptor
from spoke_grpc.interceptors.errors import ErrorsInterceptor
from spoke_grpc.interceptors.org_context import OrgContextInterceptor
from spoke_grpc.interceptors.quota import QuotaInterceptor
from spoke_grpc.interceptors.request_check import RequestCheckInterceptor
from spoke_grpc.interceptors.unit_of_work import UnitOfWorkInterceptor
from spoke_grpc.interceptors.usage import UsageInterceptor
from spoke_grpc.mailer import InvitationMailer
from spoke_grpc.pagination import PageTokens, load_key
from spoke_grpc.policy import POLICIES, services, unenforceable
from spoke_grpc.reflection import enable_reflection
from spoke_grpc.servicers.members import MemberServicer
from spoke_grpc.servicers.modules import ModuleServicer
from spoke_grpc.servicers.organizations import OrganizationServicer
from spoke_grpc.servicers.quotas import QuotaServicer
from spoke_grpc.servicers.users import UserServicer
from spoke_grpc.usage import Clock, UsageBuffer, utc_now

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 2**20


@dataclass
class SpokeServer:
    settings: Settings
    database_url: str
    reuse_port: bool = False
    clock: Clock = utc_now

    def __post_init__(self) -> None:
        self.pool = create_pool(self.database_url, self.settings)
        self.health = DatabaseHealth(
            HealthServicer(),
            self.database_url,
            self.pool,
            [s.full_name for s in services()],
            self.settings.health_check_interval_seconds,
        )
        self.usage = UsageBuffer(
            self.pool, self.settings.usage_flush_interval_seconds, clock=self.clock
        )
        self._server: aio.Server | None = None
        self.port = 0
        self.compiler = Compiler(self.settings.compile_workers)
        # Made here so that a bad SMTP URL fails before anything starts.
        self.mailer = (
            InvitationMailer(self.settings, self.database_url) if self.settings.smtp_url else None
        )

    async def start(self, listen: str | None = None) -> int:
        """Opens the pool and starts serving; returns the bound port."""
        problems = unenforceable(POLICIES)
        if problems:
            raise ConfigError("RPC policies the server cannot enforce: " + "; ".join(problems))
        # One plain connection first: an unreachable database is then one clear error
        # rather than the pool's retry warnings. It also reads the page-token key.
        async with await psycopg.AsyncConnection.connect(
            self.database_url,
            connect_timeout=max(1, int(self.settings.pool_timeout_seconds)),
            autocommit=True,
            options=session_options(self.settings),
        ) as conn:
            pages = PageTokens(await load_key(conn))
        self.app = App(self.settings, self.pool, pages, self.compiler, self.usage)
        await self.pool.open(wait=True, timeout=self.settings.pool_timeout_seconds)
        server = aio.server(
            interceptors=[
                ErrorsInterceptor(self.settings, self.health.mark_unavailable),
                RequestCheckInterceptor(),
                UnitOfWorkInterceptor(self.pool, self.settings),
                AuditInterceptor(),
                AuthInterceptor(),
                OrgContextInterceptor(),
                UsageInterceptor(self.usage),
                QuotaInterceptor(self.usage),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1 if self.reuse_port else 0),
            ],
        )
        self._add_services(server)
        address = listen or self.settings.listen
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:
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
        if self.mailer is not None:
            self.mailer.start()
        else:
            log.info(
                "email is off (SPOKE_SMTP_URL unset): invitations are not emailed;"
                " their tokens are returned by CreateInvitation"
            )
        log.info("serving spoke.v1 on %s (port %d)", address, self.port)
        return self.port

    def _add_services(self, server: aio.Server) -> None:
        user_pb2_grpc.add_UserServiceServicer_to_server(UserServicer(self.app), server)
        organization_pb2_grpc.add_OrganizationServiceServicer_to_server(
            OrganizationServicer(self.app), server
        )
        member_pb2_grpc.add_MemberServiceServicer_to_server(MemberServicer(self.app), server)
        module_pb2_grpc.add_ModuleServiceServicer_to_server(ModuleServicer(self.app), server)
        quota_pb2_grpc.add_QuotaServiceServicer_to_server(QuotaServicer(self.app), server)
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
        if self.mailer is not None:
            await self.mailer.stop()
        await self.compiler.stop()
        await self.pool.close()
        log.info("stopped")
