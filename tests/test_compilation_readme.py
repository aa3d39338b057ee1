"""The README's "## Compilation and compatibility" session, run as written against a real
server after the "## Modules" session it continues, and its output compared with the one the
README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from spoke.v1 import organization_pb2

from spoke_grpc.config import REPO_ROOT
from tests.harness import Client, ServerThread
from tests.test_modules_readme import session as modules_session

README = REPO_ROOT / "README.md"


def section() -> str:
    text = README.read_text()
    return text.split("\n## Compilation and compatibility\n", 1)[1].split("\n## ", 1)[0]


def blocks(kind: str) -> list[str]:
    """The section's fenced blocks of one kind ("" for plain ones), in order."""
    fenced = re.findall(r"^```(\w*)\n(.*?)^```$", section(), re.DOTALL | re.MULTILINE)
    return [text for found, text in fenced if found == kind]


def test_the_readme_session_prints_what_the_readme_shows(
    admin: Client, server: ServerThread, tmp_path: Path
) -> None:
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="acme-corp"))
    (tmp_path / ".spoke").mkdir()
    (tmp_path / ".spoke" / "bootstrap-token").write_text(admin.token or "")
    script = f"( {modules_session()} ) > /dev/null\n{blocks('sh')[0]}".replace(
        "127.0.0.1:50051", server.address
    ).replace("scripts/dependency_graph_dot.py", str(REPO_ROOT / "scripts/dependency_graph_dot.py"))
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    shown = blocks("")[0]
    assert result.stdout == shown
