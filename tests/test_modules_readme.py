"""The README's "## Modules" grpcurl session, run as written against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from spoke.v1 import organization_pb2

from spoke_grpc.config import REPO_ROOT
from tests.harness import Client, ServerThread

README = REPO_ROOT / "README.md"


def session() -> str:
    text = README.read_text()
    section = text.split("\n## Modules\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "the Modules section has no sh block"
    return match.group(1)


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    documents, position = [], 0
    while position < len(text):
        if text[position].isspace():
            position += 1
            continue
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
    return documents


def test_the_readme_session_runs_as_written(
    admin: Client, server: ServerThread, tmp_path: Path
) -> None:
    admin.orgs.CreateOrganization(organization_pb2.CreateOrganizationRequest(name="acme-corp"))
    (tmp_path / ".spoke").mkdir()
    (tmp_path / ".spoke" / "bootstrap-token").write_text(admin.token or "")
    script = session().replace("127.0.0.1:50051", server.address)
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
    outputs = json_documents(result.stdout)
    assert len(outputs) == 7
    public, billing, versions = outputs[-3:]
    assert [(m["org_name"], m["name"]) for m in public["modules"]] == [("acme-corp", "common")]
    version = billing["version"]
    assert version["dependencies"] == [
        {"org": "acme-corp", "module": "common", "version": "v1.0.0"}
    ]
    assert 'import "acme/common/v1/money.proto";' in version["files"][0]["content"]
    assert re.fullmatch(r"[0-9a-f]{64}", version["digest"])
    assert [v["version"] for v in versions["versions"]] == ["v1.0.0"]
    assert versions["versions"][0]["source"]["commit_sha"] == "4f2a9c1"
    assert "content" not in versions["versions"][0]["files"][0]
