"""``spoke-grpc push`` and ``pull`` (issue 15, item 6) beyond the README's walkthrough: TLS
and mutual TLS, one-line errors and their exit codes. The command runs in-process
(``cli.main``) against real servers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from spoke.v1 import module_pb2 as pb

from spoke_grpc import cli
from spoke_grpc.compile_queue import Requester
from spoke_grpc.config import TlsFiles
from spoke_grpc.registry_client import ClientError, write_under
from tests.conftest import Users, free_port
from tests.harness import Client, ServerThread
from tests.servicers.test_compile_fairness import hold
from tests.servicers.test_modules import create_module, create_org, proto
from tests.test_tls import Authority, StartServer, pki, tls_channel, tls_server_factory


def tree(root: Path, files: dict[str, str]) -> Path:
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    return root


FILES = {
    "acme/things/v1/thing.proto": proto("acme.things.v1", "message Thing { string id = 1; }"),
    "acme/things/v1/more/other.proto": proto("acme.things.v1.more", "message Other {}"),
}


def run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    address: str | None,
    token: str | None,
    *argv: str,
) -> tuple[int, str, str]:
    # In-process: the server's own logs (on stderr too) stay as the test session set them.
    monkeypatch.setattr(cli.logs, "configure", lambda *_: None)
    for name, value in (("SPOKE_ADDRESS", address), ("SPOKE_TOKEN", token)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def acme(users: Users) -> tuple[Client, str]:
    owner = users.create("owner")
    org_id = create_org(owner, "acme")
    create_module(owner, "acme", "things")
    return owner, org_id


def test_push_then_pull_the_sources_back(
    acme: tuple[Client, str],
    server: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner, _ = acme
    source = tree(tmp_path / "protos", {**FILES, ".git/ignored.proto": "not a proto"})
    code, out, err = run(
        monkeypatch, capsys, server.address, owner.token,
        "push", str(source), "--org", "acme", "--module", "things", "--version", "1.0.0",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.startswith("pushed acme/things@1.0.0: 2 file(s), digest ")
    code, out, err = run(
        monkeypatch, capsys, f"grpc://{server.address}", owner.token,
        "pull", "acme/things@1.0.0", "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert (code, err) == (0, "")
    for path, content in FILES.items():
        assert (tmp_path / "out" / path).read_text() == content
    assert not (tmp_path / "out" / ".git").exists()


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        pytest.param(
            ["push", "{dir}", "--org", "acme", "--module", "nowhere", "--version", "1.0.0"],
            1,
            "spoke-grpc: error: NOT_FOUND: module 'nowhere' not found",
            id="not-found",
        ),
        pytest.param(
            ["push", "{dir}", "--org", "acme", "--module", "things", "--version", "one"],
            1,
            "spoke-grpc: error: INVALID_ARGUMENT: version: must be a semantic version such as"
            " v1.2.3, 1.2.3-rc.1 or 1.2.3+build.7",
            id="field-violation",
        ),
        pytest.param(
            ["pull", "acme/things@1.0.0", "--out", "{dir}/x", "--lang", "cobol"],
            1,
            "spoke-grpc: error: INVALID_ARGUMENT: languages[0]: 'cobol' is not a supported"
            " language; supported: ",
            id="unknown-language",
        ),
        pytest.param(
            ["push", "{dir}/empty", "--org", "acme", "--module", "things", "--version", "1.0.0"],
            1,
            "spoke-grpc: error: {dir}/empty is not a directory",
            id="not-a-directory",
        ),
    ],
)
def test_a_failure_is_one_line_with_its_exit_code(
    acme: tuple[Client, str],
    server: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    line: str,
) -> None:
    owner, _ = acme
    tree(tmp_path, FILES)
    args = [a.replace("{dir}", str(tmp_path)) for a in argv]
    got, out, err = run(monkeypatch, capsys, server.address, owner.token, *args)
    assert got == code
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(line.replace("{dir}", str(tmp_path))), err


def test_busy_unreachable_and_bad_command_lines_have_their_exit_codes(
    acme: tuple[Client, str],
    server: ServerThread,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner, org_id = acme
    tree(tmp_path, FILES)
    push = ["push", str(tmp_path), "--org", "acme", "--module", "things", "--version", "1.0.0"]
    queue = server.server.compiler.queue
    with hold(server, Requester(uuid.UUID(org_id)), queue.org_capacity):
        code, _, err = run(monkeypatch, capsys, server.address, owner.token, *push)
    assert code == 3 and err.startswith("spoke-grpc: error: RESOURCE_EXHAUSTED: the compiler")
    closed = f"127.0.0.1:{free_port()}"
    code, _, err = run(monkeypatch, capsys, closed, owner.token, *push, "--timeout", "2")
    assert code == 3 and err.startswith(f"spoke-grpc: error: UNAVAILABLE: {closed}: "), err
    code, _, err = run(monkeypatch, capsys, None, owner.token, *push)
    assert (code, err) == (
        1,
        "spoke-grpc: error: set SPOKE_ADDRESS (or --address) to the service's host:port\n",
    )
    with pytest.raises(SystemExit) as usage:
        run(monkeypatch, capsys, server.address, owner.token, "pull", "acme/things", "--out", "x")
    assert usage.value.code == 2
    assert "'acme/things' is not ORG/MODULE@VERSION" in capsys.readouterr().err
    assert run(monkeypatch, capsys, server.address, owner.token, *push)[0] == 0
    code, _, err = run(monkeypatch, capsys, server.address, owner.token, *push)
    assert code == 4 and "ALREADY_EXISTS" in err


def test_a_path_that_would_leave_the_folder_is_refused(tmp_path: Path) -> None:
    for path in ("../escape.py", "/etc/passwd", "a/../../b"):
        with pytest.raises(ClientError, match="leaves --out"):
            write_under(tmp_path / "out", path, "x")
    assert not (tmp_path / "escape.py").exists()


def test_push_and_pull_over_mutual_tls(
    tls_server_factory: StartServer,
    pki: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server_ca, client_ca = Authority.create(pki, "server-ca"), Authority.create(pki, "client-ca")
    issued = server_ca.issue("server")
    server = tls_server_factory(TlsFiles(issued.cert, issued.key, client_ca.cert))
    client = client_ca.issue("client", "DNS:client.test", usage="clientAuth")
    with tls_channel(server.thread.address, server_ca.cert, client) as channel:
        admin = Client(channel, server.token)
        create_org(admin, "acme")
        admin.modules.CreateModule(pb.CreateModuleRequest(org="acme", name="things"))
    tree(tmp_path / "protos", FILES)
    tls = ["--cacert", str(server_ca.cert), "--cert", str(client.cert), "--key", str(client.key)]
    push = ["push", str(tmp_path / "protos"), "--org", "acme", "--module", "things"]
    code, _, err = run(
        monkeypatch, capsys, server.thread.address, server.token, *push, "--version", "1.0.0", *tls
    )
    assert (code, err) == (0, ""), err
    pull = ["pull", "acme/things@1.0.0", "--out", str(tmp_path / "out")]
    code, _, err = run(monkeypatch, capsys, server.thread.address, server.token, *pull, *tls)
    assert (code, err) == (0, ""), err
    assert (tmp_path / "out" / "acme/things/v1/thing.proto").read_text() == FILES[
        "acme/things/v1/thing.proto"
    ]
    # Without a client certificate the handshake fails: retry is no help, but it is reported
    # as the service being unreachable, with why.
    code, _, err = run(monkeypatch, capsys, server.thread.address, server.token, *pull, *tls[:2])
    assert code == 3 and err.startswith("spoke-grpc: error: UNAVAILABLE: "), err


__all__ = ["pki", "tls_server_factory"]  # fixtures of tests/test_tls.py, used here
