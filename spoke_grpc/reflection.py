"""Server reflection that also resolves method symbols.

The stock servicer asks the descriptor pool for the file containing a symbol; with the
upb-backed protobuf runtime that lookup fails for method names (``spoke.v1.X.Method``),
so ``grpcurl describe spoke.v1.OrganizationService.CreateOrganization`` would say
"Symbol not found" (grpc/grpc#34743). This subclass falls back to the method's service.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grpc import aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer
from grpc_reflection.v1alpha._base import _file_descriptor_response

SERVICE_NAME: str = reflection.SERVICE_NAME


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


def enable_reflection(service_names: Iterable[str], server: aio.Server) -> None:
    servicer = MethodAwareReflectionServicer([*service_names, SERVICE_NAME])
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
