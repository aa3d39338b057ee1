from __future__ import annotations

import hashlib
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import user_pb2

from tests import harness
from tests.conftest import Users
from tests.harness import Client, all_pages, failure
from tests.overlap import released_together

ME = user_pb2.GetCurrentUserRequest()


def test_get_current_user_returns_the_token_owner(users: Users) -> None:
    alice = users.create("alice")
    me = alice.users.GetCurrentUser(ME).user
    assert me.id == alice.user_id
    assert me.email == alice.email
    assert me.display_name == "alice1"  # defaults to the email's local part
    assert not me.is_admin


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param([], id="no-metadata"),
        pytest.param([("authorization", "Bearer spoke_not-a-real-token")], id="unknown-token"),
        pytest.param([("authorization", "Bearer nope")], id="wrong-prefix"),
        pytest.param([("authorization", "Basic dXNlcjpwYXNz")], id="basic-scheme"),
        pytest.param([("authorization", "Bearer ")], id="empty-bearer"),
        pytest.param([("authorization", "Bearer spoke_" + "x" * 5000)], id="huge-token"),
    ],
)
def test_bad_or_missing_tokens_are_unauthenticated(
    admin: Client, metadata: list[tuple[str, str]]
) -> None:
    from spoke.v1 import user_pb2_grpc

    stub = user_pb2_grpc.UserServiceStub(admin.channel)
    error = failure(lambda: stub.GetCurrentUser(ME, metadata=metadata, timeout=10))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    assert error.error_info.reason == "UNAUTHENTICATED"
    assert "token" in error.message or "authorization" in error.message


def test_create_user_needs_a_platform_admin(users: Users) -> None:
    bob = users.create("bob")
    error = failure(
        lambda: bob.users.CreateUser(user_pb2.CreateUserRequest(email="eve@example.com"))
    )
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert error.error_info.reason == "PERMISSION_DENIED"


def test_create_user_returns_a_working_token(admin: Client, db: psycopg.Connection[Any]) -> None:
    response = admin.users.CreateUser(
        user_pb2.CreateUserRequest(email="Carol@Example.com", display_name="Carol", is_admin=True)
    )
    assert response.token.startswith("spoke_")
    assert len(response.token) >= len("spoke_") + 43  # 32 random bytes, base64
    carol = Client(admin.channel, response.token)
    me = carol.users.GetCurrentUser(ME).user
    # Stored normalised (the domain in lower case), as email-validator gives it.
    assert response.user.email == "Carol@example.com"
    assert (me.email, me.display_name, me.is_admin) == ("Carol@example.com", "Carol", True)
    # Only the hash is stored: the token is nowhere in the database, the hash is.
    everything = harness.database_text(db)
    assert response.token not in everything
    assert response.token[len("spoke_") :] not in everything
    assert hashlib.sha256(response.token.encode()).hexdigest() in everything
    audit = db.execute(
        "SELECT actor_id::text, method, outcome FROM audit_events WHERE target = %s",
        [f"users/{response.user.id}"],
    ).fetchall()
    assert audit == [(admin.user_id, "/spoke.v1.UserService/CreateUser", "OK")]


def test_duplicate_email_is_already_exists_case_insensitively(admin: Client) -> None:
    admin.users.CreateUser(user_pb2.CreateUserRequest(email="dup@example.com"))
    error = failure(
        lambda: admin.users.CreateUser(user_pb2.CreateUserRequest(email="DUP@example.COM"))
    )
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    assert error.error_info.reason == "ALREADY_EXISTS"


@pytest.mark.parametrize(
    ("email", "display_name", "bad_fields"),
    [
        pytest.param("", "", {"email"}, id="empty-email"),
        pytest.param("no-at-sign", "", {"email"}, id="no-at"),
        pytest.param("a@b", "", {"email"}, id="no-dot-in-domain"),
        pytest.param("a b@example.com", "", {"email"}, id="space"),
        pytest.param("x" * 250 + "@example.com", "", {"email"}, id="too-long"),
        pytest.param("a,b@corp.example.com", "", {"email"}, id="comma-list"),
        pytest.param("a;b@corp.example.com", "", {"email"}, id="semicolon-list"),
        pytest.param("a@corp.example.com, b@corp.example.com", "", {"email"}, id="two"),
        pytest.param('"A" <a@corp.example.com>', "", {"email"}, id="display-name"),
        pytest.param('"a,b"@corp.example.com', "", {"email"}, id="quoted-local-part"),
        pytest.param(" a@corp.example.com ", "", {"email"}, id="surrounding-spaces"),
        pytest.param("a\x00@corp.example.com", "", {"email"}, id="nul"),
        pytest.param("a@corp.example.com\r\nBcc: x@example.com", "", {"email"}, id="header"),
        pytest.param("a@[192.0.2.1]", "", {"email"}, id="ip-literal"),
        pytest.param("a@spoke.localhost", "", {"email"}, id="localhost"),
        pytest.param("a@corp.test", "", {"email"}, id="special-use"),
        pytest.param("ok@example.com", "n" * 201, {"display_name"}, id="long-display-name"),
        pytest.param("", "n" * 201, {"email", "display_name"}, id="both-bad"),
    ],
)
def test_create_user_rejects_bad_fields(
    admin: Client, db: psycopg.Connection[Any], email: str, display_name: str, bad_fields: set[str]
) -> None:
    before = db.execute("SELECT count(*) FROM users").fetchone()
    error = failure(
        lambda: admin.users.CreateUser(
            user_pb2.CreateUserRequest(email=email, display_name=display_name)
        )
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == bad_fields
    assert db.execute("SELECT count(*) FROM users").fetchone() == before


def test_an_address_is_one_account_in_any_of_its_spellings(admin: Client) -> None:
    made = admin.users.CreateUser(user_pb2.CreateUserRequest(email="Ana@XN--MNCHEN-3YA.de")).user
    assert made.email == "Ana@münchen.de"  # the library's normalised form
    for twin in ("ana@münchen.de", "ANA@MÜNCHEN.DE", "ana@xn--mnchen-3ya.de"):
        error = failure(
            lambda twin=twin: admin.users.CreateUser(user_pb2.CreateUserRequest(email=twin))
        )
        assert error.code is grpc.StatusCode.ALREADY_EXISTS


def test_the_violation_says_what_is_wrong_with_the_address(admin: Client) -> None:
    error = failure(
        lambda: admin.users.CreateUser(user_pb2.CreateUserRequest(email="a,b@corp.example.com"))
    )
    description = error.field_violations["email"]
    assert "one email address" in description and "','" in description


def test_api_token_lifecycle(users: Users) -> None:
    dana = users.create("dana")
    created = dana.users.CreateApiToken(user_pb2.CreateApiTokenRequest(description="ci"))
    assert created.token.startswith("spoke_")
    assert created.api_token.prefix == created.token[:10]
    second = Client(dana.channel, created.token)
    assert second.users.GetCurrentUser(ME).user.id == dana.user_id

    listing = dana.users.ListApiTokens(user_pb2.ListApiTokensRequest())
    listed = listing.api_tokens
    assert [t.description for t in listed] == ["ci", "initial token"]  # newest first
    # A listing never carries a token: no such field, and not in any field's bytes.
    assert "token" not in user_pb2.ApiToken.DESCRIPTOR.fields_by_name
    assert created.token[len("spoke_") :].encode() not in listing.SerializeToString()

    dana.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=created.api_token.id))
    error = failure(lambda: second.users.GetCurrentUser(ME))
    assert error.code is grpc.StatusCode.UNAUTHENTICATED
    remaining = dana.users.ListApiTokens(user_pb2.ListApiTokensRequest()).api_tokens
    assert [t.description for t in remaining] == ["initial token"]

    again = failure(
        lambda: dana.users.RevokeApiToken(
            user_pb2.RevokeApiTokenRequest(api_token_id=created.api_token.id)
        )
    )
    assert again.code is grpc.StatusCode.NOT_FOUND


def test_revoking_someone_elses_token_is_not_found(users: Users) -> None:
    erin, frank = users.create("erin"), users.create("frank")
    token = erin.users.CreateApiToken(user_pb2.CreateApiTokenRequest()).api_token
    error = failure(
        lambda: frank.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=token.id))
    )
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert Client(erin.channel, erin.token).users.GetCurrentUser(ME).user.id == erin.user_id


@pytest.mark.parametrize("token_id", ["", "not-a-uuid", "1" * 36])
def test_revoke_validates_the_id(users: Users, token_id: str) -> None:
    gina = users.create("gina")
    error = failure(
        lambda: gina.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=token_id))
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"api_token_id"}


def test_list_api_tokens_pages_through_everything(users: Users) -> None:
    hank = users.create("hank")
    for i in range(7):
        hank.users.CreateApiToken(user_pb2.CreateApiTokenRequest(description=f"t{i}"))
    pages = all_pages(
        lambda token: hank.users.ListApiTokens(
            user_pb2.ListApiTokensRequest(page_size=3, page_token=token)
        ),
        "api_tokens",
    )
    assert [len(page) for page in pages] == [3, 3, 2]
    seen = [t.description for page in pages for t in page]
    assert seen == [f"t{i}" for i in reversed(range(7))] + ["initial token"]
    assert len(set(seen)) == 8


# Per-user cap on live API tokens (SPOKE_MAX_TOKENS_PER_USER, default 50).
TOKEN_CAP = 50


def live_tokens(db: psycopg.Connection[Any], user: Client) -> int:
    row = db.execute(
        "SELECT count(*) FROM api_tokens WHERE user_id = %s AND revoked_at IS NULL",
        [user.user_id],
    ).fetchone()
    assert row is not None
    return int(row[0])


def new_token(user: Client, description: str = "") -> user_pb2.CreateApiTokenResponse:
    response: user_pb2.CreateApiTokenResponse = user.users.CreateApiToken(
        user_pb2.CreateApiTokenRequest(description=description)
    )
    return response


def test_a_user_holds_at_most_fifty_live_tokens_and_revoking_frees_a_place(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    ivan = users.create("ivan")
    made = [new_token(ivan, f"t{i}") for i in range(TOKEN_CAP - 1)]  # and the initial token
    assert live_tokens(db, ivan) == TOKEN_CAP
    error = failure(lambda: new_token(ivan, "one too many"))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.error_info.reason == "RESOURCE_QUOTA_EXCEEDED"
    assert dict(error.error_info.metadata) == {
        "quota": "api_tokens_per_user",
        "limit": str(TOKEN_CAP),
        "current": str(TOKEN_CAP),
    }
    violation = error.detail(error_details_pb2.QuotaFailure).violations[0]
    assert violation.subject == f"users/{ivan.user_id}"
    assert f"{TOKEN_CAP} of {TOKEN_CAP} used" in error.message
    assert "revoke a token you no longer use" in error.message
    assert "SPOKE_MAX_TOKENS_PER_USER" in error.message
    assert live_tokens(db, ivan) == TOKEN_CAP
    # Live tokens: a revoked one frees its place.
    ivan.users.RevokeApiToken(user_pb2.RevokeApiTokenRequest(api_token_id=made[0].api_token.id))
    new_token(ivan, "replacement")
    assert failure(lambda: new_token(ivan)).code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Another user is not affected.
    new_token(users.create("judy"))


def test_platform_admins_may_hold_more_tokens(admin: Client, db: psycopg.Connection[Any]) -> None:
    for i in range(TOKEN_CAP + 1):
        new_token(admin, f"admin-{i}")
    assert live_tokens(db, admin) == TOKEN_CAP + 2


def test_two_tokens_at_once_one_short_of_the_cap_make_one(
    users: Users, db: psycopg.Connection[Any], database_url: str
) -> None:
    kim = users.create("kim")
    for i in range(TOKEN_CAP - 2):
        new_token(kim, f"t{i}")
    assert live_tokens(db, kim) == TOKEN_CAP - 1
    codes = released_together(
        database_url,
        "SELECT 1 FROM users WHERE id = %s FOR UPDATE",
        [kim.user_id],
        [lambda: new_token(kim, "a"), lambda: new_token(kim, "b")],
    )
    assert sorted(codes) == ["OK", "RESOURCE_EXHAUSTED"]
    assert live_tokens(db, kim) == TOKEN_CAP
