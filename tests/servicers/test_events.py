"""EventService.WatchEvents (issue 17): live events through the real server, to members
(every type) and to outsiders (a public module's versions only), filtered by type,
resumed from an event id, and a client that stops reading cut off with a clear status."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2
from spoke.v1 import event_pb2, module_pb2, organization_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import Settings
from tests import harness
from tests.conftest import Users
from tests.harness import Client, ServerThread
from tests.servicers.test_modules import create_module, create_org, proto, push


@contextlib.contextmanager
def watching(client: Client, org: str, **fields: Any) -> Iterator[Any]:
    """An open WatchEvents stream, accepted by the server (its headers arrived)."""
    stream = client.events.WatchEvents(event_pb2.WatchEventsRequest(org=org, **fields))
    try:
        stream.initial_metadata()
        yield stream
    finally:
        stream.cancel()


def next_event(stream: Any) -> event_pb2.Event:
    response: event_pb2.WatchEventsResponse = next(stream)
    return response.event


def describe(client: Client, org: str, text: str) -> None:
    client.orgs.UpdateOrganization(
        organization_pb2.UpdateOrganizationRequest(
            org=org,
            organization=organization_pb2.Organization(description=text),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        )
    )


def test_a_member_receives_the_orgs_events_live_filtered_by_type(
    admin: Client, users: Users
) -> None:
    owner = users.create("owner")
    create_org(owner, "live")
    with (
        watching(owner, "live") as everything,
        watching(owner, "live", types=["version.created"]) as versions,
    ):
        create_module(owner, "live", "shapes")
        push(owner, "live", "shapes", "v1.0.0", {"a.proto": proto("live.v1")})
        first, second = next_event(everything), next_event(everything)
        assert (first.type, second.type) == ("module.created", "version.created")
        assert first.org == "live" and first.data["module"] == "shapes"
        only = next_event(versions)
        assert only.id == second.id and only.data["version"] == "v1.0.0"


def test_resuming_from_an_event_id_sends_what_followed(admin: Client, users: Users) -> None:
    owner = users.create("owner")
    create_org(owner, "resume")
    with watching(owner, "resume") as stream:
        describe(owner, "resume", "one")
        seen = next_event(stream)
    describe(owner, "resume", "two")
    describe(owner, "resume", "three")
    with watching(owner, "resume", after_event_id=seen.id) as stream:
        later = [next_event(stream), next_event(stream)]
    assert [e.type for e in later] == ["organization.updated"] * 2
    assert len({seen.id, *(e.id for e in later)}) == 3


def test_outsiders_see_only_a_public_modules_versions(
    admin: Client, users: Users, anonymous: Client
) -> None:
    owner, stranger = users.create("owner"), users.create("stranger")
    create_org(owner, "pub")
    create_module(owner, "pub", "open", is_public=True)
    create_module(owner, "pub", "secret")
    for caller in (stranger, anonymous):
        with watching(caller, "pub") as stream:
            describe(owner, "pub", "not for outsiders")
            push(owner, "pub", "secret", "v1.0.0", {"s.proto": proto("secret.v1")})
            push(owner, "pub", "open", "v1.0.0", {"o.proto": proto("open.v1")})
            got = next_event(stream)
        assert (got.type, got.data["module"]) == ("version.created", "open")
        for name in ("secret", "open"):
            owner.modules.DeleteModule(module_pb2.DeleteModuleRequest(org="pub", module=name))
        create_module(owner, "pub", "open", is_public=True)
        create_module(owner, "pub", "secret")


def test_an_org_without_public_modules_is_not_found_for_outsiders(
    admin: Client, users: Users, anonymous: Client
) -> None:
    owner, stranger = users.create("owner"), users.create("stranger")
    create_org(owner, "closed")
    for caller in (stranger, anonymous):
        stream = caller.events.WatchEvents(event_pb2.WatchEventsRequest(org="closed"))
        with pytest.raises(grpc.RpcError) as raised:
            next(stream)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_bad_requests_are_refused_with_details(admin: Client) -> None:
    create_org(admin, "badreq")
    for fields, field in (
        ({"types": ["nope.nope"]}, "types"),
        ({"after_event_id": "x"}, "after_event_id"),
        ({"after_event_id": "8f1c5a52-4f7b-4e0e-9d8b-5d7c8d0f8a11"}, None),
    ):
        stream = admin.events.WatchEvents(event_pb2.WatchEventsRequest(org="badreq", **fields))
        failure = harness.failure(lambda s=stream: next(s))
        if field is None:
            assert failure.code is grpc.StatusCode.NOT_FOUND
        else:
            assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
            assert field in failure.field_violations


# --- a client that stops reading -----------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Client, str]]:
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    settings = Settings(
        pool_min_size=1, pool_max_size=4, anonymous_rate_limit=0, watch_send_timeout_seconds=0.5
    )
    try:
        server = ServerThread(settings, url)
        try:
            token = server.run(
                ensure_bootstrap_admin(server.server.pool, tmp_path_factory.mktemp("w") / "t")
            )
            assert token is not None
            with grpc.insecure_channel(server.address) as channel:
                yield server, Client(channel, token.read_text().strip()), url
        finally:
            server.stop()
    finally:
        harness.drop_database(pg_admin_url, url)


def test_a_client_that_stops_reading_is_cut_off_with_a_clear_status(
    impatient: tuple[ServerThread, Client, str],
) -> None:
    server, admin, url = impatient
    cut = threading.Event()
    server.server.events.cut_off = cut.set
    create_org(admin, "flood")
    with watching(admin, "flood") as stream:
        describe(admin, "flood", "first")
        first = next_event(stream)
    # 2000 events of 8 KiB: far more than the HTTP/2 windows hold.
    with psycopg.connect(url) as conn:
        conn.execute(
            "WITH o AS (SELECT id FROM organizations WHERE name = 'flood'),"
            " c AS (UPDATE org_event_counters SET last_seq = last_seq + 2000"
            "       WHERE org_id = (SELECT id FROM o) RETURNING last_seq)"
            " INSERT INTO events (org_id, seq, type, data)"
            " SELECT (SELECT id FROM o), (SELECT last_seq FROM c) - 2000 + n,"
            " 'organization.updated', jsonb_build_object('pad', repeat('x', 8192))"
            " FROM generate_series(1, 2000) n"
        )
    stream = admin.events.WatchEvents(
        event_pb2.WatchEventsRequest(org="flood", after_event_id=first.id)
    )
    # Not reading: the server's sends block, then it gives up on this client.
    assert cut.wait(30), "the server never cut the stream off"
    # What was sent before is still there to read; then the status.
    received = 0
    with pytest.raises(grpc.RpcError):
        for _ in stream:
            received += 1
    assert 0 < received < 2000
    assert stream.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    error = harness.failure_of(stream)
    assert error.error_info.reason == "SLOW_CONSUMER"
    assert "after_event_id" in (stream.details() or "")
