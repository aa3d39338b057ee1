"""deploy/ and the Dockerfile agree with the service (issue 11, item 7).

Every setting a manifest names is one ``Settings.from_env`` reads (the names come from
spoke_grpc/config.py's source, not from a list kept here), its values parse, every probe
asks the port the service listens on, the stop grace covers SPOKE_SHUTDOWN_GRACE, and the
database settings route the pool through pgbouncer and sessions of their own around it.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from spoke_grpc import tls
from spoke_grpc.config import REPO_ROOT, Settings, TlsFiles
from spoke_grpc.health import LIVENESS_SERVICE

DEPLOY = REPO_ROOT / "deploy"
SETTING_NAME = re.compile(r"^(SPOKE_[A-Z0-9_]+|DATABASE_URL|DEFAULT_QUOTA_TIER)$")


def known_settings() -> set[str]:
    """The variables ``Settings.from_env`` reads: string literals passed to a call in
    spoke_grpc/config.py (``env.get("…")``, ``number("…")``) that look like settings."""
    tree = ast.parse((REPO_ROOT / "spoke_grpc" / "config.py").read_text())
    return {
        arg.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        for arg in node.args[:1]
        if isinstance(arg, ast.Constant)
        and isinstance(arg.value, str)
        and SETTING_NAME.match(arg.value)
    }


def kubernetes() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def of_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in kubernetes() if d["kind"] == kind]
    return found


def container() -> dict[str, Any]:
    containers = of_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    (spoke,) = [c for c in containers if c["name"] == "spoke-grpc"]
    return spoke


def kubernetes_env() -> dict[str, str]:
    """What the container's environment holds: its envFrom ConfigMap and Secret, and env."""
    env: dict[str, str] = {}
    names = {
        ("ConfigMap", ref["configMapRef"]["name"])
        if "configMapRef" in ref
        else ("Secret", ref["secretRef"]["name"])
        for ref in container().get("envFrom", [])
    }
    for doc in kubernetes():
        if (doc["kind"], doc["metadata"]["name"]) in names:
            env.update(doc.get("data") or {})
            env.update(doc.get("stringData") or {})
    env.update({e["name"]: e["value"] for e in container().get("env", []) if "value" in e})
    return env


def compose_env(service: str) -> dict[str, str]:
    environment = compose()["services"][service].get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def named_settings(env: Mapping[str, str]) -> Iterator[str]:
    return (name for name in env if name.startswith("SPOKE_") or SETTING_NAME.match(name))


def listen_port(env: Mapping[str, str]) -> int:
    return int(Settings.from_env(env).listen.rsplit(":", 1)[1])


def test_the_settings_scan_finds_the_settings() -> None:
    known = known_settings()
    assert {"DATABASE_URL", "SPOKE_DIRECT_DATABASE_URL", "DEFAULT_QUOTA_TIER"} <= known
    assert {"SPOKE_PREPARE_THRESHOLD", "SPOKE_STARTUP_OPTIONS", "SPOKE_SHUTDOWN_GRACE"} <= known
    assert len(known) >= 20


@pytest.mark.parametrize(
    "env",
    [
        pytest.param(kubernetes_env, id="kubernetes"),
        pytest.param(lambda: compose_env("spoke"), id="compose"),
    ],
)
def test_every_setting_named_exists_and_its_value_parses(env: Any) -> None:
    values: dict[str, str] = env()
    unknown = sorted(set(named_settings(values)) - known_settings())
    assert not unknown, f"settings spoke_grpc.config does not read: {unknown}"
    Settings.from_env(values)  # ConfigError on a value the service would refuse


def test_the_database_goes_through_pgbouncer_and_sessions_around_it() -> None:
    for env in (kubernetes_env(), compose_env("spoke")):
        settings = Settings.from_env(env)
        assert settings.database_url and settings.direct_database_url
        assert urlsplit(settings.database_url).port == 6432  # pgbouncer
        assert urlsplit(settings.direct_database_url).port == 5432  # PostgreSQL
        assert settings.prepare_threshold is None
        assert settings.startup_options is False
    services = compose()["services"]
    assert urlsplit(compose_env("spoke")["DATABASE_URL"]).hostname == "pgbouncer"
    assert urlsplit(compose_env("spoke")["SPOKE_DIRECT_DATABASE_URL"]).hostname == "postgres"
    assert {"postgres", "pgbouncer", "spoke"} <= set(services)
    ini = (DEPLOY / "pgbouncer" / "pgbouncer.ini").read_text()
    assert re.search(r"^pool_mode\s*=\s*transaction\s*$", ini, re.MULTILINE)
    assert not re.search(r"^ignore_startup_parameters", ini, re.MULTILINE)


def probe_service(probe: dict[str, Any]) -> str:
    """The grpc.health.v1 service a probe asks ("" for the server)."""
    if "grpc" in probe:
        return str(probe["grpc"].get("service", ""))
    command = probe["exec"]["command"]
    return command[command.index("--service") + 1] if "--service" in command else ""


def test_kubernetes_probes_ask_the_served_port() -> None:
    spoke = container()
    port = listen_port(kubernetes_env())
    (grpc_port,) = [p for p in spoke["ports"] if p["name"] == "grpc"]
    assert grpc_port["containerPort"] == port
    probes = {name: spoke[name] for name in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert {"readinessProbe", "livenessProbe"} <= {k for k, v in probes.items() if v}
    for name, probe in probes.items():
        if "grpc" in probe:
            assert probe["grpc"]["port"] == port, name
        else:
            command = probe["exec"]["command"]
            assert command[:2] == ["spoke-grpc", "health"], name
            if "--address" in command:
                assert command[command.index("--address") + 1].endswith(f":{port}"), name
    # Readiness follows the database; liveness must not (an outage is not a restart).
    assert probe_service(probes["readinessProbe"]) == ""
    assert probe_service(probes["livenessProbe"]) == LIVENESS_SERVICE
    assert probe_service(probes["startupProbe"]) == LIVENESS_SERVICE
    if Settings.from_env(kubernetes_env()).tls is not None:
        # The kubelet's own gRPC probe takes no TLS settings: the health command does.
        assert all("exec" in probe for probe in probes.values())
    service = of_kind("Service")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ("grpc", port)


def test_kubernetes_tls_files_come_from_a_renewable_secret() -> None:
    """The TLS settings name files in a Secret volume mounted whole (a subPath mount never
    sees a renewal, so the server would never reload), read-only."""
    files = Settings.from_env(kubernetes_env()).tls
    assert files is not None
    spoke = container()
    volumes = {v["name"]: v for v in of_kind("Deployment")["spec"]["template"]["spec"]["volumes"]}
    paths = [files.cert_file, files.key_file, *filter(None, [files.client_ca_file])]
    for path in paths:
        (mount,) = [m for m in spoke["volumeMounts"] if path.parent == Path(m["mountPath"])]
        assert mount.get("readOnly") is True and "subPath" not in mount
        assert "secret" in volumes[mount["name"]]
    (service_port,) = of_kind("Service")["spec"]["ports"]
    assert service_port.get("appProtocol") != "kubernetes.io/h2c"  # h2c is cleartext


def test_compose_tls_certificates_are_made_for_the_service(tmp_path: Path) -> None:
    """The certs service's script makes files the service loads, for the address its
    health check dials, in the volume the service mounts where its settings look."""
    services = compose()["services"]
    files = Settings.from_env(compose_env("spoke")).tls
    assert files is not None
    (mount,) = [v for v in services["spoke"]["volumes"] if v.split(":")[1] == "/etc/spoke/tls"]
    volume = mount.split(":")[0]
    assert f"{volume}:/tls" in services["certs"]["volumes"]
    assert files.cert_file.parent == Path("/etc/spoke/tls")
    assert services["spoke"]["depends_on"]["certs"]["condition"] == (
        "service_completed_successfully"
    )
    script = DEPLOY / "tls" / "make-certificates.sh"
    out = tmp_path / "tls"
    subprocess.run(
        ["sh", str(script), str(out)],
        env={**os.environ, "OWNER": ""},
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Where the service looks, and the commented-out CA for mutual TLS.
    local = TlsFiles(
        out / files.cert_file.name, out / files.key_file.name, client_ca_file=out / "ca.crt"
    )
    tls.load(local)  # ConfigError if the pair or the CA does not load
    names = subprocess.run(
        ["openssl", "x509", "-in", str(local.cert_file), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = services["spoke"]["healthcheck"]["test"]
    host = command[command.index("--address") + 1].rsplit(":", 1)[0]
    assert f"IP Address:{host}" in names and "DNS:localhost" in names
    assert not (out / "ca.key").exists()  # nothing more can be issued from that CA


def test_kubernetes_stop_grace_covers_the_shutdown_grace() -> None:
    pod = of_kind("Deployment")["spec"]["template"]["spec"]
    grace = Settings.from_env(kubernetes_env()).shutdown_grace_seconds
    pre_stop = container().get("lifecycle", {}).get("preStop", {}).get("exec", {})
    pause = float(pre_stop["command"][1]) if pre_stop.get("command", [""])[0] == "sleep" else 0
    assert pod["terminationGracePeriodSeconds"] > pause + grace


def test_kubernetes_selectors_match_the_pods() -> None:
    labels = of_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        selector = of_kind(kind)["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind
    assert of_kind("Service")["spec"]["selector"].items() <= labels.items()
    resources = container()["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_compose_health_check_and_ports_use_the_served_port() -> None:
    spoke = compose()["services"]["spoke"]
    port = listen_port(compose_env("spoke"))
    command = spoke["healthcheck"]["test"]
    assert command[:3] == ["CMD", "spoke-grpc", "health"]
    if "--address" in command:
        assert command[command.index("--address") + 1].endswith(f":{port}")
    assert [int(str(p).rsplit(":", 1)[1]) for p in spoke["ports"]] == [port]
    grace = Settings.from_env(compose_env("spoke")).shutdown_grace_seconds
    assert float(spoke["stop_grace_period"].removesuffix("s")) > grace


def test_dockerfile_health_check_runs_the_health_command() -> None:
    text = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK")]
    command = line.split(" CMD ", 1)[1].strip()
    argv = yaml.safe_load(command) if command.startswith("[") else shlex.split(command)
    assert argv[:2] == ["spoke-grpc", "health"]
    # The image's SPOKE_LISTEN is what the command probes when no --address is given.
    assert re.search(r"SPOKE_LISTEN=0\.0\.0\.0:50051", text)
    assert "--address" not in argv


def test_the_pgbouncer_image_is_debians() -> None:
    dockerfile = (DEPLOY / "pgbouncer" / "Dockerfile").read_text()
    assert "FROM debian:bookworm" in dockerfile
    assert "apt-get install" in dockerfile and "pgbouncer" in dockerfile
    assert Path(DEPLOY / "pgbouncer" / "userlist.txt").exists()
