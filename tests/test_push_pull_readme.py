"""The README's "### Push and pull" walkthrough, run as written against a real server, and
its output compared with the one the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from spoke.v1 import organization_pb2

from spoke_grpc.config import REPO_ROOT
from tests.harness import Client, ServerThread

README = REPO_ROOT / "README.md"


def walkthrough() -> tuple[str, str]:
    """The section's sh block and the output block after it."""
    section = README.read_text().split("\n### Push and pull\n", 1)[1].split("\n## ", 1)[0]
    script = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    output = re.search(r"\nprints\n\n```\n(.*?)```", section, re.DOTALL)
    assert script and output, "the Push and pull section lost its script or its output"
    return script.group(1), output.group(1)


def test_the_push_and_pull_walkthrough_runs_as_written(
    admin: Client, server: ServerThread, tmp_path: Path
) -> None:
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="acme-corp"))
    (tmp_path / ".spoke").mkdir()
    (tmp_path / ".spoke" / "bootstrap-token").write_text(admin.token or "")
    script, expected = walkthrough()
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    environment.pop("SPOKE_ADDRESS", None)
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("127.0.0.1:50051", server.address)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected.splitlines()
    # What was pulled is what was pushed.
    for path in ("acme/shipping/v1/parcel.proto", "acme/units/v1/weight.proto"):
        module = path.split("/")[1]
        assert (tmp_path / "vendor" / path).read_text() == (tmp_path / module / path).read_text()
