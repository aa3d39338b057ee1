"""Latency of the request path, as ratios against a baseline measured in the same run.

Starts a real ``spoke-grpc serve`` process (DATABASE_URL if set, else an embedded
PostgreSQL in a temporary directory), then times sequential calls from this process:

- baseline: ``grpc.health.v1.Health/Check`` (no interceptors, no database)
- ``UserService/GetCurrentUser`` (auth interceptor + one query)
- ``OrganizationService/GetOrganization`` (auth + org context + one query)
- ``OrganizationService/UpdateOrganization`` (a write with its audit event)
- ``ModuleService/CompileVersion`` (Python code for a 20-message file): answered from the
  build cache (reads digests, counts the compile job, records it) and, once per version
  over up to 50 freshly pushed versions, compiled by protoc in the worker pool

Ratios, not absolute times, are the figures to compare: these machines are shared.
Usage: ``make bench`` (or ``python benchmarks/rpc_latency.py --calls 2000``).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import psycopg
from google.protobuf.field_mask_pb2 import FieldMask
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from spoke.v1 import (
    module_pb2,
    module_pb2_grpc,
    organization_pb2,
    organization_pb2_grpc,
    user_pb2,
    user_pb2_grpc,
)

from spoke_grpc.database import with_database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed(call: Callable[[], Any], calls: int) -> list[float]:
    for _ in range(min(200, calls)):
        call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def compile_scenarios(
    channel: grpc.Channel, metadata: list[tuple[str, str]], calls: int
) -> tuple[Callable[[], Any], list[float], list[float], list[str]]:
    """A cached CompileVersion call, the latencies of first compiles of fresh versions (with
    Python code, then with every language this server has), and those languages."""
    orgs = organization_pb2_grpc.OrganizationServiceStub(channel)
    modules = module_pb2_grpc.ModuleServiceStub(channel)
    # Unlimited: the run makes more compile jobs than the small tier's month allows.
    orgs.CreateOrganization(
        organization_pb2.CreateOrganizationRequest(
            name="bench-compile", quota_tier=organization_pb2.QUOTA_TIER_UNLIMITED
        ),
        metadata=metadata,
    )
    modules.CreateModule(
        module_pb2.CreateModuleRequest(org="bench-compile", name="schemas"), metadata=metadata
    )
    body = "\n".join(
        f"message M{i} {{ string id = 1; int64 at = 2; repeated string tags = 3; }}"
        for i in range(20)
    )
    fresh = [f"1.0.{i}" for i in range(min(calls, 50) + 1)]
    every = [f"2.0.{i}" for i in range(min(calls, 10))]
    for i, version in enumerate(fresh + every):
        content = f'syntax = "proto3";\npackage bench.v{i};\n{body}\n'
        modules.CreateVersion(
            module_pb2.CreateVersionRequest(
                org="bench-compile",
                module="schemas",
                version=version,
                files=[module_pb2.ProtoFile(path="bench/schemas.proto", content=content)],
            ),
            metadata=metadata,
        )

    def compile_version(version: str, languages: Sequence[str] = ("python",)) -> Any:
        return modules.CompileVersion(
            module_pb2.CompileVersionRequest(
                org="bench-compile", module="schemas", version=version, languages=languages
            ),
            metadata=metadata,
        )

    compile_version(fresh[0])  # the worker processes start on first use
    uncached = []
    for version in fresh[1:]:
        start = time.perf_counter()
        compile_version(version)
        uncached.append(time.perf_counter() - start)
    listed = modules.ListLanguages(module_pb2.ListLanguagesRequest(), metadata=metadata)
    available = [language.name for language in listed.languages if language.available]
    all_languages = []
    for version in every:
        start = time.perf_counter()
        compile_version(version, available)
        all_languages.append(time.perf_counter() - start)
    return (lambda: compile_version(fresh[0])), uncached, all_languages, available


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spoke-bench-"))
    work.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOKE_")}
    admin_url = os.environ.get("DATABASE_URL")
    bench_db = None
    if admin_url:
        bench_db = f"spoke_bench_{os.getpid()}"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(bench_db)))
        env["DATABASE_URL"] = with_database(admin_url, bench_db)
    port = free_port()
    env.update(
        SPOKE_LISTEN=f"127.0.0.1:{port}",
        SPOKE_DATA_DIR=str(work),
        SPOKE_LOG_LEVEL="WARNING",
    )
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "spoke-grpc"), "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
        token_file = work / "bootstrap-token"
        deadline = time.monotonic() + 30
        while not token_file.exists():
            if time.monotonic() > deadline:
                raise SystemExit("no bootstrap token; did the server start?")
            time.sleep(0.1)
        metadata = [("authorization", f"Bearer {token_file.read_text().strip()}")]
        health = health_pb2_grpc.HealthStub(channel)
        users = user_pb2_grpc.UserServiceStub(channel)
        orgs = organization_pb2_grpc.OrganizationServiceStub(channel)
        orgs.CreateOrganization(
            organization_pb2.CreateOrganizationRequest(name="bench-org"), metadata=metadata
        )
        update = organization_pb2.UpdateOrganizationRequest(
            org="bench-org",
            organization=organization_pb2.Organization(description="bench"),
            update_mask=FieldMask(paths=["description"]),
        )
        scenarios: dict[str, Callable[[], Any]] = {
            "Health/Check (baseline)": lambda: health.Check(health_pb2.HealthCheckRequest()),
            "GetCurrentUser": lambda: users.GetCurrentUser(
                user_pb2.GetCurrentUserRequest(), metadata=metadata
            ),
            "GetOrganization": lambda: orgs.GetOrganization(
                organization_pb2.GetOrganizationRequest(org="bench-org"), metadata=metadata
            ),
            "UpdateOrganization": lambda: orgs.UpdateOrganization(update, metadata=metadata),
        }
        results = {name: timed(call, args.calls) for name, call in scenarios.items()}
        cached, uncached, every, available = compile_scenarios(channel, metadata, args.calls)
        results["CompileVersion (cached)"] = timed(cached, args.calls)
        results["CompileVersion (protoc)"] = uncached
        results[f"CompileVersion ({len(available)} langs)"] = every
    finally:
        server.terminate()
        server.wait(30)
        if admin_url and bench_db:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(bench_db)
                    )
                )

    base = statistics.median(next(iter(results.values())))
    print(f"{'rpc':<26} {'p50 ms':>8} {'p99 ms':>8} {'p50 / baseline':>15}")
    for name, samples in results.items():
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[int(len(samples) * 0.99) - 1]
        print(f"{name:<26} {p50 * 1e3:8.3f} {p99 * 1e3:8.3f} {p50 / base:15.2f}")
    print(
        f"({args.calls} sequential calls each, after 200 warm-up calls; CompileVersion (protoc):"
        f" {len(results['CompileVersion (protoc)'])} first compiles, one per version;"
        f" CompileVersion ({len(available)} langs): {len(every)} first compiles for"
        f" {', '.join(available)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
