"""Logs (issue 11, item 2): one access line per call, text or JSON; a request id taken from
``x-request-id`` or made, returned in response metadata (errors included, alongside the
rate-limit headers), in every line the call logs and in the INTERNAL reference; and no
token, invitation secret or file content in any log line."""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from spoke.v1 import (
    member_pb2,
    module_pb2,
    module_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

from spoke_grpc import logs
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.types import Role
from tests.conftest import Users, free_port
from tests.harness import Client, failure
from tests.operating import CapturedLogs, Dedicated, dedicated_server
from tests.servicers.test_modules import create_module, create_org, proto, push

ME = user_pb2.GetCurrentUserRequest()
ACCESS = "spoke_grpc.access"


def with_request_id(client: Client, request_id: str) -> list[tuple[str, str]]:
    return [*client.metadata(), ("x-request-id", request_id)]


def access_lines(captured: CapturedLogs, request_id: str) -> list[dict[str, Any]]:
    return [
        e for e in captured.entries() if e["logger"] == ACCESS and e.get("request_id") == request_id
    ]


def test_access_line_has_method_code_duration_org_caller_and_request_id(admin: Client) -> None:
    org = create_org(admin, "logged")
    with CapturedLogs(logging.INFO) as captured:
        stub = organization_pb2_grpc.OrganizationServiceStub(admin.channel)
        response, call = stub.GetOrganization.with_call(
            organization_pb2.GetOrganizationRequest(org=org),
            metadata=with_request_id(admin, "req-123"),
            timeout=10,
        )
    assert dict(call.trailing_metadata())["x-request-id"] == "req-123"
    [line] = access_lines(captured, "req-123")
    assert line["message"] == "call"
    assert line["level"] == "INFO"
    assert line["method"] == "spoke.v1.OrganizationService/GetOrganization"
    assert line["code"] == "OK"
    assert line["reason"] is None
    assert isinstance(line["duration_ms"], float) and 0 < line["duration_ms"] < 10_000
    assert line["org"] == response.organization.name == "logged"
    assert line["caller"] == admin.user_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_a_request_id_is_made_when_missing_or_unusable(admin: Client) -> None:
    for sent in (None, "has space", "x" * 65, ""):
        metadata = admin.metadata() + ([("x-request-id", sent)] if sent is not None else [])
        stub = user_pb2_grpc.UserServiceStub(admin.channel)
        _, call = stub.GetCurrentUser.with_call(ME, metadata=metadata, timeout=10)
        returned = dict(call.trailing_metadata())["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", returned), (sent, returned)


def test_failed_calls_return_the_request_id_with_the_rate_limit_headers(admin: Client) -> None:
    org = create_org(admin, "limited")  # the small tier: 5,000 requests an hour
    try:
        module_pb2_grpc.ModuleServiceStub(admin.channel).CreateModule(
            module_pb2.CreateModuleRequest(org=org, name="Bad Name"),
            metadata=with_request_id(admin, "bad-module-1"),
            timeout=10,
        )
    except grpc.RpcError as exc:
        assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
        headers = dict(exc.trailing_metadata())  # type: ignore[attr-defined]
    else:
        raise AssertionError("the call succeeded")
    assert headers["x-request-id"] == "bad-module-1"
    assert headers["x-ratelimit-limit"] == "5000"
    assert int(headers["x-ratelimit-remaining"]) < 5000

    error = failure(lambda: admin.orgs.GetOrganization(organization_pb2.GetOrganizationRequest()))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT


def test_internal_error_reference_is_the_request_id_found_in_every_line_of_the_call(
    admin: Client, db: psycopg.Connection[Any]
) -> None:
    db.execute("ALTER TABLE audit_events RENAME TO audit_events_away")
    try:
        with CapturedLogs(logging.INFO) as captured:
            with pytest.raises(grpc.RpcError) as raised:
                organization_pb2_grpc.OrganizationServiceStub(admin.channel).CreateOrganization(
                    organization_pb2.CreateOrganizationRequest(name="doomed-by-bug"),
                    metadata=with_request_id(admin, "bug-42"),
                    timeout=10,
                )
            access = captured.wait_for("bug-42", ACCESS)
    finally:
        db.execute("ALTER TABLE audit_events_away RENAME TO audit_events")
    exc = raised.value
    assert exc.code() is grpc.StatusCode.INTERNAL  # type: ignore[attr-defined]
    assert "reference bug-42" in exc.details()  # type: ignore[attr-defined]
    assert dict(exc.trailing_metadata())["x-request-id"] == "bug-42"  # type: ignore[attr-defined]
    assert (access["code"], access["reason"]) == ("INTERNAL", "INTERNAL")
    lines = [e for e in captured.entries() if e.get("request_id") == "bug-42"]
    error = next(e for e in lines if e["level"] == "ERROR")
    assert "bug-42" in error["message"] and "Traceback" in error["exception"]
    # Lines logged outside any call carry no request id.
    assert all(e.get("request_id") is None for e in captured.entries() if e not in lines)


def test_text_format_puts_fields_and_request_id_on_one_line() -> None:
    record = logging.LogRecord(ACCESS, logging.INFO, __file__, 1, "call", None, None)
    record.fields = {"method": "spoke.v1.UserService/GetCurrentUser", "code": "OK", "org": None}
    record.request_id = "r-1"
    line = logs.TextFormatter().format(record)
    assert re.fullmatch(
        r"\S+Z INFO spoke_grpc\.access: call method=spoke\.v1\.UserService/GetCurrentUser"
        r" code=OK request_id=r-1",
        line,
    )
    entry = json.loads(logs.JsonFormatter().format(record))
    assert entry["org"] is None and entry["request_id"] == "r-1"


def test_configure_writes_json_lines_to_the_stream() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        logs.configure("INFO", "json", stream)
        logging.getLogger("spoke_grpc.test").info("hello %s", "there")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    entry = json.loads(stream.getvalue())
    assert (entry["message"], entry["logger"], entry["level"]) == (
        "hello there",
        "spoke_grpc.test",
        "INFO",
    )


@pytest.mark.parametrize("raw", ["xml", "JSONL", "plain"])
def test_log_format_must_be_text_or_json(raw: str) -> None:
    with pytest.raises(ConfigError, match="SPOKE_LOG_FORMAT must be text or json"):
        Settings.from_env({"SPOKE_LOG_FORMAT": raw})


# --- no secrets in the logs -----------------------------------------------------------------


@pytest.fixture
def mailing(pg_admin_url: str, template_url: str, tmp_path: Path) -> Iterator[Dedicated]:
    # Email on towards a closed port: the mailer's failure path logs too.
    settings = Settings(smtp_url=f"smtp://127.0.0.1:{free_port()}", email_interval_seconds=0.05)
    with dedicated_server(pg_admin_url, template_url, tmp_path, settings) as dedicated:
        yield dedicated


def test_no_token_invitation_secret_or_file_content_in_any_log_line(mailing: Dedicated) -> None:
    marker = "ZebraSecretContent7f3a"
    admin = mailing.admin
    with CapturedLogs(logging.DEBUG) as captured, psycopg.connect(mailing.database_url) as db:
        users = Users(admin, db)
        dev = users.create("dev")
        extra = dev.users.CreateApiToken(user_pb2.CreateApiTokenRequest(description="ci")).token
        org = create_org(admin, "secretive")
        users.join(org, dev, Role.DEVELOPER)
        invitee = users.create("invitee")
        invitation = admin.members.CreateInvitation(
            member_pb2.CreateInvitationRequest(
                org=org, email=invitee.email, role=member_pb2.ROLE_VIEWER
            )
        ).token
        invitee.members.AcceptInvitation(member_pb2.AcceptInvitationRequest(token=invitation))
        failure(
            lambda: invitee.members.AcceptInvitation(
                member_pb2.AcceptInvitationRequest(token=invitation)
            )
        )
        create_module(dev, org, "secrets")
        body = f"// {marker} in a comment\nmessage {marker}Message {{ string {marker}_field = 1; }}"
        push(dev, org, "secrets", "v1.0.0", {"s/v1/s.proto": proto("s.v1", body)})
        broken = f"message Broken {{ {marker}Missing field = 1; }}"
        failure(
            lambda: push(dev, org, "secrets", "v1.0.1", {"s/v1/b.proto": proto("s.v1", broken)})
        )
        request = module_pb2.GetVersionRequest(org=org, module="secrets", version="v1.0.0")
        assert marker in dev.modules.GetVersion(request).version.files[0].content
        bogus = "spoke_" + "Q" * 43
        failure(lambda: Client(admin.channel, bogus).users.GetCurrentUser(ME))
        pending = admin.members.CreateInvitation(
            member_pb2.CreateInvitationRequest(
                org=org, email="later@example.com", role=member_pb2.ROLE_VIEWER
            )
        ).token
        deadline = time.monotonic() + 10  # the mailer tries (and fails) to send it
        while "could not email invitation" not in captured.text:
            assert time.monotonic() < deadline, "the mailer never tried"
            time.sleep(0.05)
    text = captured.text
    assert text.count('"logger": "spoke_grpc.access"') >= 12
    secrets = (admin.token, dev.token, extra, invitee.token, invitation, pending, bogus, marker)
    for secret in secrets:
        assert secret and secret not in text, f"{secret[:12]}… appears in the logs"
