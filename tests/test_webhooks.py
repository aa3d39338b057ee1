"""Webhooks (issue 17): real servers on a database of their own POST to a real HTTP server
started in the test (``http.server`` in a thread).

The senders of the in-process server run once at start and then wait an hour: the tests
drive ``WebhookDispatcher.run_once()`` themselves, so every attempt happens when the test
says. The two-process test runs real ``spoke-grpc serve`` processes whose senders poll.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from spoke.v1 import member_pb2, module_pb2, organization_pb2, quota_pb2, user_pb2, webhook_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from spoke_grpc.webhook_dispatcher import WebhookDispatcher
from spoke_grpc.webhook_targets import TargetPolicy, TargetRefused, resolve
from tests import harness
from tests.harness import Client, ServerThread
from tests.test_shutdown import CHANNEL_OPTIONS, serving, wait_for, wait_serving

# --- a real HTTP receiver ------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Answers each POST with the next status of ``script`` (then ``default``), keeping
    every request."""

    script: list[int] = field(default_factory=list)
    default: int = 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Condition = field(default_factory=threading.Condition)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.received.append(Received(headers, body))
            self.lock.notify_all()
            return self.script.pop(0) if self.script else self.default

    def wait_for(self, count: int, timeout: float = 30) -> list[Received]:
        with self.lock:
            if not self.lock.wait_for(lambda: len(self.received) >= count, timeout):
                pytest.fail(f"received {len(self.received)} POSTs, expected {count}")
            return list(self.received)


@contextlib.contextmanager
def receiving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            status = receiver.handle({k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        httpd.shutdown()
        httpd.server_close()


def verify(received: Received, secret: str) -> bool:
    """What a receiver does: HMAC-SHA256 of ``timestamp.body`` with the secret."""
    timestamp = received.headers["x-spoke-timestamp"]
    signed = timestamp.encode() + b"." + received.body
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, received.headers["x-spoke-signature"])


# --- a server of our own -------------------------------------------------------------------


@dataclass(frozen=True)
class Hooks:
    server: ServerThread
    admin: Client
    url: str

    def run_once(self) -> int:
        dispatcher = self.server.server.webhooks
        assert dispatcher is not None
        return self.server.run(dispatcher.run_once())


HOOK_SETTINGS = Settings(
    pool_min_size=1,
    pool_max_size=8,
    shutdown_grace_seconds=1,
    anonymous_rate_limit=0,
    webhook_allow_http=True,
    webhook_allow_private=True,
    webhook_interval_seconds=3600,
    webhook_workers=1,
    webhook_timeout_seconds=5,
    webhook_retry_base_seconds=0,
    webhook_max_failures=3,
)


@pytest.fixture(scope="module")
def hooks(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hooks]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    try:
        server = ServerThread(HOOK_SETTINGS, url)
        try:
            token_file = server.run(
                ensure_bootstrap_admin(
                    server.server.pool, tmp_path_factory.mktemp("hooks") / "token"
                )
            )
            assert token_file is not None
            with grpc.insecure_channel(server.address) as channel:
                yield Hooks(server, Client(channel, token_file.read_text().strip()), url)
        finally:
            server.stop()
    finally:
        harness.drop_database(pg_admin_url, url)


_orgs = iter(range(10_000))


def new_org(admin: Client) -> str:
    name = f"hooked-{next(_orgs)}"
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name=name))
    return name


def create_webhook(
    admin: Client, org: str, url: str, events: list[str]
) -> webhook_pb2.CreateWebhookResponse:
    response: webhook_pb2.CreateWebhookResponse = admin.webhooks.CreateWebhook(
        webhook_pb2.CreateWebhookRequest(org=org, url=url, events=events)
    )
    return response


def deliveries(admin: Client, org: str, webhook_id: str) -> list[webhook_pb2.WebhookDelivery]:
    response = admin.webhooks.ListWebhookDeliveries(
        webhook_pb2.ListWebhookDeliveriesRequest(org=org, webhook_id=webhook_id)
    )
    return list(response.deliveries)


# --- tests ---------------------------------------------------------------------------------


def test_an_event_is_posted_signed_with_the_secret_shown_once(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    with receiving(Receiver()) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["module.created"])
        assert created.secret.startswith("spkwh_")
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="shapes"))
        # Not subscribed: queues nothing.
        hooks.admin.orgs.UpdateOrganization(
            organization_pb2.UpdateOrganizationRequest(
                org=org,
                organization=organization_pb2.Organization(description="x"),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            )
        )
        assert hooks.run_once() == 1
        (got,) = receiver.wait_for(1)
    assert verify(got, created.secret)
    assert not verify(got, created.secret + "x")
    assert got.headers["x-spoke-event"] == "module.created"
    assert got.headers["content-type"] == "application/json"
    payload = got.json
    assert set(payload) == {"id", "type", "created_at", "org", "data"}
    assert payload["type"] == "module.created"
    assert payload["org"]["name"] == org
    assert payload["data"]["module"] == "shapes"
    (delivery,) = deliveries(hooks.admin, org, created.webhook.id)
    assert got.headers["x-spoke-delivery"] == delivery.id
    assert payload["id"] == delivery.event_id
    assert delivery.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
    assert (delivery.attempts, delivery.status_code) == (1, 200)
    # The secret is never shown again.
    listed = hooks.admin.webhooks.ListWebhooks(webhook_pb2.ListWebhooksRequest(org=org))
    assert created.secret not in str(listed)


def test_500_twice_then_200_is_three_attempts_of_one_delivery(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    with receiving(Receiver(script=[500, 500])) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["*"])
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="retried"))
        assert hooks.run_once() == 3  # retry base 0: each retry is due at once
        got = receiver.wait_for(3)
        assert hooks.run_once() == 0
    assert len(receiver.received) == 3
    assert {r.headers["x-spoke-delivery"] for r in got} == {got[0].headers["x-spoke-delivery"]}
    assert all(verify(r, created.secret) for r in got)
    (delivery,) = deliveries(hooks.admin, org, created.webhook.id)
    assert delivery.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED
    assert (delivery.attempts, delivery.status_code) == (3, 200)


def test_a_final_4xx_is_not_retried_and_repeated_failures_disable_the_webhook(
    hooks: Hooks,
) -> None:
    org = new_org(hooks.admin)
    with receiving(Receiver(default=404)) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["module.created"])
        for i in range(4):
            hooks.admin.modules.CreateModule(
                module_pb2.CreateModuleRequest(org=org, name=f"gone{i}")
            )
        # max_failures=3: three deliveries fail once each, then the webhook is disabled.
        assert hooks.run_once() == 3
    assert len(receiver.received) == 3
    webhook = hooks.admin.webhooks.GetWebhook(
        webhook_pb2.GetWebhookRequest(org=org, webhook_id=created.webhook.id)
    ).webhook
    assert not webhook.enabled
    assert "3 deliveries in a row failed" in webhook.disabled_reason
    states = [d.state for d in deliveries(hooks.admin, org, created.webhook.id)]
    assert states.count(webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED) == 3
    assert states.count(webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING) == 1

    # Enabled again (and answering), it delivers what was left pending, then redelivers.
    with receiving(Receiver()) as receiver:
        mask = field_mask_pb2.FieldMask(paths=["url", "enabled"])
        hooks.admin.webhooks.UpdateWebhook(
            webhook_pb2.UpdateWebhookRequest(
                org=org,
                webhook_id=created.webhook.id,
                webhook=webhook_pb2.Webhook(url=receiver.url, enabled=True),
                update_mask=mask,
            )
        )
        assert hooks.run_once() == 1
        (got,) = receiver.wait_for(1)
        assert got.json["data"]["module"] == "gone3"
        failed = [
            d
            for d in deliveries(hooks.admin, org, created.webhook.id)
            if d.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED
        ]
        again = hooks.admin.webhooks.RedeliverWebhookDelivery(
            webhook_pb2.RedeliverWebhookDeliveryRequest(
                org=org, webhook_id=created.webhook.id, delivery_id=failed[0].id
            )
        ).delivery
        assert again.id != failed[0].id and again.event_id == failed[0].event_id
        assert hooks.run_once() == 1
        second = receiver.wait_for(2)[1]
        assert second.headers["x-spoke-delivery"] == again.id


def test_rotating_the_secret_signs_with_the_new_one(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    with receiving(Receiver()) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["module.created"])
        rotated = hooks.admin.webhooks.RotateWebhookSecret(
            webhook_pb2.RotateWebhookSecretRequest(org=org, webhook_id=created.webhook.id)
        )
        assert rotated.secret != created.secret and rotated.secret.startswith("spkwh_")
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="rotated"))
        hooks.run_once()
        (got,) = receiver.wait_for(1)
    assert verify(got, rotated.secret) and not verify(got, created.secret)


def test_webhooks_are_for_org_admins(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    made = hooks.admin.users.CreateUser(user_pb2.CreateUserRequest(email="dev@hooks.example"))
    hooks.admin.members.AddMember(
        member_pb2.AddMemberRequest(org=org, user=made.user.id, role=member_pb2.ROLE_DEVELOPER)
    )
    developer = Client(hooks.admin.channel, made.token)
    failure = harness.failure(
        lambda: developer.webhooks.ListWebhooks(webhook_pb2.ListWebhooksRequest(org=org))
    )
    assert failure.code is grpc.StatusCode.PERMISSION_DENIED


# --- server-side request forgery -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.1/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("http://example.com/hook", "must be an https URL"),
        ("https://user:pw@example.com/hook", "user name"),
    ],
    ids=[
        "v4-loopback",
        "10/8",
        "192.168/16",
        "metadata",
        "v6-loopback",
        "mapped",
        "name",
        "http",
        "userinfo",
    ],
)
def test_a_private_or_plain_http_url_is_refused(admin: Client, url: str, reason: str) -> None:
    """The shared server runs with the defaults: https only, public addresses only."""
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="ssrf"))
    failure = harness.failure(
        lambda: admin.webhooks.CreateWebhook(
            webhook_pb2.CreateWebhookRequest(org="ssrf", url=url, events=["*"])
        )
    )
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert reason in failure.field_violations["url"]


def test_the_address_is_checked_again_when_delivering(hooks: Hooks) -> None:
    """A URL accepted under one policy is refused by a sender under the default one, and
    the request goes to the very address that was checked."""
    org = new_org(hooks.admin)
    with receiving(Receiver()) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["module.created"])
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="pinned"))
        strict = WebhookDispatcher(
            Settings(webhook_allow_http=True, webhook_max_failures=1),
            hooks.url,
            hooks.server.server.app.webhook_key,
        )
        assert hooks.server.run(strict.run_once()) == 1
        hooks.server.run(strict.stop())
    assert receiver.received == []
    (delivery,) = deliveries(hooks.admin, org, created.webhook.id)
    assert delivery.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED
    assert "loopback" in delivery.last_error


def test_resolve_pins_the_checked_address() -> None:
    import asyncio

    pinned = asyncio.run(
        resolve("http://localhost:8080/a?b=1", TargetPolicy(allow_http=True, allow_private=True))
    )
    assert pinned.address.is_loopback
    assert pinned.url.startswith(("http://127.0.0.1:8080/a?b=1", "http://[::1]:8080/a?b=1"))
    assert (pinned.host, pinned.host_header) == ("localhost", "localhost:8080")
    with pytest.raises(TargetRefused, match="loopback"):
        asyncio.run(resolve("https://localhost/a", TargetPolicy()))


def test_deliveries_of_a_deleted_webhook_go_with_it(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    created = create_webhook(hooks.admin, org, "http://127.0.0.1:9/none", ["*"])
    hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="orphan"))
    hooks.admin.webhooks.DeleteWebhook(
        webhook_pb2.DeleteWebhookRequest(org=org, webhook_id=created.webhook.id)
    )
    with psycopg.connect(hooks.url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM webhook_deliveries WHERE webhook_id = %s",
            [created.webhook.id],
        ).fetchone()
    assert row is not None and row[0] == 0


# --- two processes -------------------------------------------------------------------------


def test_two_server_processes_deliver_50_events_once_each_in_order(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    token_file = tmp_path / "bootstrap-token"
    env = {
        "DATABASE_URL": url,
        "SPOKE_BOOTSTRAP_TOKEN_FILE": str(token_file),
        "SPOKE_POOL_MAX_SIZE": "4",
        "SPOKE_COMPILE_WORKERS": "1",
        "SPOKE_WEBHOOK_ALLOW_HTTP": "true",
        "SPOKE_WEBHOOK_ALLOW_PRIVATE": "true",
        "SPOKE_WEBHOOK_INTERVAL": "0.02",
        "SPOKE_WEBHOOK_WORKERS": "3",
        "SPOKE_WEBHOOK_RETRY_BASE": "0",
    }
    try:
        with contextlib.ExitStack() as stack:
            clients = []
            for name in ("a", "b"):
                (tmp_path / name).mkdir()
                served = stack.enter_context(serving(tmp_path / name, tmp_path / name, env))
                channel = stack.enter_context(
                    grpc.insecure_channel(served.address, options=CHANNEL_OPTIONS)
                )
                wait_serving(served, channel)
                clients.append(Client(channel, token_file.read_text().strip()))
            receiver = stack.enter_context(receiving(Receiver()))
            org = new_org(clients[0])
            created = create_webhook(clients[0], org, receiver.url, ["organization.updated"])
            for i in range(50):
                clients[i % 2].orgs.UpdateOrganization(
                    organization_pb2.UpdateOrganizationRequest(
                        org=org,
                        organization=organization_pb2.Organization(description=f"v{i}"),
                        update_mask=field_mask_pb2.FieldMask(paths=["description"]),
                    )
                )
            receiver.wait_for(50)

            def all_delivered() -> bool:
                with psycopg.connect(url) as conn:
                    row = conn.execute(
                        "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*)"
                        " FROM webhook_deliveries WHERE webhook_id = %s",
                        [created.webhook.id],
                    ).fetchone()
                return row == (50, 50)

            wait_for(all_delivered, 30, "every delivery recorded as delivered")
            with psycopg.connect(url) as conn:
                expected = [
                    str(r[0])
                    for r in conn.execute(
                        "SELECT e.id FROM events e JOIN organizations o ON o.id = e.org_id"
                        " WHERE o.name = %s AND e.type = 'organization.updated' ORDER BY e.seq",
                        [org],
                    )
                ]
            got = [r.json["id"] for r in receiver.received]
            assert len(expected) == 50
            assert got == expected  # each once, in order
            assert len({r.headers["x-spoke-delivery"] for r in receiver.received}) == 50
            assert all(verify(r, created.secret) for r in receiver.received)
    finally:
        harness.drop_database(pg_admin_url, url)


# --- usage alerts --------------------------------------------------------------------------


def set_limit(admin: Client, org: str, field: str, value: int) -> None:
    admin.quotas.UpdateQuotas(
        quota_pb2.UpdateQuotasRequest(
            org=org,
            quotas=quota_pb2.Quotas(**{field: value}),
            update_mask=field_mask_pb2.FieldMask(paths=[field]),
        )
    )


def alerts(receiver: Receiver) -> list[tuple[str, int]]:
    return [
        (r.json["data"]["quota"], r.json["data"]["threshold_percent"])
        for r in receiver.received
        if r.json["type"] == "quota.threshold_crossed"
    ]


def test_crossing_80_percent_of_a_limit_emits_one_event_per_period(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    set_limit(hooks.admin, org, "max_modules", 5)
    with receiving(Receiver()) as receiver:
        create_webhook(hooks.admin, org, receiver.url, ["quota.threshold_crossed"])
        for i in range(4):  # 4 of 5: 80%
            hooks.admin.modules.CreateModule(
                module_pb2.CreateModuleRequest(org=org, name=f"mod{i}")
            )
        hooks.run_once()
        receiver.wait_for(1)
        assert alerts(receiver) == [("modules", 80)]
        payload = receiver.received[0].json["data"]
        assert (payload["used"], payload["limit"]) == (4, 5)
        # Down and up again in the same month: no second alert for 80%.
        hooks.admin.modules.DeleteModule(module_pb2.DeleteModuleRequest(org=org, module="mod0"))
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="mod0"))
        assert hooks.run_once() == 0
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="mod4"))
        hooks.run_once()
        receiver.wait_for(2)
    assert alerts(receiver) == [("modules", 80), ("modules", 100)]


def test_thresholds_are_an_org_setting(hooks: Hooks) -> None:
    org = new_org(hooks.admin)
    set_limit(hooks.admin, org, "max_modules", 10)
    bad = harness.failure(
        lambda: hooks.admin.orgs.UpdateOrganization(
            organization_pb2.UpdateOrganizationRequest(
                org=org,
                organization=organization_pb2.Organization(
                    settings={"quota_alert_thresholds": "80,abc"}
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
            )
        )
    )
    assert bad.code is grpc.StatusCode.INVALID_ARGUMENT
    hooks.admin.orgs.UpdateOrganization(
        organization_pb2.UpdateOrganizationRequest(
            org=org,
            organization=organization_pb2.Organization(settings={"quota_alert_thresholds": "20"}),
            update_mask=field_mask_pb2.FieldMask(paths=["settings"]),
        )
    )
    with receiving(Receiver()) as receiver:
        create_webhook(hooks.admin, org, receiver.url, ["quota.threshold_crossed"])
        for i in range(2):
            hooks.admin.modules.CreateModule(
                module_pb2.CreateModuleRequest(org=org, name=f"set{i}")
            )
        hooks.run_once()
        receiver.wait_for(1)
    assert alerts(receiver) == [("modules", 20)]


def test_api_requests_alert_after_the_usage_flush(hooks: Hooks) -> None:
    made = hooks.admin.users.CreateUser(user_pb2.CreateUserRequest(email="busy@hooks.example"))
    owner = Client(hooks.admin.channel, made.token)
    org = f"busy-{next(_orgs)}"
    owner.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name=org))
    set_limit(hooks.admin, org, "max_api_requests_per_hour", 10)
    with receiving(Receiver()) as receiver:
        create_webhook(hooks.admin, org, receiver.url, ["quota.threshold_crossed"])
        for _ in range(8):  # the owner's calls count; the platform admin's do not
            owner.orgs.GetOrganization(organization_pb2.GetOrganizationRequest(org=org))
        assert hooks.server.run(hooks.server.server.usage.flush())
        hooks.run_once()
        receiver.wait_for(1)
    assert alerts(receiver) == [("api_requests_per_hour", 80)]


def test_retries_end_with_the_window_and_disable_the_webhook(hooks: Hooks) -> None:
    """5xx is retried only within SPOKE_WEBHOOK_RETRY_WINDOW from the first attempt; then
    the delivery fails and the webhook, failing that long, is disabled."""
    org = new_org(hooks.admin)
    with receiving(Receiver(default=503)) as receiver:
        created = create_webhook(hooks.admin, org, receiver.url, ["module.created"])
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=org, name="late"))
        short = WebhookDispatcher(
            dataclasses.replace(
                HOOK_SETTINGS, webhook_retry_base_seconds=60, webhook_retry_window_seconds=30
            ),
            hooks.url,
            hooks.server.server.app.webhook_key,
        )
        assert hooks.server.run(short.run_once()) == 1
        hooks.server.run(short.stop())
    assert len(receiver.received) == 1
    (delivery,) = deliveries(hooks.admin, org, created.webhook.id)
    assert delivery.state == webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED
    assert delivery.status_code == 503 and "gave up after 1 attempts" in delivery.last_error
    webhook = hooks.admin.webhooks.GetWebhook(
        webhook_pb2.GetWebhookRequest(org=org, webhook_id=created.webhook.id)
    ).webhook
    assert not webhook.enabled and "deliveries failed for" in webhook.disabled_reason


# --- subscriptions to another organization's public module ---------------------------------


def test_an_admin_subscribes_to_another_orgs_public_module_versions(hooks: Hooks) -> None:
    made = hooks.admin.users.CreateUser(user_pb2.CreateUserRequest(email="sub@hooks.example"))
    subscriber = Client(hooks.admin.channel, made.token)
    mine = f"mine-{next(_orgs)}"
    subscriber.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name=mine))
    theirs = new_org(hooks.admin)
    for name, public in (("open", True), ("closed", False)):
        hooks.admin.modules.CreateModule(
            module_pb2.CreateModuleRequest(org=theirs, name=name, is_public=public)
        )

    def subscribe(module: str, events: list[str]) -> Any:
        return subscriber.webhooks.CreateWebhook(
            webhook_pb2.CreateWebhookRequest(
                org=mine,
                url=receiver.url,
                events=events,
                source_org=theirs,
                source_module=module,
            )
        )

    with receiving(Receiver()) as receiver:
        # A private module of another org looks missing; other event types are refused.
        hidden = harness.failure(lambda: subscribe("closed", ["version.created"]))
        missing = harness.failure(lambda: subscribe("nothing", ["version.created"]))
        assert hidden.code is missing.code is grpc.StatusCode.NOT_FOUND
        assert hidden.message.replace("closed", "nothing") == missing.message
        wrong = harness.failure(lambda: subscribe("open", ["*"]))
        assert wrong.code is grpc.StatusCode.INVALID_ARGUMENT
        created = subscribe("open", ["version.created"])
        assert created.webhook.source_module_id
        for module in ("open", "closed"):
            push_version(hooks.admin, theirs, module, "v1.0.0")
        hooks.admin.modules.CreateModule(module_pb2.CreateModuleRequest(org=theirs, name="more"))
        hooks.run_once()
        (got,) = receiver.wait_for(1)
        assert got.json["org"]["name"] == theirs
        assert (got.json["type"], got.json["data"]["module"]) == ("version.created", "open")
        assert verify(got, created.secret)
        # Made private, the module's versions stop reaching the subscriber.
        hooks.admin.modules.UpdateModule(
            module_pb2.UpdateModuleRequest(
                org=theirs,
                module="open",
                update=module_pb2.Module(is_public=False),
                update_mask=field_mask_pb2.FieldMask(paths=["is_public"]),
            )
        )
        push_version(hooks.admin, theirs, "open", "v2.0.0")
        assert hooks.run_once() == 0
    assert len(receiver.received) == 1


def push_version(client: Client, org: str, module: str, version: str) -> None:
    package = f"{module}.v{version[1]}"
    client.modules.CreateVersion(
        module_pb2.CreateVersionRequest(
            org=org,
            module=module,
            version=version,
            files=[
                module_pb2.ProtoFile(
                    path="a.proto", content=f'syntax = "proto3";\npackage {package};\n'
                )
            ],
        )
    )
