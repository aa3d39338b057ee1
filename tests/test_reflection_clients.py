"""Server reflection as real command-line clients use it, on each protocol version.

grpcurl 1.8.6 (the dev dependency) speaks only ``grpc.reflection.v1alpha``: it never asks
v1 (tests/test_grpcurl.py covers it). ``buf curl`` speaks both and can be held to one with
``--reflect-protocol``, so it stands in for the tools that only speak v1: with either
version it lists the services and makes a call whose schema came from reflection alone.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from spoke_grpc.config import REPO_ROOT
from tests.harness import Client, ServerThread
from tests.test_grpcurl import SPOKE_SERVICES

BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"

pytestmark = [
    pytest.mark.skipif(
        not BUF.exists(), reason="buf is not installed: make node_modules/.bin/buf (needs Node.js)"
    ),
    pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"]),
]


def buf_curl(server: ServerThread, protocol: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "--reflect-protocol",
            protocol,
            "--timeout",
            "20s",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_lists_every_service(server: ServerThread, protocol: str) -> None:
    result = buf_curl(server, protocol, "--list-services", f"http://{server.address}")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert listed >= SPOKE_SERVICES | {"grpc.health.v1.Health"}
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= (
        listed
    )


def test_calls_a_method_described_by_reflection(
    admin: Client, server: ServerThread, protocol: str
) -> None:
    name = f"refl-{protocol.replace('grpc-', '')}"
    result = buf_curl(
        server,
        protocol,
        "--header",
        f"authorization: Bearer {admin.token}",
        "--data",
        json.dumps({"name": name}),
        f"http://{server.address}/spoke.v1.OrganizationService/CreateOrganization",
    )
    assert result.returncode == 0, result.stderr
    organization = json.loads(result.stdout)["organization"]
    assert organization["name"] == name
    assert organization["ownerId"] == admin.user_id
