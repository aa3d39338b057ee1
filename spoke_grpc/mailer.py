"""Invitation emails, sent from the outbox in the background, never on the request path.

``CreateInvitation`` queues an outbox row in its own transaction; ``InvitationMailer`` (one
task per server process, on a database connection of its own, not the request pool)
works through the due rows every ``SPOKE_EMAIL_INTERVAL``. Each row is claimed in a
transaction ``FOR UPDATE SKIP LOCKED`` and stays locked while its email is sent, so with
several processes each email is sent by one of them. The email carries a token of its
own, made at send time: only its SHA-256 is stored, and only once the SMTP server has
taken the message, so an emailed token is valid exactly when its email went out. A
failed send keeps the row and retries it with exponential backoff (1 s, 2 s, 4 s … 5 min)
until it succeeds or its invitation stops being pending. No token or body is logged.

The same task emails the organizations' admins their notices (``spoke_grpc.store.notices``):
usage alerts and webhooks the server disabled, claimed the same way, one email per admin.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import ssl
from datetime import UTC, timedelta
from email.message import EmailMessage

import psycopg

from spoke_grpc import tokens
from spoke_grpc.background import OutageLog
from spoke_grpc.config import Settings, SmtpServer, parse_smtp_url
from spoke_grpc.database import connect
from spoke_grpc.store import notices, outbox
from spoke_grpc.store.notices import DueNotice
from spoke_grpc.store.outbox import DueEmail
from spoke_grpc.validation import mail_address

log = logging.getLogger(__name__)

SMTP_TIMEOUT_SECONDS = 10.0
MAX_RETRY_SECONDS = 300
CONNECT_TIMEOUT_SECONDS = 10
NOT_PENDING = "invitation no longer pending"


def retry_delay(failures: int) -> timedelta:
    """How long to wait after the ``failures``-th failure (1 s, 2 s, 4 s … capped at 5 min)."""
    return timedelta(seconds=min(2 ** min(max(failures - 1, 0), 16), MAX_RETRY_SECONDS))


def compose(due: DueEmail, token: str, settings: Settings) -> EmailMessage:
    """The invitation email: who invited whom to which org, with what role, and how to accept."""
    org = f"{_one_line(due.org_display_name)} ({due.org_name})"
    if due.inviter_email:
        inviter = f"{due.inviter_name} <{due.inviter_email}>" if due.inviter_name else ""
        inviter = _one_line(inviter or due.inviter_email)
    else:
        inviter = "An administrator"
    expires = due.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    request = '{"token": "' + token + '"}'
    address, tls = settings.public_target
    plaintext = "" if tls else "-plaintext "
    message = EmailMessage()
    message["To"] = mail_address(due.email)
    message["From"] = settings.email_from
    message["Subject"] = f"Invitation to join {org} on Spoke"
    message.set_content(
        f"Hello,\n\n"
        f"{inviter} invited you to join the organization {org} on Spoke,"
        f" with the role {due.role}.\n\n"
        f"The invitation expires at {expires} (UTC).\n\n"
        f"To accept it, call MemberService/AcceptInvitation with this token, signed in with an"
        f" API token of your Spoke account for {due.email}:\n\n"
        f"    {token}\n\n"
        f"For example, with grpcurl:\n\n"
        f'    grpcurl {plaintext}-H "authorization: Bearer <your API token>"'
        f" -d '{request}' {address} spoke.v1.MemberService/AcceptInvitation\n\n"
        f"The token can be used once. If you did not expect this invitation, ignore this email.\n"
    )
    return message


def compose_notice(notice: DueNotice, recipient: str, settings: Settings) -> EmailMessage:
    """A notice to one of the organization's admins."""
    org = f"{_one_line(notice.org_display_name)} ({notice.org_name})"
    message = EmailMessage()
    message["To"] = mail_address(recipient)
    message["From"] = settings.email_from
    if notice.kind == "quota_alert":
        message["Subject"] = f"Spoke usage alert for {org}: {notice.subject}"
        message.set_content(
            f"Hello,\n\nThe organization {org} on Spoke has used {_one_line(notice.detail)}"
            f" ({notice.subject}).\n\nOnce a limit is reached, calls that need more are"
            f" refused with RESOURCE_EXHAUSTED. See QuotaService/GetUsage and GetQuotas, and ask"
            f" a platform admin to raise the limit if you need more.\n"
        )
    else:
        message["Subject"] = f"Spoke webhook disabled in {org}"
        message.set_content(
            f"Hello,\n\nA webhook of the organization {org} on Spoke was disabled after"
            f" repeated failed deliveries:\n\n    {_one_line(notice.subject)}\n\n"
            f"Reason: {_one_line(notice.detail)}\n\nIts pending deliveries are kept. Fix the"
            f" receiver, then enable it again with WebhookService/UpdateWebhook"
            f" (update_mask: enabled).\n"
        )
    return message


def deliver(server: SmtpServer, message: EmailMessage, timeout: float) -> None:
    """Sends ``message`` over SMTP (blocking; run it in a thread)."""
    context = ssl.create_default_context()
    client: smtplib.SMTP
    if server.implicit_tls:
        client = smtplib.SMTP_SSL(server.host, server.port, timeout=timeout, context=context)
    else:
        client = smtplib.SMTP(server.host, server.port, timeout=timeout)
    with client:
        if server.starttls:
            client.starttls(context=context)
        if server.username is not None:
            client.login(server.username, server.password or "")
        client.send_message(message)


class InvitationMailer:
    """The background task that empties the email outbox.

    ``start()`` runs it every ``settings.email_interval_seconds``; ``run_once()`` sends
    what is due now (tests drive it this way); ``stop()`` lets an email in flight finish,
    then ends the task and closes the connection. Nothing it meets ends it: a failure is
    logged and the next tick tries again.
    """

    def __init__(self, settings: Settings, database_url: str) -> None:
        if not settings.smtp_url:
            raise ValueError("InvitationMailer needs settings.smtp_url")
        self._settings = settings
        self._smtp = parse_smtp_url(settings.smtp_url)
        self._database_url = database_url
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()  # run_once and the task never share the connection
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._outage = OutageLog(log, "invitation mailer")
        self.sent = 0  # emails sent, and sends that failed, by this process (for metrics)
        self.failures = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="invitation-mailer")
        log.info(
            "emailing invitations through %s:%d every %gs",
            self._smtp.host,
            self._smtp.port,
            self._settings.email_interval_seconds,
        )

    async def stop(self) -> None:
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            # An email being sent is let finish (bounded by the SMTP timeout) and recorded,
            # so that no other process sends it again.
            _, pending = await asyncio.wait({task}, timeout=SMTP_TIMEOUT_SECONDS + 5)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._close_connection()

    async def run_once(self) -> int:
        """Handles every outbox row due now; returns how many (sent, failed or dropped)."""
        async with self._lock:
            handled = 0
            try:
                conn = await self._connection()
                while not self._stopping.is_set() and await self._handle_next(conn):
                    handled += 1
                while not self._stopping.is_set() and await self._handle_notice(conn):
                    handled += 1
            except BaseException:
                await self._close_connection()
                raise
            return handled

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self._outage.tick(self.run_once)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._settings.email_interval_seconds)

    async def _handle_next(self, conn: psycopg.AsyncConnection) -> bool:
        """Claims one due row and sends its email, in one transaction; False if none is due."""
        async with conn.transaction():
            due = await outbox.claim_next(conn)
            if due is None:
                return False
            if not due.pending:
                await outbox.mark_dropped(conn, due, NOT_PENDING)
                log.info("invitation %s is no longer pending: not emailed", due.invitation_id)
                return True
            token = tokens.issue(tokens.INVITATION_TOKEN_PREFIX)
            try:
                message = compose(due, token.value, self._settings)
                await asyncio.to_thread(deliver, self._smtp, message, SMTP_TIMEOUT_SECONDS)
            except Exception as exc:
                # Anything that stops this email (the server, the address, the message) is
                # this row's failure: it backs off and the rows behind it still go out.
                error = _describe(exc, token.value)
                delay = retry_delay(due.attempts + 1)
                await outbox.mark_failed(conn, due, error, delay)
                self.failures += 1
                log.warning(
                    "could not email invitation %s (attempt %d; next in %ds): %s",
                    due.invitation_id,
                    due.attempts + 1,
                    delay.total_seconds(),
                    error,
                )
                return True
            await outbox.mark_sent(conn, due, token.digest)
        self.sent += 1
        log.info("emailed invitation %s of org %s", due.invitation_id, due.org_name)
        return True

    async def _handle_notice(self, conn: psycopg.AsyncConnection) -> bool:
        """Claims one due notice and emails it to every admin, in one transaction; False if
        none is due."""
        if not await notices.any_due(conn):
            return False
        async with conn.transaction():
            notice = await notices.claim_next(conn)
            if notice is None:
                return False
            try:
                for recipient in await notices.admin_emails(conn, notice.org_id):
                    message = compose_notice(notice, recipient, self._settings)
                    await asyncio.to_thread(deliver, self._smtp, message, SMTP_TIMEOUT_SECONDS)
            except Exception as exc:
                delay = retry_delay(notice.attempts + 1)
                await notices.mark_failed(conn, notice, delay)
                self.failures += 1
                log.warning(
                    "could not email the %s notice of org %s (next in %ds): %s",
                    notice.kind,
                    notice.org_name,
                    delay.total_seconds(),
                    _one_line(f"{type(exc).__name__}: {exc}")[:1000],
                )
                return True
            await notices.mark_sent(conn, notice)
        self.sent += 1
        log.info("emailed the %s notice of org %s", notice.kind, notice.org_name)
        return True

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                self._conn = await connect(
                    self._database_url,
                    self._settings,
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    application_name="spoke-grpc-mailer",
                )
        return self._conn

    async def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: BaseException, token: str) -> str:
    """A short, single-line account of ``exc`` for the outbox row and the log, token-free."""
    text = f"{type(exc).__name__}: {exc}".replace(token, "[token]").replace("\x00", "")
    return _one_line(text)[:1000]
