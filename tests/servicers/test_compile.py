"""CompileVersion (issue 8) and its compile-job quota (issue 9, item 3), through the real server.

Versions carry a unique marker in a comment, so that the session-wide server's build cache
never answers one test with another's build.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb
from spoke.v1 import organization_pb2 as opb
from spoke.v1 import quota_pb2 as qpb

from spoke_grpc.compiler import Compiler
from spoke_grpc.config import Settings
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import Client, ServerThread, failure
from tests.servicers.test_modules import create_module, create_org, push


def marker() -> str:
    return uuid.uuid4().hex[:12]


def money(package: str, tag: str) -> str:
    return (
        f'syntax = "proto3";\n// {tag}\npackage {package};\n'
        "// An amount of money in one currency.\n"
        "message Money {\n  string currency = 1;\n  int64 units = 2;\n}\n"
    )


def invoice(package: str, money_path: str, money_package: str, tag: str) -> str:
    return (
        f'syntax = "proto3";\n// {tag}\npackage {package};\n'
        f'import "{money_path}";\nimport "google/protobuf/timestamp.proto";\n'
        "// An invoice.\n"
        f"message Invoice {{\n  string id = 1;\n  {money_package}.Money total = 2;\n"
        "  google.protobuf.Timestamp due = 3;\n}\n"
        "service Invoices {\n  rpc GetInvoice(Invoice) returns (Invoice);\n}\n"
    )


class Billing:
    """A `common` module (public) and a `billing` module whose version depends on it."""

    def __init__(self, client: Client, org: str = "acme", suffix: str = "") -> None:
        self.tag = marker()
        self.ns = f"t{self.tag}"  # unique paths and packages: generated code is imported
        self.client = client
        self.org = org
        self.common, self.billing = f"common{suffix}", f"billing{suffix}"
        self.money_path = f"{self.ns}/common/v1/money.proto"
        self.invoice_path = f"{self.ns}/billing/v1/invoice.proto"
        create_module(client, org, self.common, is_public=True)
        money_file = {self.money_path: money(f"{self.ns}.common.v1", "c")}
        push(client, org, self.common, "1.0.0", money_file)
        create_module(client, org, self.billing)
        content = invoice(
            f"{self.ns}.billing.v1", self.money_path, f"{self.ns}.common.v1", self.tag
        )
        self.version = push(
            client,
            org,
            self.billing,
            "1.0.0",
            {self.invoice_path: content},
            deps=[(org, self.common, "1.0.0")],
        )

    def compile(self, *languages: str, client: Client | None = None) -> pb.CompileVersionResponse:
        request = pb.CompileVersionRequest(
            org=self.org, module=self.billing, version="1.0.0", languages=languages
        )
        response: pb.CompileVersionResponse = (client or self.client).modules.CompileVersion(
            request
        )
        return response


def compiler_of(server: ServerThread) -> Compiler:
    return server.server.compiler


def compile_jobs_used(client: Client, org: str) -> int:
    usage = client.quotas.GetUsage(qpb.GetUsageRequest(org=org)).usage
    return int(usage.compile_jobs)


def job_rows(db: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT kind, module_name, version, languages, outcome FROM compile_jobs"
        " ORDER BY created_at, id"
    ).fetchall()


@pytest.fixture
def acme(users: Users) -> Client:
    owner = users.create("owner")
    create_org(owner, "acme")
    return owner


# --- What a compile returns ------------------------------------------------------------------


def test_the_descriptor_set_has_every_import_and_source_info_and_loads_into_a_fresh_pool(
    acme: Client,
) -> None:
    billing = Billing(acme)
    response = billing.compile()
    assert list(response.files) == []  # no language: descriptors only
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(response.descriptor_set)
    names = [f.name for f in descriptors.file]
    assert sorted(names) == sorted(
        [billing.invoice_path, billing.money_path, "google/protobuf/timestamp.proto"]
    )
    # Each file after its imports, so a pool can take them in order.
    assert names.index(billing.invoice_path) > names.index(billing.money_path)
    own = next(f for f in descriptors.file if f.name == billing.invoice_path)
    comments = [loc.leading_comments for loc in own.source_code_info.location]
    assert " An invoice.\n" in comments
    pool = descriptor_pool.DescriptorPool()
    for file in descriptors.file:
        pool.Add(file)
    invoice_type = pool.FindMessageTypeByName(f"{billing.ns}.billing.v1.Invoice")
    assert [f.name for f in invoice_type.fields] == ["id", "total", "due"]
    message = message_factory.GetMessageClass(invoice_type)(id="inv-1")
    message.total.units = 42
    parsed = message_factory.GetMessageClass(invoice_type).FromString(message.SerializeToString())
    assert (parsed.id, parsed.total.units) == ("inv-1", 42)
    service = pool.FindServiceByName(f"{billing.ns}.billing.v1.Invoices")
    assert service.methods_by_name["GetInvoice"].input_type is invoice_type


def test_generated_python_imports_and_builds_messages(acme: Client, tmp_path: Path) -> None:
    billing = Billing(acme)
    response = billing.compile("python", "python")  # listed twice: generated once
    paths = sorted((f.language, f.path) for f in response.files)
    base = billing.invoice_path.removesuffix(".proto")
    assert paths == [
        ("python", f"{base}_pb2.py"),
        ("python", f"{base}_pb2.pyi"),
        ("python", f"{base}_pb2_grpc.py"),
    ]
    for file in response.files:
        target = tmp_path / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.content)
    # The dependency's generated code comes from compiling the dependency itself.
    common = acme.modules.CompileVersion(
        pb.CompileVersionRequest(org="acme", module="common", version="1.0.0", languages=["python"])
    )
    for file in common.files:
        target = tmp_path / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.content)
    sys.path.insert(0, str(tmp_path))
    try:
        module_name = base.replace("/", ".") + "_pb2"
        generated = importlib.import_module(module_name)
        stubs = importlib.import_module(module_name + "_grpc")
        message = generated.Invoice(id="inv-7")
        message.total.currency = "EUR"
        message.due.seconds = 1_700_000_000
        again = generated.Invoice.FromString(message.SerializeToString())
        assert (again.id, again.total.currency, again.due.seconds) == (
            "inv-7",
            "EUR",
            1_700_000_000,
        )
        assert hasattr(stubs, "InvoicesStub")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith(billing.ns)]:
            del sys.modules[name]


def test_unknown_languages_are_invalid_and_name_the_supported_ones(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    billing = Billing(acme)
    error = failure(lambda: billing.compile("python", "cobol"))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == {
        "languages[1]": "'cobol' is not a supported language; supported: cpp, csharp, go, java,"
        " javascript, kotlin, objc, php, python, ruby, rust, typescript"
    }
    assert job_rows(db) == []
    assert compile_jobs_used(acme, "acme") == 0


def test_who_may_compile(acme: Client, users: Users, anonymous: Client) -> None:
    billing = Billing(acme)
    org_id = acme.orgs.GetOrganization(opb.GetOrganizationRequest(org="acme")).organization.id
    viewer, developer, stranger = users.create(), users.create(), users.create()
    users.join(org_id, viewer, Role.VIEWER)
    users.join(org_id, developer, Role.DEVELOPER)
    assert billing.compile(client=developer).descriptor_set
    assert failure(lambda: billing.compile(client=viewer)).code is grpc.StatusCode.PERMISSION_DENIED
    assert failure(lambda: billing.compile(client=stranger)).code is grpc.StatusCode.NOT_FOUND
    missing = failure(
        lambda: acme.modules.CompileVersion(
            pb.CompileVersionRequest(org="acme", module="billing", version="9.9.9")
        )
    )
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert missing.message == "version 'billing@9.9.9' not found"
    code = failure(lambda: billing.compile(client=anonymous)).code
    assert code is grpc.StatusCode.UNAUTHENTICATED


# --- Determinism and the cache ---------------------------------------------------------------


def test_compiles_are_deterministic_and_a_repeat_runs_no_protoc(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    billing = Billing(acme)
    compiler = compiler_of(server)
    runs = compiler.protoc_runs
    first = billing.compile("python")
    assert compiler.protoc_runs == runs + 1
    second = billing.compile("python")
    assert compiler.protoc_runs == runs + 1  # the cache answered
    assert second.SerializeToString() == first.SerializeToString()
    # Compiled afresh (caches emptied: the builds, and the responses kept whole), the bytes
    # are the same too.
    server.run(clear(server))
    third = billing.compile("python")
    assert compiler.protoc_runs == runs + 2
    assert third.SerializeToString() == first.SerializeToString()
    # Another language set is another build.
    assert billing.compile().descriptor_set == first.descriptor_set
    assert compiler.protoc_runs == runs + 3
    # A cache hit is a download, not a compile job: not counted, not recorded.
    assert [row[4] for row in job_rows(db)] == ["compiled", "compiled", "compiled"]
    assert job_rows(db)[0][:4] == ("compile", "billing", "1.0.0", ["python"])
    assert compile_jobs_used(acme, "acme") == 3


def test_a_cache_hit_is_a_download_not_a_compile_job(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    """No quota, no job row, no audit event, no worker: only the reads."""
    billing = Billing(acme)
    billing.compile("python")

    def written() -> tuple[Any, ...]:
        row = db.execute(
            "SELECT (SELECT count(*) FROM compile_jobs),"
            " (SELECT count(*) FROM audit_events WHERE method LIKE '%CompileVersion')"
        ).fetchone()
        assert row is not None
        return (*row, compile_jobs_used(acme, "acme"))

    before, runs = written(), compiler_of(server).protoc_runs
    assert billing.compile("python").files
    assert written() == before == (1, 1, 1)
    assert compiler_of(server).protoc_runs == runs


def test_concurrent_compiles_of_one_version_share_one_protoc_run(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    billing = Billing(acme)
    compiler = compiler_of(server)
    runs = compiler.protoc_runs
    request = pb.CompileVersionRequest(
        org="acme", module=billing.billing, version="1.0.0", languages=["python"]
    )
    calls = [acme.modules.CompileVersion.future(request) for _ in range(4)]
    answers = {call.result().SerializeToString() for call in calls}
    assert len(answers) == 1
    assert compiler.protoc_runs == runs + 1
    assert [row[4] for row in job_rows(db)] == ["compiled"]  # the others joined: downloads


async def clear(server: ServerThread) -> None:
    server.server.compiler.cache.clear()
    server.server.responses.clear()


def test_the_cache_is_bounded_by_entries_and_bytes() -> None:
    from spoke_grpc.compiler import Build, BuildCache

    cache = BuildCache(max_entries=2, max_bytes=400)
    for key in ("a", "b", "c"):
        cache.put(key, Build(b"x" * 50, ()))
    assert (len(cache), cache.get("a"), cache.size_bytes) == (2, None, 100)  # oldest out
    assert cache.get("b") is not None  # now the most recently used
    cache.put("d", Build(b"x" * 90, ()))
    assert cache.get("c") is None and cache.get("b") is not None
    cache.put("huge", Build(b"x" * 101, ()))  # over a quarter of the bytes: not kept
    assert cache.get("huge") is None and len(cache) == 2
    cache = BuildCache(max_entries=10, max_bytes=400)
    for i in range(5):
        cache.put(str(i), Build(b"x" * 100, ()))
    assert cache.size_bytes <= 400 and len(cache) == 4


# --- The bounded pool ------------------------------------------------------------------------


def hold_every_slot(server: ServerThread, seconds: float) -> list[Future[Any]]:
    """Fills the compiler's workers with jobs that sleep ``seconds`` and its queue with
    short ones behind them."""
    compiler = compiler_of(server)
    held = [
        asyncio.run_coroutine_threadsafe(
            compiler.offload(time.sleep, seconds if i < compiler.workers else 0.01), server.loop
        )
        for i in range(compiler.capacity)
    ]
    deadline = time.monotonic() + 5
    while compiler.in_flight < compiler.capacity:
        assert time.monotonic() < deadline, "the slots were never all taken"
        time.sleep(0.005)
    return held


def test_a_full_queue_refuses_at_once_with_retry_info_and_counts_nothing(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    warm, cold = Billing(acme), Billing(acme, suffix="2")
    warm.compile()  # cached from here on
    before = compile_jobs_used(acme, "acme")
    held = hold_every_slot(server, 1.5)
    try:
        error = failure(lambda: cold.compile())
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.error_info.reason == "COMPILER_BUSY"
        assert "the compiler is busy" in error.message
        assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 1
        # While the pool is full: a cached build is still answered, and so are other calls.
        assert warm.compile().descriptor_set
        acme.orgs.GetOrganization(opb.GetOrganizationRequest(org="acme"))
        assert all(not f.done() for f in held)  # all of this while the slots were held
    finally:
        for future in held:
            future.result(timeout=10)
    assert compile_jobs_used(acme, "acme") == before  # the refusal counted nothing
    assert [row[4] for row in job_rows(db)] == ["compiled"]  # the cache hit neither
    assert cold.compile().descriptor_set  # the slots are free again


def test_a_push_while_the_compile_pool_is_full_is_refused_at_once_and_stores_nothing(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    """A push compiles its files: when every worker and queue slot is taken it is refused
    (retry later) rather than holding its pool connection while it waits its turn."""
    tag = marker()
    create_module(acme, "acme", "queued")
    files = {f"t{tag}/q.proto": money(f"t{tag}", tag)}
    usage_before = acme.quotas.GetUsage(qpb.GetUsageRequest(org="acme")).usage
    held = hold_every_slot(server, 1.5)
    try:
        error = failure(lambda: push(acme, "acme", "queued", "1.0.0", files))
        assert all(not f.done() for f in held)  # refused while the slots were held
    finally:
        for future in held:
            future.result(timeout=10)
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.error_info.reason == "COMPILER_BUSY"
    assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 1
    stored = db.execute(
        "SELECT count(*) FROM module_versions v"
        " JOIN modules m ON (m.org_id, m.id) = (v.org_id, v.module_id) WHERE m.name = 'queued'"
    ).fetchone()
    assert stored == (0,)
    usage = acme.quotas.GetUsage(qpb.GetUsageRequest(org="acme")).usage
    assert (usage.versions, usage.storage_bytes) == (
        usage_before.versions,
        usage_before.storage_bytes,
    )
    assert push(acme, "acme", "queued", "1.0.0", files).version == "1.0.0"  # free again


@pytest.fixture
def slow_server(settings: Settings, database_url: str) -> Iterator[ServerThread]:
    """A second server on the same database whose compiles may run 10 ms."""
    limited = dataclasses.replace(settings, compile_time_limit_seconds=0.01)
    thread = ServerThread(limited, database_url)
    yield thread
    thread.stop()


def big_proto(package: str, messages: int) -> str:
    body = "\n".join(
        f"message M{i} {{ string a = 1; int64 b = 2; repeated M{max(i - 1, 0)} c = 3;"
        f" map<string, int32> d = 4; }}"
        for i in range(messages)
    )
    return f'syntax = "proto3";\npackage {package};\n{body}\n'


def test_a_compile_over_the_time_limit_is_stopped_and_reported(
    acme: Client, slow_server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    tag = marker()
    create_module(acme, "acme", "big")
    push(acme, "acme", "big", "1.0.0", {f"t{tag}/big.proto": big_proto(f"t{tag}", 800)})
    with grpc.insecure_channel(slow_server.address) as channel:
        slow = Client(channel, acme.token)
        error = failure(
            lambda: slow.modules.CompileVersion(
                pb.CompileVersionRequest(
                    org="acme", module="big", version="1.0.0", languages=["python"]
                )
            )
        )
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.error_info.reason == "COMPILE_TIME_LIMIT_EXCEEDED"
    assert error.message.startswith("compiling acme/big@1.0.0 took longer than the server's")
    assert compiler_of(slow_server).in_flight == 0
    # The job is recorded with its outcome, after the rollback; it is not counted.
    assert job_rows(db) == [("compile", "big", "1.0.0", ["python"], "timed_out")]
    assert compile_jobs_used(acme, "acme") == 0


def test_other_calls_keep_answering_during_a_burst_of_compiles(
    acme: Client, server: ServerThread
) -> None:
    """Bound: GetOrganization's slowest call during the burst stays under 1 s (p50s printed).

    The burst: 10 versions (300 messages each, with Python code) compiled at once, more than
    the workers and queue take (the rest are refused, busy), plus repeats of two of them."""
    tag = marker()
    create_module(acme, "acme", "burst")
    versions = [f"1.0.{i}" for i in range(10)]
    for i, version in enumerate(versions):
        push(acme, "acme", "burst", version, {f"t{tag}/b.proto": big_proto(f"t{tag}.v{i}", 300)})

    def get_org() -> float:
        started = time.perf_counter()
        acme.orgs.GetOrganization(opb.GetOrganizationRequest(org="acme"))
        return time.perf_counter() - started

    quiet = [get_org() for _ in range(20)]

    def compile_one(version: str) -> str:
        try:
            response = acme.modules.CompileVersion(
                pb.CompileVersionRequest(
                    org="acme", module="burst", version=version, languages=["python"]
                )
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)  # type: ignore[attr-defined]
        # Every version has the same path: each compile saw its own file, no other's.
        files = descriptor_pb2.FileDescriptorSet.FromString(response.descriptor_set).file
        assert [f.package for f in files] == [f"t{tag}.v{versions.index(version)}"]
        return "OK"

    calls = [*versions, *versions[:2]]
    with ThreadPoolExecutor(len(calls)) as pool:
        burst = [pool.submit(compile_one, v) for v in calls]
        busy: list[float] = []
        while not all(f.done() for f in burst) or len(busy) < 5:
            busy.append(get_org())
        outcomes = [f.result() for f in burst]
    assert set(outcomes) <= {"OK", "RESOURCE_EXHAUSTED"} and "OK" in outcomes
    print(
        f"GetOrganization p50 {statistics.median(quiet) * 1e3:.1f} ms quiet,"
        f" {statistics.median(busy) * 1e3:.1f} ms during {len(outcomes)} compiles"
        f" ({outcomes.count('OK')} answered, the others busy),"
        f" max {max(busy) * 1e3:.1f} ms over {len(busy)} calls"
    )
    assert max(busy) < 1.0


def test_compile_settings_come_from_the_environment() -> None:
    assert Settings.from_env({}).compile_queue is None  # twice the workers
    settings = Settings.from_env(
        {
            "SPOKE_COMPILE_WORKERS": "3",
            "SPOKE_COMPILE_QUEUE": "0",
            "SPOKE_COMPILE_TIME_LIMIT": "2.5",
            "SPOKE_COMPILE_CACHE_ENTRIES": "10",
            "SPOKE_COMPILE_CACHE_BYTES": "1048576",
        }
    )
    assert (
        settings.compile_workers,
        settings.compile_queue,
        settings.compile_time_limit_seconds,
        settings.compile_cache_entries,
        settings.compile_cache_bytes,
    ) == (3, 0, 2.5, 10, 2**20)
    assert Compiler(2).capacity == 6 and Compiler(3, queue=0).capacity == 3
    assert (settings.generators_path, settings.compile_sandbox) == (None, "auto")
    located = Settings.from_env(
        {"SPOKE_GENERATORS_PATH": "/opt/gen:tools", "SPOKE_COMPILE_SANDBOX": "None"}
    )
    assert located.generators_path == ("/opt/gen", str(Path("tools").resolve()))
    assert located.compile_sandbox == "none"


# --- The compile-job quota -------------------------------------------------------------------


def set_compile_limit(admin: Client, org: str, limit: int) -> None:
    admin.quotas.UpdateQuotas(
        qpb.UpdateQuotasRequest(
            org=org,
            quotas=qpb.Quotas(max_compile_jobs_per_month=limit),
            update_mask=FieldMask(paths=["max_compile_jobs_per_month"]),
        )
    )


def test_compile_jobs_per_month_at_the_boundary(
    admin: Client, acme: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    billing = Billing(acme)
    set_compile_limit(admin, "acme", 2)
    billing.compile()  # limit - 1 after it
    assert compile_jobs_used(acme, "acme") == 1
    billing.compile("python")  # the limit is reached
    assert compile_jobs_used(acme, "acme") == 2
    # Over the limit, a build the cache holds is a download: no job, no quota.
    assert billing.compile().descriptor_set
    assert compile_jobs_used(acme, "acme") == 2
    server.run(clear(server))
    error = failure(lambda: billing.compile())
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.message == "compile jobs per month quota exceeded: 2 of 2 used"
    assert error.error_info.reason == "RATE_LIMIT_EXCEEDED"
    assert dict(error.error_info.metadata) == {
        "quota": "compile_jobs_per_month",
        "limit": "2",
        "current": "2",
    }
    assert error.detail(error_details_pb2.QuotaFailure).violations[0].subject == (
        "organizations/acme"
    )
    # Retry when the UTC month ends.
    row = db.execute(
        "SELECT extract(epoch FROM date_trunc('month', now()) + interval '1 month' - now())"
    ).fetchone()
    assert row is not None
    retry = error.detail(error_details_pb2.RetryInfo).retry_delay.seconds
    assert abs(retry - float(row[0])) < 60
    # The refused build ran no protoc, and counted and recorded nothing.
    assert compile_jobs_used(acme, "acme") == 2
    assert [row[4] for row in job_rows(db)] == ["compiled", "compiled"]
    set_compile_limit(admin, "acme", 3)
    billing.compile()  # room again


def test_a_version_whose_dependency_was_deleted_cannot_be_compiled(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    billing = Billing(acme)
    acme.modules.DeleteModule(pb.DeleteModuleRequest(org="acme", module="common", force=True))
    error = failure(lambda: billing.compile())
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert (violation.type, violation.subject) == ("DEPENDENCY_DELETED", "acme/billing@1.0.0")
    assert "acme/common@1.0.0" in violation.description
    assert job_rows(db) == []
