"""Traces (issue 11, item 3): a span per call with a child span per SQL statement, the
caller's W3C traceparent honoured, exported over OTLP when the OTEL_* settings ask for it
and entirely off otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import psycopg
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from spoke.v1 import module_pb2, module_pb2_grpc, user_pb2

from spoke_grpc import tracing
from spoke_grpc.config import ConfigError, Settings
from tests.harness import Client, ServerThread, failure
from tests.operating import Dedicated, dedicated_server
from tests.servicers.test_modules import create_module, create_org, proto

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
CREATE_VERSION = "/spoke.v1.ModuleService/CreateVersion"


def finished(exported: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    """The finished spans called ``name``, waiting a little for the first."""
    deadline = time.monotonic() + 5
    while not (spans := [s for s in exported.get_finished_spans() if s.name == name]):
        assert time.monotonic() < deadline, f"no span {name}"
        time.sleep(0.01)
    return spans


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(
    pg_admin_url: str, template_url: str, tmp_path: Path, exported: InMemorySpanExporter
) -> Iterator[Dedicated]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    settings = Settings(compile_workers=1)
    with dedicated_server(
        pg_admin_url, template_url, tmp_path, settings, tracer_provider=provider
    ) as dedicated:
        yield dedicated
    provider.shutdown()


def test_create_version_is_one_span_with_sql_children_under_the_callers_traceparent(
    traced: Dedicated, exported: InMemorySpanExporter
) -> None:
    admin = traced.admin
    org = create_org(admin, "traced")
    create_module(admin, org, "common")
    exported.clear()
    content = proto("a.v1", "message TracedContentMarker {}")
    request = module_pb2.CreateVersionRequest(
        org=org,
        module="common",
        version="v1.0.0",
        files=[module_pb2.ProtoFile(path="a/v1/a.proto", content=content)],
    )
    traceparent = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
    module_pb2_grpc.ModuleServiceStub(admin.channel).CreateVersion(
        request, metadata=[*admin.metadata(), ("traceparent", traceparent)], timeout=30
    )

    spans = exported.get_finished_spans()
    [call] = [s for s in spans if s.name == CREATE_VERSION]
    assert call.kind is SpanKind.SERVER
    assert call.parent is not None and call.parent.is_remote
    assert (call.parent.trace_id, call.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert call.context is not None and call.context.trace_id == TRACE_ID
    assert call.attributes is not None
    assert call.attributes["rpc.method"] == "CreateVersion"
    assert call.attributes["rpc.grpc.status_code"] == 0
    assert len(str(call.attributes["spoke.request_id"])) == 32

    statements = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(statements) >= 3  # caller and org, the version's rows, the audit event
    for statement in statements:
        assert statement.parent is not None
        assert statement.parent.span_id == call.context.span_id
        assert statement.attributes is not None
        assert statement.attributes["db.system"] == "postgresql"
    texts = [str(s.attributes.get("db.statement", "")) for s in statements if s.attributes]
    assert any("INSERT" in text for text in texts)
    # Statements are recorded without their parameters: no file content in any span.
    assert not any("TracedContentMarker" in str(dict(s.attributes or {})) for s in spans)


def test_a_failed_call_span_records_its_status(
    traced: Dedicated, exported: InMemorySpanExporter
) -> None:
    anonymous = Client(traced.admin.channel)
    failure(lambda: anonymous.users.GetCurrentUser(user_pb2.GetCurrentUserRequest()))
    # grpc sends an error status as the call aborts, a moment before its span ends.
    [call] = finished(exported, "/spoke.v1.UserService/GetCurrentUser")
    assert call.parent is None  # no traceparent: a trace of its own
    assert call.attributes is not None
    assert call.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


def test_health_checks_are_not_traced(traced: Dedicated, exported: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health_pb2_grpc.HealthStub(traced.admin.channel).Check(
        health_pb2.HealthCheckRequest(), timeout=10
    )
    assert not [s for s in exported.get_finished_spans() if "Health" in s.name]


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OTEL_SERVICE_NAME": "spoke"},
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"},
    ],
    ids=["unset", "only-service-name", "exporter-none", "sdk-disabled"],
)
def test_tracing_is_off_without_otel_settings(env: dict[str, str]) -> None:
    assert tracing.provider_from_env(env) is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names zipkin"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http"},
            "OTLP over gRPC only",
        ),
    ],
    ids=["unknown-exporter", "http-protocol"],
)
def test_unsupported_otel_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tracing.provider_from_env(env)


def test_an_untraced_server_uses_plain_cursors(server: ServerThread) -> None:
    async def cursor_factory() -> type:
        async with server.server.pool.connection() as conn:
            return conn.cursor_factory

    assert server.server.tracer_provider is None
    assert server.run(cursor_factory()) is psycopg.AsyncCursor


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """A fake OTLP collector: keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.received = threading.Event()

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        self.received.set()
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_are_exported_over_otlp_when_the_endpoint_is_set(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector()
    receiver = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, receiver)
    port = receiver.add_insecure_port("127.0.0.1:0")
    receiver.start()
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    provider = tracing.provider_from_env()
    assert provider is not None
    try:
        with dedicated_server(
            pg_admin_url, template_url, tmp_path, Settings(), tracer_provider=provider
        ) as dedicated:
            dedicated.admin.users.GetCurrentUser(user_pb2.GetCurrentUserRequest())
            assert provider.force_flush(10_000)
        assert collector.received.wait(10)
    finally:
        provider.shutdown()
        receiver.stop(0)
    resources = [r for request in collector.requests for r in request.resource_spans]
    names = {span.name for r in resources for scope in r.scope_spans for span in scope.spans}
    assert "/spoke.v1.UserService/GetCurrentUser" in names
    assert "SELECT" in names
    service = {
        a.value.string_value
        for r in resources
        for a in r.resource.attributes
        if a.key == "service.name"
    }
    assert service == {"spoke-grpc"}
