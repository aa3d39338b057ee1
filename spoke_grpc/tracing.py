"""OpenTelemetry traces: a span for each spoke.v1 call, with a child span for each SQL
statement it runs, exported over OTLP (gRPC).

On only when the standard settings ask for it: ``OTEL_TRACES_EXPORTER=otlp`` (or
``console``, which prints spans), or an ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; off with ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``, and off when none of them is set. The exporter reads the
rest of the standard settings itself (headers, certificates, timeout, compression), the
SDK its sampler (``OTEL_TRACES_SAMPLER``) and resource (``OTEL_SERVICE_NAME``, here
``spoke-grpc`` unless set; ``OTEL_RESOURCE_ATTRIBUTES``). A caller's W3C ``traceparent``
becomes the call span's parent. Off, nothing of the SDK is on the request path: no
tracing interceptor, plain cursors.

Instrumentation: opentelemetry-instrumentation-grpc's aio server interceptor makes the
call spans (health and reflection calls are not traced); opentelemetry-instrumentation-
psycopg traces the cursors of each pooled connection (``instrument_connection`` from the
pool's configure hook) rather than patching psycopg process-wide, so only the request pool
is traced and each server uses its own tracer provider. Statements are recorded as SQL
text without their parameters: no token or file content reaches a span.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from grpc import aio
from opentelemetry.trace import TracerProvider
from psycopg import AsyncConnection

from spoke_grpc.config import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

SERVICE_NAME = "spoke-grpc"
_EXPORTERS = ("otlp", "console")
_UNTRACED_SERVICES = ("grpc.health.", "grpc.reflection.")


def provider_from_env(env: Mapping[str, str] | None = None) -> SdkTracerProvider | None:
    """A tracer provider exporting as the ``OTEL_*`` settings say; None when tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporters = [
        name.strip().lower()
        for name in env.get("OTEL_TRACES_EXPORTER", "").split(",")
        if name.strip()
    ]
    if not exporters:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if not endpoint:
            return None
        exporters = ["otlp"]
    if exporters == ["none"]:
        return None
    unknown = sorted(set(exporters) - set(_EXPORTERS))
    if unknown:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this server exports traces"
            " with otlp (OTLP over gRPC) or console, or none"
        )
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if "otlp" in exporters and protocol.strip().lower() != "grpc":
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL is {protocol!r}: this server sends OTLP over gRPC"
            " only (set it to grpc, and the endpoint to the collector's gRPC port, often 4317)"
        )
    return _sdk_provider(exporters)


def _sdk_provider(exporters: list[str]) -> SdkTracerProvider:
    # The SDK is imported only when tracing is on.
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = SdkTracerProvider(resource=resource)
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider


def server_interceptor(provider: TracerProvider) -> aio.ServerInterceptor:
    """The interceptor that opens each call's span, as the caller's traceparent's child."""
    from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters

    untraced = filters.any_of(*(filters.service_prefix(p) for p in _UNTRACED_SERVICES))
    interceptor: aio.ServerInterceptor = aio_server_interceptor(
        tracer_provider=provider, filter_=filters.negate(untraced)
    )
    return interceptor


def connection_instrumenter(provider: TracerProvider) -> Callable[[AsyncConnection], None]:
    """What makes a new pool connection trace each statement (``create_pool(instrument=)``)."""
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    def instrument(conn: AsyncConnection) -> None:
        PsycopgInstrumentor.instrument_connection(conn, tracer_provider=provider)

    return instrument
