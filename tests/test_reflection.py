"""Server reflection over a real channel, as both grpc.reflection.v1 and v1alpha."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2

from spoke_grpc import reflection

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse
Ask = Callable[[Any], Any]  # request -> response, both the v1alpha message classes
BOTH = {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}


@pytest.fixture(params=["v1", "v1alpha"])
def ask(request: pytest.FixtureRequest, channel: grpc.Channel) -> Ask:
    """Sends one request on the given protocol version's ServerReflectionInfo stream."""
    info = channel.stream_stream(
        f"/grpc.reflection.{request.param}.ServerReflection/ServerReflectionInfo",
        request_serializer=Request.SerializeToString,
        response_deserializer=Response.FromString,
    )

    def send(req: Any) -> Any:
        (response,) = list(info(iter([req]), timeout=10))
        assert not response.HasField("error_response"), response.error_response
        return response

    return send


def files(response: Any) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    parsed = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto
    ]
    return {proto.name: proto for proto in parsed}


def test_list_services(ask: Ask) -> None:
    response = ask(Request(list_services=""))
    names = {s.name for s in response.list_services_response.service}
    assert names >= {"spoke.v1.OrganizationService", "grpc.health.v1.Health", *BOTH}


def test_method_symbol_resolves_to_its_file(ask: Ask) -> None:
    symbol = "spoke.v1.OrganizationService.CreateOrganization"
    protos = files(ask(Request(file_containing_symbol=symbol))).values()
    assert any(
        p.package == "spoke.v1" and any(s.name == "OrganizationService" for s in p.service)
        for p in protos
    )


def test_v1_reflection_describes_itself(ask: Ask) -> None:
    protos = files(ask(Request(file_containing_symbol="grpc.reflection.v1.ServerReflection")))
    proto = protos[reflection.V1_FILE]
    assert proto.package == "grpc.reflection.v1"
    (method,) = proto.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    assert "v1alpha" not in proto.SerializeToString().decode("utf-8", "replace")
    by_name = files(ask(Request(file_by_filename=reflection.V1_FILE)))
    assert by_name[reflection.V1_FILE] == proto


def test_registering_the_v1_file_twice_is_harmless() -> None:
    reflection._register_v1_file()
    reflection._register_v1_file()
    service = descriptor_pool.Default().FindServiceByName(reflection.V1_SERVICE_NAME)
    assert service.file.name == reflection.V1_FILE
