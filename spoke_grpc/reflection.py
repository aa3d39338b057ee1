"""Server reflection, served as both ``grpc.reflection.v1`` and ``grpc.reflection.v1alpha``.

grpcio-reflection ships only v1alpha, so tools that speak only v1 find no reflection service.
The two protocols' messages are wire-identical (only the proto package differs), so v1 is the
v1alpha servicer under a second service name: its file descriptor is derived from v1alpha's
(so reflection can describe v1 itself) and its handler reuses the v1alpha message classes.

The stock servicer asks the descriptor pool for the file containing a symbol; with the
upb-backed protobuf runtime that lookup fails for method names (``spoke.v1.X.Method``),
so ``grpcurl describe spoke.v1.OrganizationService.CreateOrganization`` would say
"Symbol not found" (grpc/grpc#34743). The subclass below falls back to the method's service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_reflection.v1alpha._base import _file_descriptor_response

SERVICE_NAME: str = reflection.SERVICE_NAME
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


class MethodAwareReflectionServicer(ReflectionServicer):
    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method not in service.methods_by_name:
            return response
        return _file_descriptor_response(service.file, request)


def _v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto, moved to the v1 package."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old = f".{proto.package}."

    def retype(name: str) -> str:
        return f".{V1_PACKAGE}.{name.removeprefix(old)}" if name.startswith(old) else name

    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    proto.options.ClearField("deprecated")
    for field in (f for message in proto.message_type for f in message.field):
        if field.type_name:
            field.type_name = retype(field.type_name)
    for method in (m for service in proto.service for m in service.method):
        method.input_type, method.output_type = (
            retype(method.input_type),
            retype(method.output_type),
        )
    return proto


def _register_v1_file() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(_v1_file())


def enable_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    _register_v1_file()
    servicer = MethodAwareReflectionServicer([*service_names, SERVICE_NAME, V1_SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
        )
    }
    # Both registrations, as the generated add_*_to_server functions do.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),)
    )
    server.add_registered_method_handlers(V1_SERVICE_NAME, handlers)
