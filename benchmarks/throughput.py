"""Throughput under concurrency, as ratios against a bare grpc.aio echo server in the same run.

Starts the service (``spoke-grpc serve --workers N``) on a fresh database filled with
realistic data (200 orgs, 2,000 modules, 10,000 versions, 1,000 users), drives each RPC from
several client processes with many calls in flight (``loadgen``), and prints one table:
calls answered OK per second, their p50 and p99, server CPU microseconds per OK call,
database statements per call (counted on the wire by a second, sequential pass through
``db_trips``' protocol counter), and the share of calls refused (a busy compile pool says
``COMPILER_BUSY`` rather than queueing without bound; those calls are not throughput).
Each row also prints ``ratio <Rpc>/echo = x``: its throughput over the echo server's, driven
by the same client. When h2load is installed, the read rows are driven by it too, against an
echo baseline of its own (``benchmarks/h2load.py``): a C client leaves the server more of
the machine's two cores than the Python client processes do. Figures go to
``bench/results/<time>.json`` too. Then the server's RSS after 10,000 and after 100,000
calls, to show it does not grow per call.

The pull rows (h2load, 1 and 2 workers): ``GetVersion`` of a version of 10 files of about
2 KB each, and ``CompileVersion`` of it cached, for each language the compiler has (and
descriptors only), each against the echo server answering with as many bytes as its
response holds: ``echo-20k`` for ``GetVersion`` (``ratio GetVersion/echo-20k = x``). The
service runs as a user starts it: default log settings (INFO, text access lines, one per
call), written to a file.

``make bench`` runs it whole (under 10 minutes on 2 cores); ``make bench-quick`` runs a
smaller version (under a minute). DATABASE_URL if set, else an embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from spoke.v1 import module_pb2, organization_pb2, quota_pb2, user_pb2

from benchmarks import h2load, loadgen
from benchmarks.db_trips import CountingProxy
from benchmarks.echo_server import METHOD as ECHO_METHOD
from benchmarks.echo_server import SIZED_METHOD
from spoke_grpc import migrations, tokens
from spoke_grpc.compiler import LANGUAGES
from spoke_grpc.config import REPO_ROOT, Settings
from spoke_grpc.domain.modules import digest
from spoke_grpc.server import SpokeServer
from tests import harness

RESULTS = REPO_ROOT / "bench" / "results"
SPOKE = str(Path(sys.executable).parent / "spoke-grpc")
PROTO = (
    'syntax = "proto3";\npackage bench.v{n};\n'
    "message M{i} {{\n  string id = 1;\n  int64 at = 2;\n}}\n"
)


PULL_FILES = 10
PULL_FILE_BYTES = 2048


def pull_file(i: int, size: int = PULL_FILE_BYTES) -> str:
    """A proto file of about ``size`` bytes: one message with as many fields as fit."""
    lines = [f'syntax = "proto3";\npackage pull.v1;\nmessage Pulled{i} {{\n']
    n = 0
    while sum(map(len, lines)) < size - 40:
        n += 1
        lines.append(f"  string field_{i}_{n:03d} = {n};\n")
    return "".join(lines) + "}\n"


# What a row's calls may answer: OK, or refused because the server is busy (a full compile
# pool, the concurrency cap). Anything else means the scenario itself is wrong.
_EXPECTED_CODES = frozenset({"OK", "RESOURCE_EXHAUSTED", "UNAVAILABLE"})

# Rows whose calls must never repeat: creates, and compiles that must miss the cache.
DISTINCT = frozenset({"CreateModule", "CreateVersion", "CompileVersion (uncached)"})


@dataclass(frozen=True)
class Scale:
    users: int
    orgs: int
    modules_per_org: int
    versions_per_module: int
    seconds: float
    memory_calls: tuple[int, int]


FULL = Scale(1000, 200, 10, 5, 5.0, (10_000, 100_000))
QUICK = Scale(200, 40, 5, 2, 1.5, (1_000, 5_000))


@dataclass
class Row:
    rpc: str
    workers: int
    calls_per_second: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float
    statements_per_call: float | None
    ratio: float
    codes: dict[str, int]
    refused: float = 0.0  # the share of calls that did not answer OK
    client: str = "python"  # the load generator: "python" (loadgen) or "h2load"
    baseline: str = "echo"  # the echo row its ratio is taken against


# --- data ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    orgs: list[str]
    tokens: list[str]  # tokens[i] is the owner of orgs[i]


def seed(url: str, scale: Scale) -> Dataset:
    """Fills the database with SQL (seconds, not minutes): users, tokens, orgs, members,
    modules and versions with one small file each."""
    issued = [tokens.issue() for _ in range(scale.users)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO users (email, display_name)"
            " SELECT 'user' || i || '@bench.example', 'User ' || i FROM generate_series(1, %s) i",
            [scale.users],
        )
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM users WHERE email LIKE '%%@bench.example'"
                " ORDER BY (split_part(substr(email, 5), '@', 1))::int"
            ).fetchall()
        ]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO api_tokens (user_id, token_hash, prefix) VALUES (%s, %s, %s)",
                [(uid, t.digest, t.prefix) for uid, t in zip(ids, issued, strict=True)],
            )
        conn.execute(
            "INSERT INTO organizations (name, display_name, owner_id, quota_tier)"
            " SELECT 'org-' || i, 'Org ' || i, u.id, 'unlimited'"
            " FROM generate_series(1, %s) i"
            " JOIN users u ON u.email = 'user' || i || '@bench.example'",
            [scale.orgs],
        )
        conn.execute(
            "INSERT INTO org_quotas (org_id, tier) SELECT id, 'unlimited' FROM organizations"
        )
        conn.execute(
            "INSERT INTO organization_members (org_id, user_id, role)"
            " SELECT o.id, o.owner_id, 'admin' FROM organizations o"
        )
        conn.execute(
            "INSERT INTO organization_members (org_id, user_id, role)"
            " SELECT o.id, u.id, 'developer' FROM organizations o"
            " JOIN users u ON u.id <> o.owner_id"
            " AND (hashtext(o.id::text || u.id::text) & 127) < 2"
            " ON CONFLICT DO NOTHING"
        )
        conn.execute(
            "INSERT INTO modules (org_id, name, is_public, created_by, description)"
            " SELECT o.id, 'mod-' || m, m %% 2 = 0, o.owner_id, 'Module ' || m"
            " FROM organizations o, generate_series(1, %s) m",
            [scale.modules_per_org],
        )
        conn.execute(
            "INSERT INTO module_versions (org_id, module_id, version, size_bytes, created_by,"
            " digest)"
            " SELECT md.org_id, md.id, '1.0.' || v, 60, md.created_by,"
            " encode(sha256(convert_to(md.id::text || v, 'UTF8')), 'hex')"
            " FROM modules md, generate_series(1, %s) v",
            [scale.versions_per_module],
        )
        conn.execute(
            "INSERT INTO version_files (org_id, version_id, path, content, size_bytes)"
            " SELECT org_id, id, 'bench/v.proto',"
            " 'syntax = \"proto3\";' || chr(10) || 'package bench;' || chr(10), 34"
            " FROM module_versions"
        )
        seed_pull(conn)
        conn.execute("ANALYZE")
    return Dataset(
        orgs=[f"org-{i}" for i in range(1, scale.orgs + 1)], tokens=[t.value for t in issued]
    )


def seed_pull(conn: psycopg.Connection[Any]) -> None:
    """org-1's module ``pulls``, version 1.0.0: PULL_FILES files of about 2 KB each."""
    files = [(f"pull/f{i}.proto", pull_file(i)) for i in range(PULL_FILES)]
    size = sum(len(content.encode()) for _, content in files)
    row = conn.execute(
        "WITH m AS (INSERT INTO modules (org_id, name, created_by, description)"
        " SELECT id, 'pulls', owner_id, 'Pulled' FROM organizations WHERE name = 'org-1'"
        " RETURNING org_id, id, created_by)"
        " INSERT INTO module_versions (org_id, module_id, version, size_bytes, created_by, digest)"
        " SELECT org_id, id, '1.0.0', %s, created_by, %s FROM m RETURNING org_id, id",
        [size, digest(files)],
    ).fetchone()
    assert row is not None
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO version_files (org_id, version_id, path, content, size_bytes)"
            " VALUES (%s, %s, %s, %s, %s)",
            [(row[0], row[1], path, content, len(content.encode())) for path, content in files],
        )


def pull_scenarios(data: Dataset) -> dict[str, tuple[str, list[loadgen.Call]]]:
    """The pull rows: GetVersion of the seeded version, and its cached compiles."""
    org, token = data.orgs[0], data.tokens[0]
    rows = {
        "GetVersion": (
            "/spoke.v1.ModuleService/GetVersion",
            [
                (
                    module_pb2.GetVersionRequest(
                        org=org, module="pulls", version="1.0.0"
                    ).SerializeToString(),
                    token,
                )
            ],
        )
    }
    languages = [[language] for language in sorted(LANGUAGES)] + [[]]
    for wanted in languages:
        label = ", ".join(wanted) or "descriptors"
        rows[f"CompileVersion (cached, {label})"] = (
            "/spoke.v1.ModuleService/CompileVersion",
            [
                (
                    module_pb2.CompileVersionRequest(
                        org=org, module="pulls", version="1.0.0", languages=wanted
                    ).SerializeToString(),
                    token,
                )
            ],
        )
    return rows


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_service(url: str, workers: int, data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    """The service, its address, and its metrics address (read to check h2load's calls)."""
    port, metrics = free_port(), f"127.0.0.1:{free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPOKE_")},
        "DATABASE_URL": url,
        "SPOKE_DATA_DIR": str(data_dir),
        "SPOKE_POOL_MAX_SIZE": "10",
        "SPOKE_METRICS_LISTEN": metrics,
    }
    # Default log settings, as users run it: an access line per call, written to a file.
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "serve.log").open("w")
    process = subprocess.Popen(
        [SPOKE, "serve", "--workers", str(workers), "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()  # the child has its own descriptor
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        if not line:
            raise SystemExit("the service did not start")
        if "serving on" in line:
            return process, f"127.0.0.1:{port}", metrics


def start_echo() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("echo_server.py"))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, f"127.0.0.1:{process.stdout.readline().strip()}"


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(c) for c in found.stdout.split()]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (workers, their protoc processes)."""
    return [pid, *(p for child in children(pid) for p in process_tree(child))]


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        # utime, stime, and cutime, cstime: its children that ended (protoc runs)
        total += sum(int(f) for f in fields[11:15])
    return total / ticks


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# --- the rows ----------------------------------------------------------------------------------


def scenarios(data: Dataset, stamp: str) -> dict[str, tuple[str, list[loadgen.Call]]]:
    """Method and calls per row; writes get calls that never collide."""
    owners = list(zip(data.orgs, data.tokens, strict=False))
    first_org, first_token = owners[0]
    creates = 20_000
    return {
        "GetOrganization": (
            "/spoke.v1.OrganizationService/GetOrganization",
            [
                (organization_pb2.GetOrganizationRequest(org=o).SerializeToString(), t)
                for o, t in owners
            ],
        ),
        "GetCurrentUser": (
            "/spoke.v1.UserService/GetCurrentUser",
            [(user_pb2.GetCurrentUserRequest().SerializeToString(), t) for t in data.tokens],
        ),
        "ListModules": (
            "/spoke.v1.ModuleService/ListModules",
            [
                (module_pb2.ListModulesRequest(org=o, page_size=50).SerializeToString(), t)
                for o, t in owners
            ],
        ),
        "GetUsage": (
            "/spoke.v1.QuotaService/GetUsage",
            [(quota_pb2.GetUsageRequest(org=o).SerializeToString(), t) for o, t in owners],
        ),
        "CreateModule": (
            "/spoke.v1.ModuleService/CreateModule",
            [
                (
                    module_pb2.CreateModuleRequest(
                        org=owners[i % len(owners)][0], name=f"new-{stamp}-{i}"
                    ).SerializeToString(),
                    owners[i % len(owners)][1],
                )
                for i in range(creates)
            ],
        ),
        "CreateVersion": (
            "/spoke.v1.ModuleService/CreateVersion",
            [
                (
                    module_pb2.CreateVersionRequest(
                        org=owners[i % len(owners)][0],
                        module="mod-1",
                        # A pre-release tag that starts with a letter: the stamp's digits
                        # may begin with 0, which a numeric semver part must not.
                        version=f"2.0.{i}-r{stamp}",
                        files=[
                            module_pb2.ProtoFile(
                                path="bench/a.proto", content=PROTO.format(n=i, i=1)
                            ),
                            module_pb2.ProtoFile(
                                path="bench/b.proto", content=PROTO.format(n=i, i=2)
                            ),
                        ],
                    ).SerializeToString(),
                    owners[i % len(owners)][1],
                )
                for i in range(creates)
            ],
        ),
        "CompileVersion (cached)": (
            "/spoke.v1.ModuleService/CompileVersion",
            [
                (
                    module_pb2.CompileVersionRequest(
                        org=first_org, module="mod-1", version="1.0.1", languages=["python"]
                    ).SerializeToString(),
                    first_token,
                )
            ],
        ),
        "CompileVersion (uncached)": (
            "/spoke.v1.ModuleService/CompileVersion",
            [
                (
                    module_pb2.CompileVersionRequest(
                        org=o, module=f"mod-{m}", version=f"1.0.{v}", languages=["python"]
                    ).SerializeToString(),
                    t,
                )
                for o, t in owners
                for m in range(1, 3)
                for v in range(1, 3)
            ],
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run")
    args = parser.parse_args()
    scale = QUICK if args.quick else FULL
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="spoke-bench-"))
    tmp.chmod(0o755)
    admin_url = harness.admin_url(tmp / "pg")
    url = harness.create_database(admin_url, prefix="spoke_bench")
    services: list[subprocess.Popen[str]] = []
    try:
        migrations.apply(url, REPO_ROOT / "migrations")
        data = seed(url, scale)
        print(f"seeded in {time.monotonic() - started:.0f}s", file=sys.stderr)
        echo, echo_address = start_echo()
        services.append(echo)
        stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")
        rows: list[Row] = []
        memory: dict[str, int] = {}
        for workers in (1,) if args.quick else (1, 2):
            service, address, metrics = start_service(url, workers, tmp / f"data-{workers}")
            services.append(service)
            worker = children(service.pid)[0]
            baseline = measure(
                "echo",
                echo_address,
                ECHO_METHOD,
                [(b"\x0a\x05org-1", "")],
                scale,
                echo.pid,
                workers,
            )
            rows.append(baseline)
            chosen = scenarios(data, f"{stamp}{workers}")
            names = list(chosen) if workers == 1 else ["GetOrganization", "GetCurrentUser"]
            for name in names:
                method, calls = chosen[name]
                if not supported(address, method, calls[-1]):
                    print(f"skipping {name}: not implemented by this server", file=sys.stderr)
                    continue
                row = measure(name, address, method, calls, scale, service.pid, workers)
                row.ratio = row.calls_per_second / baseline.calls_per_second
                rows.append(row)
            if h2load.binary() is not None:
                rows += measure_reads_with_h2load(
                    chosen,
                    pull_scenarios(data),
                    address,
                    metrics,
                    echo_address,
                    echo.pid,
                    service.pid,
                    workers,
                    scale,
                )
            if workers == 1:
                memory = measure_memory(address, chosen["GetOrganization"][1], worker, scale)
            service.terminate()
            service.wait(60)
        counted = count_statements(url, data, stamp)
        for row in rows:
            row.statements_per_call = counted.get(row.rpc)
        report(rows, memory, time.monotonic() - started, args.quick)
    finally:
        for service in services:
            if service.poll() is None:
                service.terminate()
                service.wait(60)
        harness.drop_database(admin_url, url)
    return 0


# Rows h2load drives: reads, whose one repeated request stays valid (writes must not repeat).
H2LOAD_ROWS = ("GetOrganization", "GetCurrentUser", "ListModules", "GetUsage")


def measure_reads_with_h2load(
    chosen: dict[str, tuple[str, list[loadgen.Call]]],
    pulls: dict[str, tuple[str, list[loadgen.Call]]],
    address: str,
    metrics: str,
    echo_address: str,
    echo_pid: int,
    service_pid: int,
    workers: int,
    scale: Scale,
) -> list[Row]:
    """The read rows again, driven by h2load, with an echo baseline of its own; then the
    pull rows."""
    echo_call = (b"\x0a\x05org-1", "")
    baseline = measure_h2load(
        "echo", echo_address, ECHO_METHOD, echo_call, scale, echo_pid, workers, None
    )
    rows = [baseline]
    for name in H2LOAD_ROWS if workers == 1 else H2LOAD_ROWS[:2]:
        method, calls = chosen[name]
        row = measure_h2load(name, address, method, calls[0], scale, service_pid, workers, metrics)
        row.ratio = row.calls_per_second / baseline.calls_per_second
        rows.append(row)
    return rows + measure_pulls(
        pulls, address, metrics, echo_address, echo_pid, service_pid, workers, scale
    )


def measure_pulls(
    pulls: dict[str, tuple[str, list[loadgen.Call]]],
    address: str,
    metrics: str,
    echo_address: str,
    echo_pid: int,
    service_pid: int,
    workers: int,
    scale: Scale,
) -> list[Row]:
    """The pull rows under h2load, each against an echo row answering as many bytes as it
    does (``echo-20k`` for GetVersion's 20 KB)."""
    rows: list[Row] = []
    baselines: dict[int, Row] = {}
    for name, (method, calls) in pulls.items():
        # Once before: the first compile runs protoc; the row measures the answers kept.
        size = response_size(address, method, calls[0])
        kib = round(size / 1024)
        baseline = baselines.get(kib)
        if baseline is None:
            baseline = baselines[kib] = measure_h2load(
                f"echo-{kib}k",
                echo_address,
                SIZED_METHOD,
                (str(size).encode(), ""),
                scale,
                echo_pid,
                workers,
                None,
            )
            rows.append(baseline)
        print(f"{name}: {size} bytes a response", file=sys.stderr)
        row = measure_h2load(name, address, method, calls[0], scale, service_pid, workers, metrics)
        row.ratio = row.calls_per_second / baseline.calls_per_second
        row.baseline = baseline.rpc
        rows.append(row)
    return rows


def response_size(address: str, method: str, call: loadgen.Call) -> int:
    """The size of the response to one call (which must succeed)."""
    body, token = call
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        response = stub(body, metadata=(("authorization", f"Bearer {token}"),), timeout=120)
    return len(response)


def supported(address: str, method: str, call: loadgen.Call) -> bool:
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return _answers(stub, call)


def measure(
    name: str,
    address: str,
    method: str,
    calls: list[loadgen.Call],
    scale: Scale,
    root: int,
    workers: int,
) -> Row:
    """Drives one row with the Python load generator (``loadgen``)."""
    return _measured(
        name,
        root,
        workers,
        lambda: loadgen.run(
            address, method, calls, seconds=scale.seconds, warmup=scale.seconds / 4
        ),
    )


def measure_h2load(
    name: str,
    address: str,
    method: str,
    call: loadgen.Call,
    scale: Scale,
    root: int,
    workers: int,
    metrics: str | None,
) -> Row:
    """Drives one row with h2load, one request repeated. h2load sees HTTP statuses only: the
    gRPC codes are read from the service's metrics (``metrics``; None for the echo server,
    which answers every call)."""

    def drive() -> loadgen.Result:
        before = grpc_codes(metrics, method)
        result = h2load.run(
            address, method, call[0], call[1], seconds=scale.seconds, warmup=scale.seconds / 4
        )
        if metrics is not None:
            answered = grpc_codes(metrics, method) - before  # warm-up included: scale down
            # h2load resets the streams still in flight when its time is up: the server
            # records those as CANCELLED; h2load does not count them.
            del answered["CANCELLED"]
            total = sum(answered.values()) or 1
            result.codes = Counter(
                {code: round(result.calls * n / total) for code, n in answered.items()}
            )
        return result

    row = _measured(name, root, workers, drive)
    row.client = "h2load"
    return row


def grpc_codes(metrics: str | None, method: str) -> Counter[str]:
    """``spoke_rpc_calls_total`` of ``method`` by code, summed over the workers."""
    codes: Counter[str] = Counter()
    if metrics is None:
        return codes
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "spoke_rpc_calls_total" and sample.labels.get(
                "method"
            ) == method.lstrip("/"):
                codes[sample.labels["code"]] += int(sample.value)
    return codes


def _measured(name: str, root: int, workers: int, drive: Callable[[], loadgen.Result]) -> Row:
    """One row; CPU is the whole process tree's under ``root``, read before and after
    (processes that come and go meanwhile, such as protoc runs, are counted while alive)."""
    pids = process_tree(root)
    before = cpu_seconds(pids)
    clock = time.monotonic()
    result = drive()
    wall = time.monotonic() - clock
    used = cpu_seconds(process_tree(root)) - before
    wrong = {code: n for code, n in result.codes.items() if code not in _EXPECTED_CODES}
    if wrong:  # a bad request in the scenario, not a property of the service
        raise RuntimeError(f"{name}: calls failed: {wrong} (of {result.calls})")
    # CPU over the whole run (warm-up included) per OK call made in it, estimated from the
    # rate: what refused calls cost is charged to the work that was done.
    made = result.ok_rate * wall
    return Row(
        rpc=name,
        workers=workers,
        calls_per_second=result.ok_rate,
        p50_ms=result.percentile(0.5) * 1e3,
        p99_ms=result.percentile(0.99) * 1e3,
        cpu_us_per_call=used / made * 1e6 if made else 0.0,
        statements_per_call=None,
        ratio=1.0,
        codes=dict(result.codes),
        refused=result.refused,
    )


def measure_memory(
    address: str, calls: list[loadgen.Call], pid: int, scale: Scale
) -> dict[str, int]:
    """RSS of the worker ``pid`` after ``scale.memory_calls[0]`` and after ``[1]`` calls."""
    first, second = scale.memory_calls

    def drive(count: int) -> None:
        done = 0
        while done < count:
            result = loadgen.run(
                address,
                "/spoke.v1.OrganizationService/GetOrganization",
                calls,
                seconds=2.0,
                warmup=0.0,
            )
            done += max(1, result.calls)

    drive(first)
    after_first = rss_kib(pid)
    drive(second - first)
    return {
        f"rss_kib_after_{first}": after_first,
        f"rss_kib_after_{second}": rss_kib(pid),
    }


def count_statements(url: str, data: Dataset, stamp: str) -> dict[str, float]:
    """Statements per call for each row, sequential calls through the protocol counter."""
    proxy = CountingProxy(url)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    async def make() -> SpokeServer:
        return SpokeServer(Settings(health_check_interval_seconds=3600), proxy.url)

    server = run(make())
    port = run(server.start("127.0.0.1:0"))
    counted: dict[str, float] = {}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            every = {**scenarios(data, f"{stamp}c"), **pull_scenarios(data)}
            for name, (method, calls) in every.items():
                stub = channel.unary_unary(
                    method, request_serializer=None, response_deserializer=None
                )
                if not _answers(stub, calls[-1]):
                    continue
                # Reads: warm on the calls measured (caches, prepared statements), as a
                # service in steady state is; the others: distinct calls, never repeated.
                n = 100
                if name in DISTINCT:
                    warm, measured = calls[1 : 1 + n], calls[1 + n : 1 + 2 * n]
                else:
                    warm = measured = [calls[i % len(calls)] for i in range(n)]
                for call in warm:
                    _answers(stub, call)
                with proxy._tally_lock:
                    proxy.tally.clear()
                failed = Counter(c for c in (_code(stub, call) for call in measured) if c != "OK")
                if failed:  # statements of refused calls would say nothing about the RPC
                    raise RuntimeError(f"{name}: measured calls failed: {dict(failed)}")
                with proxy._tally_lock:
                    counted[name] = proxy.tally.get("statements", 0) / n
    finally:
        run(server.stop(0))
        loop.call_soon_threadsafe(loop.stop)
        proxy.close()
    return counted


def _code(stub: Any, call: loadgen.Call) -> str:
    """Makes one call; its status code's name."""
    body, token = call
    try:
        stub(body, metadata=(("authorization", f"Bearer {token}"),), timeout=60)
    except grpc.RpcError as exc:
        return str(exc.code().name)  # type: ignore[attr-defined]
    return "OK"


def _answers(stub: Any, call: loadgen.Call) -> bool:
    """Makes one call; False when the server does not implement the method."""
    return _code(stub, call) != "UNIMPLEMENTED"


def report(rows: list[Row], memory: dict[str, int], seconds: float, quick: bool) -> None:
    print(
        f"{'rpc':<28}{'client':>8}{'workers':>8}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'cpu us/call':>13}{'stmts/call':>12}{'refused':>9}"
    )
    for row in rows:
        statements = "-" if row.statements_per_call is None else f"{row.statements_per_call:.2f}"
        print(
            f"{row.rpc:<28}{row.client:>8}{row.workers:>8}{row.calls_per_second:>10.0f}"
            f"{row.p50_ms:>9.2f}"
            f"{row.p99_ms:>9.2f}{row.cpu_us_per_call:>13.0f}{statements:>12}"
            f"{row.refused:>9.0%}"
        )
    for row in rows:
        if not row.rpc.startswith("echo"):
            label = row.rpc.replace(" ", "")
            notes = [f"workers={row.workers}"] if row.workers != 1 else []
            notes += ["h2load"] if row.client == "h2load" else []
            suffix = f" ({', '.join(notes)})" if notes else ""
            print(f"ratio {label}/{row.baseline} = {row.ratio:.2f}{suffix}")
    for key, value in memory.items():
        print(f"{key} = {value}")
    if len(memory) == 2:
        first, second = memory.values()
        print(f"rss growth = {(second - first) / first * 100:+.1f}%")
    print(f"({'quick' if quick else 'full'} run in {seconds:.0f}s on {os.cpu_count()} cores)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}{'-quick' if quick else ''}.json"
    path.write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "quick": quick,
                "rows": [asdict(r) for r in rows],
                "memory": memory,
                "seconds": seconds,
            },
            indent=2,
        )
    )
    print(f"wrote {path.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
