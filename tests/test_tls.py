"""TLS and mutual TLS on the service's port (issue 14, item 8): certificates made here with
the openssl command, a real server, the Python client, the real grpcurl and the real
``spoke-grpc serve`` and ``health`` processes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from spoke.v1 import user_pb2

from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import ConfigError, Settings, TlsFiles
from spoke_grpc.mailer import compose
from tests import harness
from tests.conftest import free_port
from tests.harness import Client, ServerThread
from tests.operating import CapturedLogs
from tests.test_cli import assert_one_line_error, cli_env, run_cli, serve_expecting_failure
from tests.test_mailer import due_email
from tests.test_workers import worker_pids

GRPCURL = Path(sys.executable).parent / "grpcurl"
SPOKE_GRPC = Path(sys.executable).parent / "spoke-grpc"
LOCAL_NAMES = "DNS:localhost,IP:127.0.0.1"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes()


@dataclass(frozen=True)
class Authority:
    """A certificate authority of the test's own (EC P-256: quick to make)."""

    name: str
    directory: Path

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.directory / f"{self.name}.key"

    @classmethod
    def create(cls, directory: Path, name: str) -> Authority:
        ca = cls(name, directory)
        openssl(
            *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(ca.key), "-out", str(ca.cert), "-days", "2", "-subj", f"/CN={name}"),
            *("-addext", "basicConstraints=critical,CA:TRUE"),
            *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        )
        return ca

    def issue(self, name: str, names: str = LOCAL_NAMES, *, usage: str = "serverAuth") -> Issued:
        """A certificate for ``names`` (subjectAltName) with extended key ``usage``."""
        issued = Issued(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        csr = self.directory / f"{name}.csr"
        extensions = self.directory / f"{name}.ext"
        extensions.write_text(f"subjectAltName={names}\nextendedKeyUsage={usage}\n")
        openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"),
            *("-keyout", str(issued.key), "-out", str(csr), "-subj", f"/CN={name}"),
        )
        openssl(
            *("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key)),
            *("-CAcreateserial", "-out", str(issued.cert), "-days", "2"),
            *("-extfile", str(extensions)),
        )
        return issued


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    directory.mkdir()
    return directory


def replace(target: Path, source: Path) -> None:
    """Puts ``source``'s bytes at ``target`` the way deploy tools do: a new file renamed
    over the old one (a new inode), never a half-written file."""
    staged = target.with_suffix(".new")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


def tls_channel(
    address: str,
    ca: Path,
    client: Issued | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    key, chain = client.read() if client is not None else (None, None)
    credentials = grpc.ssl_channel_credentials(ca.read_bytes(), key, chain)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    return grpc.secure_channel(address, credentials, options=options)


def check_health(channel: grpc.Channel) -> health_pb2.HealthCheckResponse:
    stub = health_pb2_grpc.HealthStub(channel)
    response: health_pb2.HealthCheckResponse = stub.Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    return response


def refused(channel: grpc.Channel) -> grpc.RpcError:
    """The call's error: the handshake failed, so it is UNAVAILABLE."""
    with pytest.raises(grpc.RpcError) as caught:
        check_health(channel)
    error = caught.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error  # type: ignore[attr-defined]
    return error


@dataclass
class TlsServer:
    thread: ServerThread
    token: str
    files: TlsFiles


StartServer = Callable[[TlsFiles], TlsServer]


@pytest.fixture
def tls_server_factory(
    pg_admin_url: str, template_url: str, settings: Settings, tmp_path: Path
) -> Iterator[StartServer]:
    started: list[tuple[ServerThread, str]] = []

    def start(files: TlsFiles) -> TlsServer:
        url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
        thread = ServerThread(dataclasses.replace(settings, tls=files), url)
        started.append((thread, url))
        token_file = thread.run(ensure_bootstrap_admin(thread.server.pool, tmp_path / "token"))
        assert token_file is not None
        return TlsServer(thread, token_file.read_text().strip(), files)

    yield start
    for thread, url in started:
        thread.stop()
        harness.drop_database(pg_admin_url, url)


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            {"SPOKE_TLS_CERT_FILE": "/c.pem"},
            "SPOKE_TLS_CERT_FILE is set but SPOKE_TLS_KEY_FILE is not",
            id="cert-without-key",
        ),
        pytest.param(
            {"SPOKE_TLS_KEY_FILE": "/k.pem"},
            "SPOKE_TLS_KEY_FILE is set but SPOKE_TLS_CERT_FILE is not",
            id="key-without-cert",
        ),
        pytest.param(
            {"SPOKE_TLS_CLIENT_CA_FILE": "/ca.pem"},
            "SPOKE_TLS_CLIENT_CA_FILE is set but SPOKE_TLS_CERT_FILE and SPOKE_TLS_KEY_FILE",
            id="client-ca-without-tls",
        ),
    ],
)
def test_tls_settings_come_as_a_pair(env: dict[str, str], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
    assert_one_line_error(serve_expecting_failure(tmp_path, None, env), message)


def test_the_settings_read_the_three_files() -> None:
    env = {
        "SPOKE_TLS_CERT_FILE": "/tls/tls.crt",
        "SPOKE_TLS_KEY_FILE": "/tls/tls.key",
        "SPOKE_TLS_CLIENT_CA_FILE": "/tls/ca.crt",
    }
    assert Settings.from_env(env).tls == TlsFiles(
        Path("/tls/tls.crt"), Path("/tls/tls.key"), Path("/tls/ca.crt")
    )
    assert Settings.from_env({}).tls is None


@pytest.mark.parametrize(
    "case", ["missing-cert", "not-a-certificate", "key-of-another-cert", "garbage-client-ca"]
)
def test_unusable_files_are_one_line_at_start(case: str, pki: Path, tmp_path: Path) -> None:
    ca = Authority.create(pki, "ca")
    server = ca.issue("server")
    other = ca.issue("other")
    garbage = pki / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cert, key, client_ca = server.cert, server.key, None
    expected: tuple[str, ...]
    if case == "missing-cert":
        cert = pki / "absent.pem"
        expected = ("SPOKE_TLS_CERT_FILE", str(cert), "cannot be read", "No such file")
    elif case == "not-a-certificate":
        cert = server.key
        expected = ("SPOKE_TLS_CERT_FILE", str(cert), "no PEM certificate")
    elif case == "key-of-another-cert":
        key = other.key
        expected = ("SPOKE_TLS_KEY_FILE", str(key), "is not the private key of the certificate")
    else:
        client_ca = garbage
        expected = ("SPOKE_TLS_CLIENT_CA_FILE", str(garbage), "does not parse")
    env = {"SPOKE_TLS_CERT_FILE": str(cert), "SPOKE_TLS_KEY_FILE": str(key)}
    if client_ca is not None:
        env["SPOKE_TLS_CLIENT_CA_FILE"] = str(client_ca)
    # No database: the files are checked before the embedded PostgreSQL would start.
    result = serve_expecting_failure(tmp_path, None, env)
    assert_one_line_error(result, *expected)
    assert not (tmp_path / ".spoke").exists()


# --- TLS ----------------------------------------------------------------------------------


def test_tls_server_answers_tls_clients_only(tls_server_factory: StartServer, pki: Path) -> None:
    ca = Authority.create(pki, "ca")
    issued = ca.issue("server")
    server = tls_server_factory(TlsFiles(issued.cert, issued.key))
    address = server.thread.address
    with tls_channel(address, ca.cert) as channel:
        me = Client(channel, server.token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
        assert me.user.is_admin
    with grpc.insecure_channel(address) as channel:
        refused(channel)
    stranger = Authority.create(pki, "stranger")
    with tls_channel(address, stranger.cert) as channel:
        refused(channel)  # a certificate the client does not trust


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GRPCURL), "-connect-timeout", "3", "-max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_grpcurl_over_tls(tls_server_factory: StartServer, pki: Path) -> None:
    ca = Authority.create(pki, "ca")
    issued = ca.issue("server")
    server = tls_server_factory(TlsFiles(issued.cert, issued.key))
    address = server.thread.address
    listed = grpcurl("-cacert", str(ca.cert), address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "spoke.v1.OrganizationService" in listed.stdout.split()
    called = grpcurl(
        *("-cacert", str(ca.cert), "-H", f"authorization: Bearer {server.token}"),
        *(address, "spoke.v1.UserService/GetCurrentUser"),
    )
    assert called.returncode == 0, called.stderr
    assert '"is_admin": true' in called.stdout
    # The server closes a plaintext connection at once; grpcurl retries until its timeout.
    plaintext = grpcurl("-plaintext", address, "list")
    assert plaintext.returncode != 0
    assert f'Failed to dial target host "{address}"' in plaintext.stderr, plaintext.stderr
    untrusted = grpcurl(address, "list")  # TLS, but the system's roots know no test CA
    assert untrusted.returncode != 0
    assert "certificate signed by unknown authority" in untrusted.stderr, untrusted.stderr


# --- mutual TLS ---------------------------------------------------------------------------


def test_mutual_tls_requires_a_certificate_from_the_client_ca(
    tls_server_factory: StartServer, pki: Path
) -> None:
    server_ca = Authority.create(pki, "server-ca")
    client_ca = Authority.create(pki, "client-ca")
    other_ca = Authority.create(pki, "other-ca")
    issued = server_ca.issue("server")
    files = TlsFiles(issued.cert, issued.key, client_ca.cert)
    server = tls_server_factory(files)
    address = server.thread.address
    good = client_ca.issue("client", "DNS:client.test", usage="clientAuth")
    foreign = other_ca.issue("foreign", "DNS:client.test", usage="clientAuth")

    with tls_channel(address, server_ca.cert) as channel:
        refused(channel)  # no client certificate
    with tls_channel(address, server_ca.cert, foreign) as channel:
        refused(channel)  # signed by a CA the server does not trust for clients
    with tls_channel(address, server_ca.cert, good) as channel:
        me = Client(channel, server.token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
        assert me.user.is_admin
    with_cert = grpcurl(
        *("-cacert", str(server_ca.cert), "-cert", str(good.cert), "-key", str(good.key)),
        *(address, "list"),
    )
    assert with_cert.returncode == 0, with_cert.stderr
    without = grpcurl("-cacert", str(server_ca.cert), address, "list")
    assert without.returncode != 0


# --- reloading ----------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["another-ca", "another-name"])
def test_replaced_files_serve_the_next_connection(
    change: str, tls_server_factory: StartServer, pki: Path, tmp_path: Path
) -> None:
    first_ca = Authority.create(pki, "first-ca")
    first = first_ca.issue("first")
    live = TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key")
    replace(live.cert_file, first.cert)
    replace(live.key_file, first.key)
    server = tls_server_factory(live)
    address = server.thread.address
    with tls_channel(address, first_ca.cert) as channel:
        assert check_health(channel).status == health_pb2.HealthCheckResponse.SERVING

    if change == "another-ca":
        new_ca = Authority.create(pki, "second-ca")
        renewed, name, old_name = new_ca.issue("renewed"), None, None
    else:
        new_ca = first_ca
        renewed = first_ca.issue("renewed", "DNS:renewed.test")
        name, old_name = "renewed.test", "localhost"
    replace(live.cert_file, renewed.cert)
    replace(live.key_file, renewed.key)

    with CapturedLogs() as logs, tls_channel(address, new_ca.cert, server_name=name) as channel:
        assert check_health(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert "certificate reloaded" in logs.text
    # The old certificate is no longer served: a client expecting it is refused.
    with tls_channel(address, first_ca.cert, server_name=old_name) as channel:
        refused(channel)

    # A change that does not load (the key left from another pair) keeps the new pair.
    replace(live.key_file, first.key)
    with CapturedLogs() as logs, tls_channel(address, new_ca.cert, server_name=name) as channel:
        assert check_health(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert "keeping the previous certificate" in logs.text
    assert "is not the private key" in logs.text
    # So does a file missing for a moment.
    live.key_file.unlink()
    with CapturedLogs() as logs, tls_channel(address, new_ca.cert, server_name=name) as channel:
        assert check_health(channel).status == health_pb2.HealthCheckResponse.SERVING
    assert f"{live.key_file} cannot be read" in logs.text


# --- the public address -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public_address", "line"),
    [
        pytest.param(None, "grpcurl -H", id="unset: the TLS port"),
        pytest.param("spoke.internal:50051", "grpcurl -H", id="host:port: the TLS port"),
        pytest.param("grpc://spoke.internal:50051", "grpcurl -plaintext -H", id="grpc"),
    ],
)
def test_invitation_email_follows_the_tls_port(public_address: str | None, line: str) -> None:
    settings = Settings(
        tls=TlsFiles(Path("/tls.crt"), Path("/tls.key")), public_address=public_address
    )
    body = compose(due_email(), "spoke_inv_x", settings).get_content()
    assert line + ' "authorization: Bearer' in body


# --- the real serve process, its workers and the health command ---------------------------


@contextmanager
def serving(
    pg_admin_url: str, template_url: str, cwd: Path, env: dict[str, str], *args: str
) -> Iterator[tuple[str, str]]:
    """``spoke-grpc serve ARGS`` with ``env`` on a fresh database: its address and the
    bootstrap admin's token, once it says it serves."""
    url = harness.create_database(pg_admin_url, template=harness.database_name(template_url))
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [str(SPOKE_GRPC), "serve", "--listen", address, *args],
        env=cli_env(cwd, url, {"SPOKE_SHUTDOWN_GRACE": "2", **env}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        assert lines[-1].startswith(f"spoke-grpc serving on {address}"), lines
        yield address, (cwd / ".spoke" / "bootstrap-token").read_text().strip()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
        process.wait(30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        harness.drop_database(pg_admin_url, url)


def health(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("health", *args, cwd=cwd, database_url=None, env=env, timeout=30)


def test_serve_over_tls_and_its_health_command(
    pg_admin_url: str, template_url: str, pki: Path, tmp_path: Path
) -> None:
    ca = Authority.create(pki, "ca")
    issued = ca.issue("server")
    env = {"SPOKE_TLS_CERT_FILE": str(issued.cert), "SPOKE_TLS_KEY_FILE": str(issued.key)}
    with serving(pg_admin_url, template_url, tmp_path, env) as (address, token):
        with tls_channel(address, ca.cert) as channel:
            me = Client(channel, token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
            assert me.user.is_admin
        with grpc.insecure_channel(address) as channel:
            refused(channel)
        listen = {**env, "SPOKE_LISTEN": address.replace("127.0.0.1", "0.0.0.0")}
        # The probe dials loopback over TLS, trusting the server's own certificate.
        result = health(tmp_path, listen)
        assert result.returncode == 0, result.stderr
        result = health(tmp_path, env, "--address", address, "--cacert", str(ca.cert))
        assert result.returncode == 0, result.stderr
        # Without the TLS settings it speaks plaintext, and says why it got no answer.
        plaintext = health(tmp_path, {}, "--address", address, "--timeout", "2")
        assert_one_line_error(plaintext, address, "did not answer a health check: UNAVAILABLE")
        # A name the certificate does not carry is a failed handshake, said so.
        wrong = health(tmp_path, env, "--address", address, "--server-name", "elsewhere.test")
        assert_one_line_error(wrong, "UNAVAILABLE (")


def test_workers_under_mutual_tls(
    pg_admin_url: str, template_url: str, pki: Path, tmp_path: Path
) -> None:
    """The supervisor waits for its workers over mutual TLS, presenting the server's own
    certificate (issued by the client CA for both uses); every worker serves TLS."""
    ca = Authority.create(pki, "ca")
    issued = ca.issue("server", usage="serverAuth,clientAuth")
    client = ca.issue("client", "DNS:client.test", usage="clientAuth")
    foreign = Authority.create(pki, "foreign").issue("intruder", usage="clientAuth")
    env = {
        "SPOKE_TLS_CERT_FILE": str(issued.cert),
        "SPOKE_TLS_KEY_FILE": str(issued.key),
        "SPOKE_TLS_CLIENT_CA_FILE": str(ca.cert),
    }
    with serving(pg_admin_url, template_url, tmp_path, env, "--workers", "2") as (address, token):
        for _ in range(6):  # new connections, spread by the kernel over both workers
            with tls_channel(address, ca.cert, client) as channel:
                me = Client(channel, token).users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
                assert me.user.is_admin
            with tls_channel(address, ca.cert) as channel:
                refused(channel)
        assert health(tmp_path, env, "--address", address).returncode == 0
        result = health(
            tmp_path,
            env,
            *("--address", address, "--cert", str(foreign.cert), "--key", str(foreign.key)),
        )
        assert_one_line_error(result, "did not answer a health check: UNAVAILABLE")
