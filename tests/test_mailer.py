"""Invitation emails (issue 6, item 5): sent from the outbox off the request path, through a
real SMTP server (aiosmtpd) started in the test, by real servers on a database of their own.

Each email is sent once, even by two server processes; a mail server that is down delays
the email (with retries) but never fails CreateInvitation; the emailed token is stored only
as a digest, and only once its email went out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from google.protobuf import field_mask_pb2
from spoke.v1 import member_pb2, module_pb2, organization_pb2, quota_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import ConfigError, Settings, SmtpServer, parse_smtp_url
from spoke_grpc.mailer import NOT_PENDING, InvitationMailer, compose, retry_delay
from spoke_grpc.store import webhooks as webhook_store
from spoke_grpc.store.outbox import DueEmail
from spoke_grpc.tokens import INVITATION_TOKEN_PREFIX
from spoke_grpc.types import Role
from tests import harness
from tests.conftest import TENANT_TABLES, Users, free_port
from tests.harness import Client, ServerThread

TOKEN_RE = re.compile(re.escape(INVITATION_TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")


# --- a real SMTP server --------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    recipients: list[str]
    message: EmailMessage

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        content: str = part.get_content()  # type: ignore[attr-defined]
        return content

    @property
    def token(self) -> str:
        found = set(TOKEN_RE.findall(self.body))
        assert len(found) == 1, f"expected one token in the body, found {len(found)}"
        return found.pop()


class Inbox:
    """An aiosmtpd handler that keeps every message; ``delay`` slows each DATA reply."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self._lock = threading.Lock()
        self._received: list[Received] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay)
        content = envelope.content
        assert isinstance(content, bytes)
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self._received.append(Received(list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)


class SmtpSink:
    """A real SMTP server on ``port``, started (and restarted) on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.inbox = Inbox()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def mailer_pass(server: ServerThread) -> int:
    """One whole pass of ``server``'s mailer, run now, after the pass in flight if any
    (``run_once`` takes the lock its background task holds while it sends): when it
    returns, every email claimed before was sent and recorded, and whatever is due now was
    handled. The count it returns is what that pass found to do. This, not a pause, is how
    a test shows that nothing more is sent."""
    mailer = server.server.mailer
    assert mailer is not None
    return server.run(mailer.run_once())


# --- servers with email on, on a database of their own -------------------------------------


@pytest.fixture(scope="module")
def smtp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def mail_settings(smtp_port: int) -> Settings:
    return Settings(
        pool_min_size=1,
        pool_max_size=10,
        shutdown_grace_seconds=1,
        smtp_url=f"smtp://127.0.0.1:{smtp_port}",
        email_from="Spoke <spoke@example.org>",
        email_interval_seconds=0.1,
    )


@pytest.fixture(scope="module")
def mail_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    url = harness.create_database(
        pg_admin_url, template=harness.database_name(template_url), prefix="spoke_mail"
    )
    yield url
    harness.drop_database(pg_admin_url, url)


@pytest.fixture(scope="module")
def mail_server(mail_settings: Settings, mail_url: str) -> Iterator[ServerThread]:
    thread = ServerThread(mail_settings, mail_url)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def mail_channel(mail_server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(mail_server.address) as ch:
        grpc.channel_ready_future(ch).result(timeout=10)
        yield ch


@pytest.fixture
def mail_db(mail_url: str) -> Iterator[psycopg.Connection[Any]]:
    with harness.connect(mail_url) as conn:
        yield conn


@pytest.fixture
def mail_admin(
    mail_server: ServerThread,
    mail_channel: grpc.Channel,
    mail_db: psycopg.Connection[Any],
    tmp_path: Path,
) -> Client:
    """Fresh state (no invitations, empty outbox) and a platform admin."""
    mail_db.execute(f"TRUNCATE {TENANT_TABLES} CASCADE")
    token_file = mail_server.run(
        ensure_bootstrap_admin(mail_server.server.pool, tmp_path / "token")
    )
    assert token_file is not None
    return Client(mail_channel, token_file.read_text().strip())


@pytest.fixture
def mail_users(mail_admin: Client, mail_db: psycopg.Connection[Any]) -> Users:
    return Users(mail_admin, mail_db)


@pytest.fixture
def smtp(mail_admin: Client, smtp_port: int) -> Iterator[SmtpSink]:
    """The SMTP server the mail servers point at, not started yet (it is down)."""
    sink = SmtpSink(smtp_port)
    yield sink
    sink.stop()


@pytest.fixture
def inbox(smtp: SmtpSink) -> Inbox:
    """The SMTP server, up."""
    smtp.start()
    return smtp.inbox


def create_org(client: Client, name: str = "acme", display_name: str = "Acme Corp") -> str:
    request = organization_pb2.CreateOrganizationRequest(name=name, display_name=display_name)
    org_id: str = client.orgs.CreateOrganization(request).organization.id
    return org_id


def invite(
    client: Client, org: str, address: str, role: int = member_pb2.ROLE_DEVELOPER
) -> member_pb2.CreateInvitationResponse:
    request = member_pb2.CreateInvitationRequest(org=org, email=address, role=role)
    response: member_pb2.CreateInvitationResponse = client.members.CreateInvitation(request)
    return response


def outbox_row(db: psycopg.Connection[Any], invitation_id: str) -> dict[str, Any]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute(
            "SELECT o.attempts, o.sent_at, o.last_error, o.next_attempt_at,"
            " i.email_token_hash, now() AS now"
            " FROM email_outbox o JOIN org_invitations i ON i.id = o.invitation_id"
            " WHERE o.invitation_id = %s",
            [invitation_id],
        ).fetchone()
    assert row is not None
    return row


def sent_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM email_outbox WHERE sent_at IS NOT NULL").fetchone()
    assert row is not None
    count: int = row[0]
    return count


# --- delivery -------------------------------------------------------------------------------


def test_invitation_is_emailed_with_a_token_stored_only_as_its_digest(
    mail_server: ServerThread,
    mail_admin: Client,
    mail_users: Users,
    mail_settings: Settings,
    mail_db: psycopg.Connection[Any],
    inbox: Inbox,
) -> None:
    inviter = mail_users.create("grace")
    invitee = mail_users.create("ada")
    org_id = create_org(inviter)
    created = invite(inviter, org_id, invitee.email)

    [received] = wait_until(lambda: inbox.received, "the invitation email")
    message = received.message
    assert received.recipients == [invitee.email]
    assert message["To"] == invitee.email
    assert message["From"] == mail_settings.email_from
    assert message["Subject"] == "Invitation to join Acme Corp (acme) on Spoke"
    body = received.body
    expires = created.invitation.expire_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ")
    for fragment in (inviter.email, "developer", expires, mail_settings.listen):
        assert fragment in body
    token = received.token
    assert token != created.token
    request = json.dumps({"token": token})
    grpcurl = (
        f"grpcurl -plaintext -H \"authorization: Bearer <your API token>\" -d '{request}'"
        f" {mail_settings.listen} spoke.v1.MemberService/AcceptInvitation"
    )
    assert grpcurl in body

    row = wait_until(
        lambda: (r := outbox_row(mail_db, created.invitation.id))["sent_at"] and r,
        "the outbox row to be marked sent",
    )
    assert (row["attempts"], row["last_error"]) == (0, "")
    assert bytes(row["email_token_hash"]) == hashlib.sha256(token.encode()).digest()
    dump = harness.database_text(mail_db)
    assert token not in dump
    assert created.token not in dump

    # The emailed token is the one the invitee uses.
    member = invitee.members.AcceptInvitation(member_pb2.AcceptInvitationRequest(token=token))
    assert member.member.user_id == invitee.user_id
    assert member.member.role == member_pb2.ROLE_DEVELOPER
    assert mailer_pass(mail_server) == 0
    assert len(inbox.received) == 1


def test_smtp_down_then_up_delivers_later_exactly_once(
    mail_server: ServerThread,
    mail_admin: Client,
    mail_db: psycopg.Connection[Any],
    smtp: SmtpSink,
) -> None:
    org_id = create_org(mail_admin)
    started = time.monotonic()
    created = invite(mail_admin, org_id, "later@example.com")
    assert time.monotonic() - started < 2  # the mail server is never on the request path

    row = wait_until(
        lambda: (r := outbox_row(mail_db, created.invitation.id))["attempts"] >= 1 and r,
        "a failed attempt",
    )
    assert row["sent_at"] is None
    assert row["email_token_hash"] is None
    assert "refused" in row["last_error"].lower()
    assert INVITATION_TOKEN_PREFIX not in row["last_error"]
    assert row["next_attempt_at"] > row["now"]

    smtp.start()
    [received] = wait_until(lambda: smtp.inbox.received, "the email once the server is up")
    assert received.recipients == ["later@example.com"]
    row = wait_until(
        lambda: (r := outbox_row(mail_db, created.invitation.id))["sent_at"] and r,
        "the outbox row to be marked sent",
    )
    assert bytes(row["email_token_hash"]) == hashlib.sha256(received.token.encode()).digest()
    assert mailer_pass(mail_server) == 0
    assert len(smtp.inbox.received) == 1


def test_two_servers_email_each_invitation_exactly_once(
    mail_server: ServerThread,
    mail_admin: Client,
    mail_settings: Settings,
    mail_url: str,
    mail_db: psycopg.Connection[Any],
    smtp: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="spoke_grpc.mailer")
    smtp.inbox.delay = 0.05  # sends overlap, so the two mailers contend for rows
    smtp.start()
    second = ServerThread(mail_settings, mail_url)
    try:
        with grpc.insecure_channel(second.address) as channel:
            other = Client(channel, mail_admin.token)
            org_id = create_org(mail_admin)
            addresses = [f"invitee{i}@example.com" for i in range(20)]
            futures = [
                (mail_admin if i % 2 else other).members.CreateInvitation.future(
                    member_pb2.CreateInvitationRequest(
                        org=org_id, email=address, role=member_pb2.ROLE_VIEWER
                    )
                )
                for i, address in enumerate(addresses)
            ]
            ids = {f.result().invitation.email: f.result().invitation.id for f in futures}
            wait_until(lambda: len(smtp.inbox.received) >= 20, "20 emails")
            wait_until(lambda: sent_count(mail_db) == 20, "every outbox row to be marked sent")
            assert (mailer_pass(mail_server), mailer_pass(second)) == (0, 0)
    finally:
        second.stop()

    received = smtp.inbox.received
    assert sorted(r.recipients[0] for r in received) == sorted(addresses)
    for r in received:
        row = outbox_row(mail_db, ids[r.recipients[0]])
        assert bytes(row["email_token_hash"]) == hashlib.sha256(r.token.encode()).digest()
    senders = {r.threadName for r in caplog.records if r.getMessage().startswith("emailed")}
    assert len(senders) == 2, "both servers' mailers should have sent some of the emails"


@pytest.mark.parametrize("how", ["revoked", "expired"])
def test_an_invitation_no_longer_pending_is_not_emailed(
    how: str,
    mail_server: ServerThread,
    mail_admin: Client,
    mail_db: psycopg.Connection[Any],
    smtp: SmtpSink,
) -> None:
    org_id = create_org(mail_admin)
    created = invite(mail_admin, org_id, "gone@example.com")
    wait_until(lambda: outbox_row(mail_db, created.invitation.id)["attempts"] >= 1, "an attempt")
    if how == "revoked":
        mail_admin.members.RevokeInvitation(
            member_pb2.RevokeInvitationRequest(org=org_id, invitation_id=created.invitation.id)
        )
    else:
        mail_db.execute(
            "UPDATE org_invitations SET created_at = now() - interval '2 hours',"
            " expires_at = now() - interval '1 hour' WHERE id = %s",
            [created.invitation.id],
        )
    smtp.start()
    row = wait_until(
        lambda: (r := outbox_row(mail_db, created.invitation.id))["sent_at"] and r,
        "the outbox row to be closed",
    )
    assert row["last_error"] == NOT_PENDING
    assert row["email_token_hash"] is None
    assert mailer_pass(mail_server) == 0
    assert smtp.inbox.received == []


# --- run_once and the backoff, driven step by step -----------------------------------------


def test_run_once_retries_with_backoff_then_sends(
    pg_admin_url: str, template_url: str, mail_settings: Settings
) -> None:
    """A mailer of its own (no server, no background task) on a database of its own."""
    url = harness.create_database(
        pg_admin_url, template=harness.database_name(template_url), prefix="spoke_mail"
    )
    port = free_port()
    settings = Settings(smtp_url=f"smtp://127.0.0.1:{port}", email_from="spoke@example.org")
    sink = SmtpSink(port)
    try:
        with harness.connect(url) as db:
            user_id = db.execute(
                "INSERT INTO users (email, display_name) VALUES ('lin@example.com', 'Lin')"
                " RETURNING id"
            ).fetchone()
            org_id = db.execute(
                "INSERT INTO organizations (name, display_name, owner_id, quota_tier)"
                " VALUES ('step', 'Step by Step', %s, 'small') RETURNING id",
                user_id,
            ).fetchone()
            assert user_id is not None and org_id is not None
            invitation_id = db.execute(
                "INSERT INTO org_invitations (org_id, email, role, token_hash, invited_by,"
                " expires_at) VALUES (%s, 'kim@example.com', 'admin', %s, %s,"
                " now() + interval '1 day') RETURNING id",
                [org_id[0], hashlib.sha256(b"unused").digest(), user_id[0]],
            ).fetchone()
            assert invitation_id is not None
            db.execute(
                "INSERT INTO email_outbox (org_id, invitation_id) VALUES (%s, %s)",
                [org_id[0], invitation_id[0]],
            )

            def make_due() -> None:
                db.execute("UPDATE email_outbox SET next_attempt_at = now()")

            async def steps() -> list[tuple[int, int, float]]:
                mailer = InvitationMailer(settings, url)
                seen = []
                try:
                    for attempt in range(3):
                        handled = await mailer.run_once()
                        again = await mailer.run_once()  # nothing is due until the backoff ends
                        row = outbox_row(db, str(invitation_id[0]))
                        wait = (row["next_attempt_at"] - row["now"]).total_seconds()
                        seen.append((handled, again, row["attempts"], wait))
                        if attempt < 2:
                            make_due()
                    sink.start()
                    make_due()
                    seen.append((await mailer.run_once(), await mailer.run_once(), 0, 0))
                finally:
                    await mailer.stop()
                return seen

            seen = asyncio.run(steps())
            assert [s[:3] for s in seen[:3]] == [(1, 0, 1), (1, 0, 2), (1, 0, 3)]
            for (_, _, _, wait), expected in zip(seen, (1, 2, 4), strict=False):
                assert expected - 0.5 < wait <= expected
            assert seen[3][:2] == (1, 0)
            [received] = sink.inbox.received
            assert received.recipients == ["kim@example.com"]
            assert "Lin <lin@example.com>" in received.body
            assert "admin" in received.body
    finally:
        sink.stop()
        harness.drop_database(pg_admin_url, url)


@pytest.mark.parametrize(
    ("failures", "seconds"),
    [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (1000, 300)],
    ids=lambda v: str(v),
)
def test_retry_delay_doubles_up_to_five_minutes(failures: int, seconds: int) -> None:
    assert retry_delay(failures).total_seconds() == seconds


# --- settings -------------------------------------------------------------------------------


def test_email_off_is_logged_once(
    mail_settings: Settings, mail_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="spoke_grpc.server")
    off = ServerThread(Settings(pool_min_size=1, shutdown_grace_seconds=0), mail_url)
    try:
        assert off.server.mailer is None
    finally:
        off.stop()
    lines = [
        r
        for r in caplog.records
        if r.name == "spoke_grpc.server" and r.getMessage().startswith("email is off")
    ]
    assert [(r.levelno, r.getMessage()) for r in lines] == [
        (
            logging.INFO,
            "email is off (SPOKE_SMTP_URL unset): invitations are not emailed;"
            " their tokens are returned by CreateInvitation",
        )
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.com", SmtpServer("mail.example.com", 25)),
        ("SMTP://mail.example.com:2525/", SmtpServer("mail.example.com", 2525)),
        (
            "smtp://bot%40example.com:p%3Ass@mail.example.com:587?starttls=true",
            SmtpServer("mail.example.com", 587, False, True, "bot@example.com", "p:ss"),
        ),
        ("smtps://u:p@[::1]", SmtpServer("::1", 465, True, False, "u", "p")),
    ],
    ids=["plain", "port", "starttls-login", "smtps-ipv6"],
)
def test_smtp_url_forms(url: str, expected: SmtpServer) -> None:
    assert parse_smtp_url(url) == expected
    assert Settings.from_env({"SPOKE_SMTP_URL": url}).smtp_url == url
    assert "p:ss" not in repr(parse_smtp_url(url))


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("mail.example.com", "smtp:// or smtps://"),
        ("http://mail.example.com", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        ("smtp://mail.example.com:99999", "bad port"),
        ("smtp://mail.example.com:twenty", "bad port"),
        ("smtp://mail.example.com/inbox", "no path"),
        ("smtp://mail.example.com?tls=1", "unknown options"),
        ("smtp://mail.example.com?starttls=maybe", "starttls must be true or false"),
        ("smtps://mail.example.com?starttls=true", "TLS already"),
        ("smtp://user@mail.example.com", "both a user and a password"),
        ("smtp://:secret@mail.example.com", "both a user and a password"),
    ],
    ids=[
        "no-scheme",
        "http",
        "no-host",
        "port-range",
        "port-text",
        "path",
        "option",
        "starttls-value",
        "smtps-starttls",
        "user-only",
        "password-only",
    ],
)
def test_bad_smtp_url_is_a_config_error(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)) as raised:
        Settings.from_env({"SPOKE_SMTP_URL": url})
    message = str(raised.value)
    assert message.startswith("SPOKE_SMTP_URL")
    assert "\n" not in message
    assert "secret" not in message
    with pytest.raises(ConfigError):
        InvitationMailer(Settings(smtp_url=url), "postgresql://unused")


# --- where the email says to call -----------------------------------------------------------


def due_email() -> DueEmail:
    return DueEmail(
        org_id=uuid.uuid4(),
        id=uuid.uuid4(),
        invitation_id=uuid.uuid4(),
        attempts=0,
        email="ada@example.com",
        role="developer",
        expires_at=dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        pending=True,
        org_name="acme",
        org_display_name="Acme Corp",
        inviter_name=None,
        inviter_email=None,
    )


@pytest.mark.parametrize(
    ("stored", "to"),
    [
        pytest.param("ana@münchen.de", "ana@xn--mnchen-3ya.de", id="idn-domain-in-ascii"),
        pytest.param("Ada@example.com", "Ada@example.com", id="ascii-as-stored"),
        pytest.param("admin@spoke.localhost", "admin@spoke.localhost", id="stored-before-the-rule"),
    ],
)
def test_the_email_goes_to_the_address_in_a_form_any_smtp_server_takes(
    stored: str, to: str
) -> None:
    due = dataclasses.replace(due_email(), email=stored)
    assert compose(due, "spoke_inv_x", Settings())["To"] == to


@pytest.mark.parametrize(
    ("public", "call"),
    [
        pytest.param(None, "grpcurl -plaintext -H", id="unset: the listen address"),
        pytest.param("spoke.internal:50051", "grpcurl -plaintext -H", id="host:port"),
        pytest.param("grpc://spoke.internal:50051", "grpcurl -plaintext -H", id="grpc"),
        pytest.param("grpcs://spoke.example.com:443", "grpcurl -H", id="grpcs: TLS"),
    ],
)
def test_the_email_names_the_address_clients_reach(public: str | None, call: str) -> None:
    env = {"SPOKE_LISTEN": "0.0.0.0:50051"} | ({"SPOKE_PUBLIC_ADDRESS": public} if public else {})
    settings = Settings.from_env(env)
    body = compose(due_email(), "spoke_inv_x", settings).get_content()
    [line] = [line.strip() for line in body.splitlines() if "grpcurl " in line]
    address = (public or "0.0.0.0:50051").split("://")[-1]
    assert line.startswith(call + ' "authorization: Bearer <your API token>"')
    assert line.endswith(f" {address} spoke.v1.MemberService/AcceptInvitation")


@pytest.mark.parametrize(
    "public", ["spoke.example.com", "https://spoke.example.com:443", "grpcs://h:443/x", "h:99999"]
)
def test_a_bad_public_address_names_the_setting(public: str) -> None:
    with pytest.raises(ConfigError, match="SPOKE_PUBLIC_ADDRESS"):
        Settings.from_env({"SPOKE_PUBLIC_ADDRESS": public})


def test_a_usage_alert_is_emailed_to_the_orgs_admins(
    mail_server: ServerThread, mail_admin: Client, mail_users: Users, inbox: Inbox
) -> None:
    """Issue 17: a quota.threshold_crossed alert reaches every admin by email, once."""
    owner = mail_users.create("owner")
    helper = mail_users.create("helper")
    owner.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="alerted"))
    org_id = owner.orgs.GetOrganization(
        organization_pb2.GetOrganizationRequest(org="alerted")
    ).organization.id
    mail_users.join(org_id, helper, Role.ADMIN)
    mail_admin.quotas.UpdateQuotas(
        quota_pb2.UpdateQuotasRequest(
            org="alerted",
            quotas=quota_pb2.Quotas(max_modules=5),
            update_mask=field_mask_pb2.FieldMask(paths=["max_modules"]),
        )
    )
    for i in range(4):
        owner.modules.CreateModule(module_pb2.CreateModuleRequest(org="alerted", name=f"mod{i}"))
    mailer_pass(mail_server)
    alerts = [r for r in inbox.received if "usage alert" in str(r.message["Subject"])]
    assert sorted(r.recipients[0] for r in alerts) == sorted([owner.email, helper.email])
    assert "80% of the" in alerts[0].body and "4 of 5" in alerts[0].body
    mailer_pass(mail_server)
    assert len([r for r in inbox.received if "usage alert" in str(r.message["Subject"])]) == 2


def test_a_webhook_the_server_disabled_is_emailed_to_the_orgs_admins(
    mail_server: ServerThread, mail_users: Users, mail_db: psycopg.Connection[Any], inbox: Inbox
) -> None:
    """Issue 17: the dispatcher disabling a webhook (here: its store call) tells the org's
    admins, once; a webhook an admin disabled is not emailed about."""
    owner = mail_users.create("owner")
    owner.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="hooked"))
    ids = []
    for _ in range(2):
        row = mail_db.execute(
            "INSERT INTO webhooks (org_id, url, events, secret_salt)"
            " SELECT id, 'https://ci.example.com/hook', ARRAY['*'], decode(repeat('ab', 32), 'hex')"
            " FROM organizations WHERE name = 'hooked' RETURNING org_id, id"
        ).fetchone()
        assert row is not None
        ids.append(row)
    org_id, failing = ids[0]
    mail_server.run(webhook_store_disable(mail_server, org_id, failing))
    mail_db.execute("UPDATE webhooks SET enabled = false WHERE id = %s", [ids[1][1]])
    mailer_pass(mail_server)
    notices = [r for r in inbox.received if "webhook disabled" in str(r.message["Subject"])]
    assert [r.recipients for r in notices] == [[owner.email]]
    assert "https://ci.example.com/hook" in notices[0].body
    assert "10 deliveries in a row failed" in notices[0].body
    mailer_pass(mail_server)
    assert len([r for r in inbox.received if "webhook disabled" in str(r.message["Subject"])]) == 1


async def webhook_store_disable(server: ServerThread, org_id: Any, webhook_id: Any) -> None:
    async with server.server.pool.connection() as conn:
        await webhook_store.disable(
            conn, org_id, webhook_id, "10 deliveries in a row failed; the last: HTTP 410"
        )
