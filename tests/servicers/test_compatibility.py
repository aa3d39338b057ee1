"""CheckCompatibility and the REJECT breaking-change policy on push, through the real server.
(The rules themselves: tests/domain/test_compatibility.py.)"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb
from spoke.v1 import quota_pb2 as qpb

from tests.conftest import Users
from tests.harness import Client, failure
from tests.servicers.test_modules import create_module, create_org, push


def user_proto(tag: str, fields: str) -> dict[str, str]:
    """One file whose comment makes its build unique to this test (the cache is shared)."""
    return {
        "acme/users/v1/user.proto": f'syntax = "proto3";\n// {tag}\npackage acme.users.v1;\n'
        f"message User {{\n{fields}\n}}\n"
    }


V1 = "  string id = 1;\n  string email = 2;"
V2_COMPATIBLE = "  string id = 1;\n  string email = 2;\n  string name = 3;"
V2_BREAKING = "  string id = 1;\n  int64 email = 2;"


def check(client: Client, version: str, against: str, module: str = "users") -> Any:
    return client.modules.CheckCompatibility(
        pb.CheckCompatibilityRequest(
            org="acme", module=module, version=version, against_version=against
        )
    )


@pytest.fixture
def acme(users: Users) -> Client:
    owner = users.create("owner")
    create_org(owner, "acme")
    return owner


def test_check_compatibility_compares_two_versions(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex
    create_module(acme, "acme", "users")
    first = push(acme, "acme", "users", "1.0.0", user_proto(tag, V1))
    push(acme, "acme", "users", "1.1.0", user_proto(tag, V2_COMPATIBLE))
    push(acme, "acme", "users", "2.0.0", user_proto(tag, V2_BREAKING))
    compatible = check(acme, "1.1.0", "1.0.0")
    assert compatible.compatible and list(compatible.violations) == []
    breaking = check(acme, "v2.0.0", first.id)  # a version string or an id
    assert not breaking.compatible
    assert [(v.rule, v.path, v.message) for v in breaking.violations] == [
        (
            "FIELD_SAME_TYPE",
            "acme/users/v1/user.proto:acme.users.v1.User.email",
            "field 2 changed its type from string to int64",
        )
    ]
    # Backwards, 1.1.0 against 2.0.0: the type change, and field 3 is new, not deleted.
    assert [v.rule for v in check(acme, "1.1.0", "2.0.0").violations] == ["FIELD_SAME_TYPE"]
    # One compile job per call, recorded with both versions; cached builds still count.
    usage = acme.quotas.GetUsage(qpb.GetUsageRequest(org="acme")).usage
    assert usage.compile_jobs == 3
    assert db.execute(
        "SELECT kind, version, against_version, outcome FROM compile_jobs ORDER BY created_at"
    ).fetchall() == [
        ("compatibility", "1.1.0", "1.0.0", "compiled"),
        ("compatibility", "2.0.0", "1.0.0", "compiled"),
        ("compatibility", "1.1.0", "2.0.0", "cached"),
    ]


def test_check_compatibility_errors(acme: Client, users: Users) -> None:
    create_module(acme, "acme", "users")
    push(acme, "acme", "users", "1.0.0", user_proto(uuid.uuid4().hex, V1))
    missing = failure(lambda: check(acme, "1.0.0", "3.0.0"))
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert missing.message == "version 'users@3.0.0' not found"
    empty = failure(lambda: check(acme, "1.0.0", ""))
    assert set(empty.field_violations) == {"against_version"}
    bad = failure(lambda: check(acme, "1.0.0", "latest"))
    assert set(bad.field_violations) == {"against_version"}
    stranger = users.create()
    assert failure(lambda: check(stranger, "1.0.0", "1.0.0")).code is grpc.StatusCode.NOT_FOUND


def test_reject_policy_refuses_a_breaking_push_against_the_highest_version(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    tag = uuid.uuid4().hex
    create_module(acme, "acme", "users", breaking_change_policy=pb.BREAKING_CHANGE_POLICY_REJECT)
    two = "  string id = 1;\n  string email = 2;\n  string name = 3;"
    push(acme, "acme", "users", "2.0.0", user_proto(tag, two))
    # Pushed later but lower: still checked against 2.0.0, the highest. It adds a field.
    push(acme, "acme", "users", "1.5.0", user_proto(tag, two + "\n  string phone = 4;"))
    # Compared with 1.5.0 (the latest push) it drops `phone`; with 2.0.0, the highest, fine.
    push(acme, "acme", "users", "3.0.0-rc.1", user_proto(tag, two))
    push(acme, "acme", "users", "3.0.0", user_proto(tag, two))
    # Against 3.0.0 (above 3.0.0-rc.1): the type of `email` changes and `name` goes.
    breaking = "  string id = 1;\n  bytes email = 2;"
    error = failure(lambda: push(acme, "acme", "users", "4.0.0", user_proto(tag, breaking)))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    assert error.error_info.metadata["type"] == "BREAKING_CHANGE"
    assert "acme/users@4.0.0 breaks compatibility with 3.0.0" in error.message
    violations = error.detail(error_details_pb2.PreconditionFailure).violations
    assert [(v.type, v.subject) for v in violations] == [
        ("FIELD_SAME_TYPE", "acme/users/v1/user.proto:acme.users.v1.User.email"),
        ("FIELD_NO_DELETE", "acme/users/v1/user.proto:acme.users.v1.User.name"),
    ]
    assert violations[0].description == "field 2 changed its type from string to bytes"
    assert db.execute(
        "SELECT count(*) FROM module_versions WHERE version = '4.0.0'"
    ).fetchone() == (0,)
    # Deleting `name` with its number and name reserved is fine.
    reserved = '  string id = 1;\n  string email = 2;\n  reserved 3;\n  reserved "name";'
    push(acme, "acme", "users", "4.0.0", user_proto(tag, reserved))
    # A push's own check is no compile job.
    assert acme.quotas.GetUsage(qpb.GetUsageRequest(org="acme")).usage.compile_jobs == 0


def test_allow_policy_accepts_a_breaking_push(acme: Client) -> None:
    tag = uuid.uuid4().hex
    create_module(acme, "acme", "users")  # BREAKING_CHANGE_POLICY_ALLOW by default
    push(acme, "acme", "users", "1.0.0", user_proto(tag, V1))
    assert push(acme, "acme", "users", "2.0.0", user_proto(tag, V2_BREAKING)).version == "2.0.0"


def test_the_first_version_of_a_reject_module_has_nothing_to_break(acme: Client) -> None:
    create_module(acme, "acme", "users", breaking_change_policy=pb.BREAKING_CHANGE_POLICY_REJECT)
    assert push(acme, "acme", "users", "1.0.0", user_proto(uuid.uuid4().hex, V1)).version


def test_a_rejected_push_names_ten_breaking_changes_and_counts_the_rest(acme: Client) -> None:
    tag = uuid.uuid4().hex
    create_module(acme, "acme", "users", breaking_change_policy=pb.BREAKING_CHANGE_POLICY_REJECT)
    fields = "\n".join(f"  string field_{i:02d} = {i};" for i in range(1, 13))
    push(acme, "acme", "users", "1.0.0", user_proto(tag, fields))
    error = failure(lambda: push(acme, "acme", "users", "2.0.0", user_proto(tag, "")))
    violations = error.detail(error_details_pb2.PreconditionFailure).violations
    assert [v.type for v in violations] == ["FIELD_NO_DELETE"] * 10 + ["BREAKING_CHANGE"]
    assert violations[0].subject == "acme/users/v1/user.proto:acme.users.v1.User.field_01"
    assert violations[-1].description == "and 2 more; CheckCompatibility lists them all"
    assert "in 12 way(s) (first: FIELD_NO_DELETE" in error.message
