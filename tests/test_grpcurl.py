"""The real grpcurl binary against the server, with no proto files: everything it knows comes
from server reflection, the way a person debugging the service uses it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import psycopg
from spoke.v1 import organization_pb2

from tests.harness import Client, ServerThread

GRPCURL = Path(sys.executable).parent / "grpcurl"
CREATE_ORG = "spoke.v1.OrganizationService/CreateOrganization"
SPOKE_SERVICES = {
    "spoke.v1.UserService",
    "spoke.v1.OrganizationService",
    "spoke.v1.MemberService",
    "spoke.v1.QuotaService",
    "spoke.v1.ModuleService",
}
POLICY_OPTION = re.compile(r"option \(\.?spoke\.v1\.policy\) = \{[^}]*access:\s*ACCESS_")
DETAIL_LINE = re.compile(r"^\s*\d+\)\s+(\{.*\})\s*$")


def invoke(
    server: ServerThread, method: str, body: dict[str, Any], token: str | None = None
) -> subprocess.CompletedProcess[str]:
    headers = ["-H", f"authorization: Bearer {token}"] if token else []
    return subprocess.run(
        [
            str(GRPCURL),
            "-plaintext",
            "-max-time",
            "20",
            *headers,
            "-d",
            json.dumps(body),
            server.address,
            method,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def error_details(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """The google.rpc details grpcurl prints for a failed call, by type name."""
    details: dict[str, dict[str, Any]] = {}
    for line in result.stderr.splitlines():
        match = DETAIL_LINE.match(line)
        if match:
            detail = json.loads(match.group(1))
            details[detail["@type"].rsplit("/", 1)[-1]] = detail
    return details


def assert_failed_with(result: subprocess.CompletedProcess[str], code: grpc.StatusCode) -> None:
    """grpcurl exits with 64 + the status code and prints ``Code: <CamelCase>``."""
    camel = "".join(part.capitalize() for part in code.name.split("_"))
    assert result.returncode == 64 + code.value[0], (result.returncode, result.stderr)
    assert f"Code: {camel}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert "Code: Unknown" not in result.stderr


def run_grpcurl(server: ServerThread, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "20", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_list_shows_every_service(server: ServerThread) -> None:
    result = run_grpcurl(server, "list")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert listed >= SPOKE_SERVICES | {"grpc.health.v1.Health"}
    assert any(name.startswith("grpc.reflection.") for name in listed)


def test_list_service_shows_its_methods(server: ServerThread) -> None:
    result = run_grpcurl(server, "list", "spoke.v1.OrganizationService")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == {
        f"spoke.v1.OrganizationService.{name}"
        for name in (
            "CreateOrganization",
            "GetOrganization",
            "ListOrganizations",
            "UpdateOrganization",
            "DeleteOrganization",
            "TransferOwnership",
        )
    }


def test_describe_service_shows_method_policies(server: ServerThread) -> None:
    result = run_grpcurl(server, "describe", "spoke.v1.OrganizationService")
    assert result.returncode == 0, result.stderr
    assert "rpc CreateOrganization ( .spoke.v1.CreateOrganizationRequest )" in result.stdout
    methods = organization_pb2.DESCRIPTOR.services_by_name["OrganizationService"].methods
    assert len(POLICY_OPTION.findall(result.stdout)) == len(methods), result.stdout


def test_describe_method_shows_its_policy(server: ServerThread) -> None:
    result = run_grpcurl(server, "describe", "spoke.v1.OrganizationService.CreateOrganization")
    assert result.returncode == 0, result.stderr
    assert "spoke.v1.OrganizationService.CreateOrganization is a method" in result.stdout
    assert POLICY_OPTION.search(result.stdout), result.stdout


def test_describe_request_message(server: ServerThread) -> None:
    result = run_grpcurl(server, "describe", "spoke.v1.CreateOrganizationRequest")
    assert result.returncode == 0, result.stderr
    assert "message CreateOrganizationRequest" in result.stdout
    assert re.search(r"string name = 1;", result.stdout)


def test_create_organization_returns_json(
    admin: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    result = invoke(server, CREATE_ORG, {"name": "acme-corp"}, admin.token)
    assert result.returncode == 0, result.stderr
    org = json.loads(result.stdout)["organization"]
    assert org["name"] == "acme-corp"
    assert org["display_name"] == "acme-corp"
    assert org["owner_id"] == admin.user_id
    assert org["quota_tier"] == "QUOTA_TIER_SMALL"
    assert org["status"] == "ORGANIZATION_STATUS_ACTIVE"
    assert re.fullmatch(r"[0-9a-f-]{36}", org["id"])
    assert org["create_time"].endswith("Z")
    row = db.execute("SELECT name FROM organizations WHERE id = %s", [org["id"]]).fetchone()
    assert row == ("acme-corp",)


def test_update_organization_with_a_field_mask_as_the_readme_shows(
    admin: Client, server: ServerThread
) -> None:
    assert invoke(server, CREATE_ORG, {"name": "masked-corp"}, admin.token).returncode == 0
    request = {
        "org": "masked-corp",
        "organization": {"description": "Rockets", "display_name": "ignored"},
        "update_mask": {"paths": ["description"]},
    }
    result = invoke(server, "spoke.v1.OrganizationService/UpdateOrganization", request, admin.token)
    assert result.returncode == 0, result.stderr
    org = json.loads(result.stdout)["organization"]
    assert (org["description"], org["display_name"]) == ("Rockets", "masked-corp")


def test_create_organization_twice_is_already_exists(admin: Client, server: ServerThread) -> None:
    assert invoke(server, CREATE_ORG, {"name": "twice-corp"}, admin.token).returncode == 0
    result = invoke(server, CREATE_ORG, {"name": "twice-corp"}, admin.token)
    assert_failed_with(result, grpc.StatusCode.ALREADY_EXISTS)
    assert error_details(result)["google.rpc.ErrorInfo"]["reason"] == "ALREADY_EXISTS"


def test_invalid_name_shows_bad_request_field_violation(
    admin: Client, server: ServerThread
) -> None:
    result = invoke(server, CREATE_ORG, {"name": "Bad_Name"}, admin.token)
    assert_failed_with(result, grpc.StatusCode.INVALID_ARGUMENT)
    details = error_details(result)
    assert details["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    violations = details["google.rpc.BadRequest"]["field_violations"]
    assert [v["field"] for v in violations] == ["name"]
    assert violations[0]["description"]


def test_without_token_is_unauthenticated(admin: Client, server: ServerThread) -> None:
    result = invoke(server, CREATE_ORG, {"name": "anon-corp"})
    assert_failed_with(result, grpc.StatusCode.UNAUTHENTICATED)
    assert error_details(result)["google.rpc.ErrorInfo"]["reason"] == "UNAUTHENTICATED"


def test_bad_token_is_unauthenticated(admin: Client, server: ServerThread) -> None:
    result = invoke(server, CREATE_ORG, {"name": "anon-corp"}, "spoke_not-a-real-token")
    assert_failed_with(result, grpc.StatusCode.UNAUTHENTICATED)


def test_health_check_works_anonymously(server: ServerThread) -> None:
    result = invoke(server, "grpc.health.v1.Health/Check", {})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}
    service = invoke(server, "grpc.health.v1.Health/Check", {"service": "spoke.v1.UserService"})
    assert service.returncode == 0, service.stderr
    assert json.loads(service.stdout) == {"status": "SERVING"}
