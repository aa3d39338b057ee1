"""Webhook deliveries, sent from the outbox in the background, never on the request path.

An event queues one ``webhook_deliveries`` row per subscribed webhook in the transaction of
the change (``spoke_grpc.store.events``). ``WebhookDispatcher`` runs ``SPOKE_WEBHOOK_WORKERS``
senders per server process, each on a database connection of its own (not the request
pool). A sender claims one due delivery ``FOR UPDATE SKIP LOCKED`` (the oldest pending one of
its webhook only, ``spoke_grpc.store.webhooks.claim_next``), POSTs it while holding the
lock, and records the outcome in the same transaction: with any number of processes, a
delivery is never being sent twice at once, and a webhook's events go out in order. A crash
after the POST and before the commit sends it again (at least once; the ``X-Spoke-Delivery``
id is the receiver's idempotency key).

Outcomes: 2xx delivered. 5xx, 408, 429, timeouts and connection errors: retried after
``SPOKE_WEBHOOK_RETRY_BASE`` * 2^(attempts-1), at most ``SPOKE_WEBHOOK_RETRY_MAX``, until
``SPOKE_WEBHOOK_RETRY_WINDOW`` (24 h) after the first attempt; then given up and the
webhook disabled (it has failed for a day). Any other answer (other 4xx, 3xx: redirects
are never followed) or a URL the SSRF rules refuse (``spoke_grpc.webhook_targets``) fails
the delivery at once; ``SPOKE_WEBHOOK_MAX_FAILURES`` such deliveries in a row disable the
webhook. A disabled webhook keeps its pending deliveries for when it is enabled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from spoke_grpc import webhook_secrets
from spoke_grpc.background import OutageLog
from spoke_grpc.config import Settings
from spoke_grpc.database import connect
from spoke_grpc.store import webhooks as store
from spoke_grpc.store.webhooks import DueDelivery
from spoke_grpc.webhook_targets import TargetPolicy, TargetRefused, resolve

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
MAX_RESPONSE_BYTES = 64 * 1024  # read and dropped: a receiver cannot make us buffer more
USER_AGENT = "Spoke-Webhooks/1"
_RETRYABLE_4XX = frozenset({408, 429})


@dataclass(frozen=True)
class Outcome:
    """What one POST came to: ``status`` 0 when no answer came."""

    status: int
    error: str = ""
    retry: bool = False

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300


def body(due: DueDelivery) -> bytes:
    """The POST's JSON: a stable schema, keys sorted, no whitespace."""
    payload = {
        "id": str(due.event_id),
        "type": due.event_type,
        "created_at": due.event_created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "org": {"id": str(due.event_org_id), "name": due.org_name},
        "data": due.data,
    }
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    exponent = min(max(attempts - 1, 0), 30)
    seconds = min(
        settings.webhook_retry_base_seconds * 2**exponent, settings.webhook_retry_max_seconds
    )
    return timedelta(seconds=seconds)


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome(status)
    retry = status >= 500 or status in _RETRYABLE_4XX
    return Outcome(status, f"the receiver answered HTTP {status}", retry=retry)


class WebhookDispatcher:
    """The background senders that empty the delivery outbox.

    ``start()`` runs them every ``settings.webhook_interval_seconds``; ``run_once()`` sends
    what is due now, on one connection (tests drive it this way); ``stop()`` lets the POSTs
    in flight finish (bounded by the timeout) and closes the connections. Nothing it meets
    ends a sender: failures are logged and the next tick tries again.
    """

    def __init__(self, settings: Settings, database_url: str, key: bytes) -> None:
        self.settings = settings
        self.database_url = database_url
        self._key = key
        self._targets = TargetPolicy(
            allow_http=settings.webhook_allow_http, allow_private=settings.webhook_allow_private
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._once = _Sender(self)
        self.delivered = 0  # by this process, for metrics and logs
        self.failed_attempts = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(_Sender(self)), name=f"webhook-dispatcher-{i}")
            for i in range(self.settings.webhook_workers)
        ]
        log.info(
            "delivering webhooks with %d senders every %gs",
            self.settings.webhook_workers,
            self.settings.webhook_interval_seconds,
        )

    async def stop(self) -> None:
        self._stopping.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(
                tasks, timeout=self.settings.webhook_timeout_seconds + 5
            )
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._once.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run_once(self) -> int:
        """Handles every delivery due now; returns how many attempts were made."""
        return await self._once.drain()

    async def _run(self, sender: _Sender) -> None:
        try:
            while not self._stopping.is_set():
                await sender.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self.settings.webhook_interval_seconds
                    )
        finally:
            await sender.close()

    async def attempt(self, conn: psycopg.AsyncConnection, client: httpx.AsyncClient) -> bool:
        """Claims one due delivery, POSTs it and records the outcome, in one transaction;
        False if none is due."""
        if not await store.any_due(conn):
            return False
        async with conn.transaction():
            due = await store.claim_next(conn)
            if due is None:
                return False
            outcome = await self._post(client, due)
            await self._record(conn, due, outcome)
        return True

    async def _post(self, client: httpx.AsyncClient, due: DueDelivery) -> Outcome:
        if not due.visible:  # the one visibility rule, checked again at delivery
            return Outcome(0, "the subscribed module is no longer public")
        try:
            target = await resolve(due.url, self._targets)
        except TargetRefused as exc:
            return Outcome(0, f"webhook URL refused: {exc}")
        content = body(due)
        timestamp = int(time.time())
        secret = webhook_secrets.secret(self._key, due.org_id, due.webhook_id, due.secret_salt)
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Spoke-Event": due.event_type,
            "X-Spoke-Delivery": str(due.id),
            "X-Spoke-Timestamp": str(timestamp),
            "X-Spoke-Signature": webhook_secrets.signature(secret, timestamp, content),
        }
        # The TLS server name (and the certificate check) is the URL's host, not the IP.
        extensions = {"sni_hostname": target.host} if target.url.startswith("https:") else {}
        try:
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                async with client.stream(
                    "POST", target.url, content=content, headers=headers, extensions=extensions
                ) as response:
                    read = 0
                    async for chunk in response.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                    return classify(response.status_code)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(0, "timed out", retry=True)
        except httpx.HTTPError as exc:
            return Outcome(0, _describe(exc), retry=True)

    async def _record(
        self, conn: psycopg.AsyncConnection, due: DueDelivery, outcome: Outcome
    ) -> None:
        if outcome.delivered:
            await store.mark_delivered(conn, due, outcome.status)
            self.delivered += 1
            return
        self.failed_attempts += 1
        attempts = due.attempts + 1
        first = due.first_attempt_at or datetime.now(UTC)
        delay = retry_delay(self.settings, attempts)
        window = timedelta(seconds=self.settings.webhook_retry_window_seconds)
        if outcome.retry and datetime.now(UTC) + delay - first <= window:
            await store.mark_retry(conn, due, outcome.status, outcome.error, delay)
            log.info(
                "webhook %s: delivery %s failed (attempt %d; next in %gs): %s",
                due.webhook_id,
                due.id,
                attempts,
                delay.total_seconds(),
                outcome.error,
            )
            return
        error = outcome.error
        if outcome.retry:
            error = f"gave up after {attempts} attempts: {error}"
        in_a_row = await store.mark_failed(conn, due, outcome.status, error)
        log.warning("webhook %s: delivery %s failed for good: %s", due.webhook_id, due.id, error)
        reason = ""
        if outcome.retry:
            hours = self.settings.webhook_retry_window_seconds / 3600
            reason = f"deliveries failed for {hours:g} h: {error}"
        elif in_a_row >= self.settings.webhook_max_failures:
            reason = f"{in_a_row} deliveries in a row failed; the last: {error}"
        if reason:
            await store.disable(conn, due.org_id, due.webhook_id, reason)
            log.warning("webhook %s disabled: %s", due.webhook_id, reason)


class _Sender:
    """One sender: a database connection and an HTTP client of its own."""

    def __init__(self, dispatcher: WebhookDispatcher) -> None:
        self._dispatcher = dispatcher
        self._conn: psycopg.AsyncConnection | None = None
        self._client: httpx.AsyncClient | None = None
        self._lock = asyncio.Lock()
        self._outage = OutageLog(log, "webhook dispatcher")

    async def drain(self) -> int:
        async with self._lock:
            handled = 0
            try:
                conn = await self._connection()
                client = self._http()
                while not self._dispatcher.stopping and await self._dispatcher.attempt(
                    conn, client
                ):
                    handled += 1
            except BaseException:
                await self._close_connection()
                raise
            return handled

    async def tick(self) -> None:
        await self._outage.tick(self.drain)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = self._dispatcher.settings.webhook_timeout_seconds
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment: it would undo the IP pinning
                limits=httpx.Limits(max_keepalive_connections=0),
            )
        return self._client

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            settings = self._dispatcher.settings
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                self._conn = await connect(
                    self._dispatcher.database_url,
                    settings,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name="spoke-grpc-webhooks",
                )
        return self._conn

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        await self._close_connection()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\x00", "")
    return " ".join(text.split())[:1000]
