"""The edge: undecodable bytes and bad text are INVALID_ARGUMENT naming the field, before any
database work, on every RPC."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import message_factory
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_status import rpc_status
from spoke.v1 import organization_pb2 as pb

from spoke_grpc.policy import POLICIES, services
from tests.conftest import Users
from tests.harness import Client, failure

ORG_SCOPED = sorted(path for path, policy in POLICIES.items() if policy.org_scoped)


def raw_call(channel: grpc.Channel, method: str, body: bytes, token: str | None) -> grpc.RpcError:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with pytest.raises(grpc.RpcError) as raised:
        call(body, metadata=metadata, timeout=10)
    return raised.value


def request_with_org(method: str, org: str) -> bytes:
    """The method's request message with ``org`` set, serialized."""
    service, name = method.strip("/").split("/")
    descriptor = next(s for s in services() if s.full_name == service)
    message_class = message_factory.GetMessageClass(descriptor.methods_by_name[name].input_type)
    body: bytes = message_class(org=org).SerializeToString()
    return body


@pytest.mark.parametrize("method", ORG_SCOPED)
def test_nul_in_org_is_invalid_argument_on_every_org_scoped_rpc(admin: Client, method: str) -> None:
    error = raw_call(admin.channel, method, request_with_org(method, "acme\x00corp"), admin.token)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert "org: must not contain NUL characters" in status.message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(bytes.fromhex("0a02fffe"), id="invalid-utf8-string"),
        pytest.param(b"\x0a\x05ab", id="truncated-length"),
        pytest.param(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", id="bad-varint"),
        pytest.param(bytes.fromhex("0a03eda080"), id="encoded-surrogate"),
    ],
)
def test_bytes_that_are_not_the_request_are_invalid_argument(admin: Client, body: bytes) -> None:
    error = raw_call(admin.channel, "/spoke.v1.OrganizationService/GetOrganization", body, None)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert "spoke.v1.GetOrganizationRequest" in status.message


def test_nul_in_settings_keys_and_values_names_the_entry(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    error = failure(
        lambda: owner.orgs.CreateOrganization(
            pb.CreateOrganizationRequest(name="nul-org", settings={"a\x00": "x", "b": "y\x00"})
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {'settings["a\\u0000"] (key)', 'settings["b"]'}
    assert db.execute("SELECT count(*) FROM organizations").fetchone() == (0,)
    owner.orgs.CreateOrganization(pb.CreateOrganizationRequest(name="nul-org"))
    update = failure(
        lambda: owner.orgs.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                org="nul-org",
                organization=pb.Organization(settings={"k": "v\x00"}),
                update_mask=FieldMask(paths=["settings"]),
            )
        )
    )
    assert update.field_violations == {
        'organization.settings["k"]': "must not contain NUL characters"
    }


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("abc\x00def", id="nul"),
        pytest.param("eyJsIjoib3JnYW5pemF0aW9ucyIsImsiOlsiXHUwMDAwIl19", id="nul-in-key-json"),
        pytest.param("eyJsIjoib3JnYW5pemF0aW9ucyIsImsiOlsiXHVkODAwIl19", id="surrogate-in-key"),
    ],
)
def test_bad_page_tokens_are_invalid_argument(admin: Client, token: str) -> None:
    error = failure(
        lambda: admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_token=token))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"page_token"}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        pytest.param("display_name", "evil\u202etxt", "bidirectional", id="bidi-override"),
        pytest.param("display_name", "bell\x07", "control", id="control"),
        pytest.param("description", "c1\x85", "control", id="c1-control"),
    ],
)
def test_user_visible_text_follows_one_rule(
    users: Users, field: str, value: str, fragment: str
) -> None:
    owner = users.create()
    error = failure(
        lambda: owner.orgs.CreateOrganization(
            pb.CreateOrganizationRequest(name="texty", **{field: value})
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.field_violations[field]


@pytest.mark.parametrize(
    ("entries", "bad"),
    [
        pytest.param({"tab\tkey": "v"}, 'settings["tab\\tkey"] (key)', id="control-in-key"),
        pytest.param({"k": "bell\x07"}, 'settings["k"]', id="control-in-value"),
        pytest.param({"k": "rtl\u202e"}, 'settings["k"]', id="bidi-in-value"),
    ],
)
def test_settings_follow_the_text_rule(users: Users, entries: dict[str, str], bad: str) -> None:
    owner = users.create()
    error = failure(
        lambda: owner.orgs.CreateOrganization(
            pb.CreateOrganizationRequest(name="settled", settings=entries)
        )
    )
    assert set(error.field_violations) == {bad}


def test_only_types_that_can_hold_text_are_walked() -> None:
    """Decided once per request type: no string field anywhere, nothing to walk."""
    from spoke.v1 import module_pb2, organization_pb2, user_pb2

    from spoke_grpc.wire import carries_text

    assert not carries_text(user_pb2.GetCurrentUserRequest.DESCRIPTOR)
    assert carries_text(module_pb2.GetVersionRequest.DESCRIPTOR)
    # A string only inside a nested message or a map counts.
    assert carries_text(organization_pb2.UpdateOrganizationRequest.DESCRIPTOR)
    assert carries_text(module_pb2.CreateVersionRequest.DESCRIPTOR)
