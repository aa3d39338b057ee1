"""spoke.v1.EventService: WatchEvents, a server-streaming RPC.

The interceptors wrap unary calls only, so this stream walks the same steps itself, in
the same order and with the same functions: the request check (text rule, undecodable
bytes), the caller and organization read in one statement (``store.access``), the access
rule (``interceptors.org_context.check_access``, with the method's declared policy), and
errors turned into statuses with ``google.rpc`` details. It holds no pool connection
while it waits: each read of the next events checks one out for that statement only.

Backpressure: one page of events at most is held per stream, and each send waits for the
client under ``SPOKE_WATCH_SEND_TIMEOUT``; a client that does not read for that long is cut
off (RESOURCE_EXHAUSTED, SLOW_CONSUMER, naming the last event sent) instead of holding
anything of the server's.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from google.protobuf import json_format, struct_pb2
from grpc import aio
from grpc_status import rpc_status
from psycopg_pool import PoolTimeout
from spoke.v1 import event_pb2, event_pb2_grpc

from spoke_grpc import tokens
from spoke_grpc.app import App
from spoke_grpc.database import is_unavailable, overloaded, pool_is_full, unavailable
from spoke_grpc.domain.events import SUBSCRIBABLE
from spoke_grpc.errors import (
    Internal,
    InvalidArgument,
    NotFound,
    SlowConsumer,
    SpokeError,
    TooManyCalls,
    Unauthenticated,
)
from spoke_grpc.event_stream import EventHub
from spoke_grpc.interceptors.auth import bearer_token
from spoke_grpc.interceptors.org_context import check_access
from spoke_grpc.interceptors.request_check import UndecodableRequest
from spoke_grpc.policy import POLICIES
from spoke_grpc.servicers.convert import timestamp
from spoke_grpc.store import access
from spoke_grpc.store import events as store
from spoke_grpc.store.events import WILDCARD, EventRow
from spoke_grpc.store.visibility import Reader
from spoke_grpc.types import OrgContext
from spoke_grpc.validation import parse_org_ref, parse_uuid
from spoke_grpc.wire import text_violations

log = logging.getLogger(__name__)

METHOD = "/spoke.v1.EventService/WatchEvents"
PAGE = 100
_MAX_TOKEN_LENGTH = 128


def event_to_proto(row: EventRow, org_name: str) -> event_pb2.Event:
    data = struct_pb2.Struct()
    json_format.ParseDict(row.data, data)
    return event_pb2.Event(
        id=str(row.id),
        type=row.type,
        create_time=timestamp(row.created_at),
        org_id=str(row.org_id),
        org=org_name,
        data=data,
    )


class EventServicer(event_pb2_grpc.EventServiceServicer):
    def __init__(self, app: App, hub: EventHub) -> None:
        self._app = app
        self._hub = hub
        self._policy = POLICIES[METHOD]

    async def WatchEvents(self, request: Any, context: aio.ServicerContext) -> None:
        try:
            await self._watch(request, context)
        except (aio.AbortError, asyncio.CancelledError):
            raise
        except SpokeError as exc:
            await self._abort(context, exc)
        except Exception as exc:
            await self._abort(context, self._classify(exc))

    async def _watch(self, request: Any, context: aio.ServicerContext) -> None:
        if isinstance(request, UndecodableRequest):
            raise InvalidArgument.field(
                "request", "the bytes sent are not a valid spoke.v1.WatchEventsRequest message"
            )
        violations = text_violations(request)
        if violations:
            raise InvalidArgument(violations)
        types = _types(list(request.types))
        token = bearer_token(context.invocation_metadata() or ())
        digest = _token_digest(token) if token is not None else None
        ref = parse_org_ref(request.org)
        after_ref = request.after_event_id
        after_id = parse_uuid(after_ref) if after_ref else None
        if after_ref and after_id is None:
            raise InvalidArgument.field("after_event_id", "must be an event id (UUID)")
        async with self._app.pool.connection() as conn:
            resolved = await access.resolve(
                conn, token_digest=digest, org=ref, lock=False, public=True
            )
            if digest is not None and resolved.principal is None:
                raise Unauthenticated("invalid or revoked API token")
            check_access(self._policy, resolved.principal, resolved.org, request.org)
            org = _org(resolved.org, request.org)
            reader = Reader.of(resolved.principal)
            if after_id is not None:
                cursor = await store.seq_of(conn, org.id, after_id, reader)
                if cursor is None:
                    raise NotFound("event", after_ref)
            else:
                cursor = await store.last_seq(conn, org.id)
        if self._hub.full:
            raise TooManyCalls(self._app.settings.max_watchers)
        with self._hub.watching(org.id) as watcher:
            await context.send_initial_metadata(())
            last_sent = after_ref
            while True:
                async with self._app.pool.connection() as conn:
                    rows, cursor = await store.watchable_after(
                        conn, org.id, cursor, types, reader, PAGE
                    )
                for row in rows:
                    await self._send(context, event_to_proto(row, org.name), last_sent)
                    last_sent = str(row.id)
                if not rows:
                    await watcher.wait()

    async def _send(
        self, context: aio.ServicerContext, event: event_pb2.Event, last_sent: str
    ) -> None:
        seconds = self._app.settings.watch_send_timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                await context.write(event_pb2.WatchEventsResponse(event=event))
        except TimeoutError:
            self._hub.note_slow_consumer()
            raise SlowConsumer(seconds, last_sent) from None

    def _classify(self, exc: Exception) -> SpokeError:
        pool = self._app.pool
        if isinstance(exc, PoolTimeout) and pool_is_full(pool):
            return overloaded(self._app.settings)
        if is_unavailable(exc) or isinstance(exc, PoolTimeout):
            log.warning("WatchEvents: database unavailable: %s", exc)
            return unavailable(exc)
        reference = uuid.uuid4().hex[:12]
        log.error("WatchEvents: internal error %s", reference, exc_info=exc)
        return Internal(f"internal error (reference {reference}); the server log has the details")

    @staticmethod
    async def _abort(context: aio.ServicerContext, error: SpokeError) -> None:
        status = rpc_status.to_status(error.to_status())
        await context.abort(status.code, status.details, status.trailing_metadata)


def _types(values: list[str]) -> list[str]:
    unknown = [v for v in values if v not in SUBSCRIBABLE]
    if unknown:
        known = ", ".join(sorted(SUBSCRIBABLE))
        raise InvalidArgument.field(
            "types", f"unknown event type {unknown[0][:100]!r}; known: {known}"
        )
    return [] if WILDCARD in values else sorted(set(values))


def _org(org: OrgContext | None, ref: str) -> OrgContext:
    if org is None:  # check_access raised already; kept for the type checker
        raise NotFound("organization", ref)
    return org


def _token_digest(token: str) -> bytes:
    if not token.startswith(tokens.API_TOKEN_PREFIX) or len(token) > _MAX_TOKEN_LENGTH:
        raise Unauthenticated("invalid or revoked API token")
    return tokens.digest(token)
