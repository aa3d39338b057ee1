"""Page tokens are authenticated: bound to their list and to whose list it is, refused when
forged or edited, and accepted by every server process on the same database."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest
from spoke.v1 import organization_pb2 as pb
from spoke.v1 import user_pb2

from spoke_grpc.config import Settings
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure


def first_token(client: Client) -> str:
    response = client.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_size=1))
    token: str = response.next_page_token
    assert token
    return token


def refused(client: Client, token: str) -> bool:
    error = failure(
        lambda: client.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_token=token))
    )
    return error.code is grpc.StatusCode.INVALID_ARGUMENT and set(error.field_violations) == {
        "page_token"
    }


@pytest.fixture
def two_orgs(admin: Client) -> None:
    for name in ("alpha-org", "beta-org"):
        admin.orgs.CreateOrganization(pb.CreateOrganizationRequest(name=name))


@pytest.mark.usefixtures("two_orgs")
def test_a_forged_token_is_refused(admin: Client) -> None:
    payload = json.dumps({"l": "organizations", "k": ["alpha-org"]}, separators=(",", ":"))
    forged = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
    assert refused(admin, forged)
    assert refused(admin, forged + ".AAAAAAAAAAAAAAAAAAAAAA")


@pytest.mark.usefixtures("two_orgs")
def test_an_edited_token_is_refused(admin: Client) -> None:
    token = first_token(admin)
    payload, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["k"] = [""]  # from the start: would show every org again
    edited = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    assert refused(admin, f"{edited}.{mac}")
    assert admin.orgs.ListOrganizations(pb.ListOrganizationsRequest(page_token=token)).organizations


@pytest.mark.usefixtures("two_orgs")
def test_a_token_works_only_for_the_caller_whose_list_it_is(admin: Client, users: Users) -> None:
    member = users.create()
    for name in ("gamma-org", "delta-org"):
        member.orgs.CreateOrganization(pb.CreateOrganizationRequest(name=name))
    # The platform admin's list (every org) and a member's list are different lists.
    assert refused(member, first_token(admin))
    assert refused(admin, first_token(member))
    other = users.create()
    assert refused(other, first_token(member))
    tokens = member.users.ListApiTokens(user_pb2.ListApiTokensRequest(page_size=1))
    member.users.CreateApiToken(user_pb2.CreateApiTokenRequest(description="second"))
    listed = member.users.ListApiTokens(user_pb2.ListApiTokensRequest(page_size=1))
    assert listed.next_page_token and not tokens.next_page_token
    error = failure(
        lambda: other.users.ListApiTokens(
            user_pb2.ListApiTokensRequest(page_token=listed.next_page_token)
        )
    )
    assert set(error.field_violations) == {"page_token"}


@pytest.fixture
def second_process(database_url: str) -> Iterator[ServerThread]:
    """Another server on the same database, as a second replica would be."""
    thread = ServerThread(Settings(), database_url)
    yield thread
    thread.stop()


@pytest.mark.usefixtures("two_orgs")
def test_every_replica_accepts_every_replicas_tokens(
    admin: Client, second_process: ServerThread
) -> None:
    token = first_token(admin)
    with grpc.insecure_channel(second_process.address) as channel:
        replica = Client(channel, admin.token)
        page = replica.orgs.ListOrganizations(
            pb.ListOrganizationsRequest(page_size=1, page_token=token)
        )
    assert [o.name for o in page.organizations] == ["beta-org"]
