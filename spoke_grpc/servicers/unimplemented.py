"""Servicers for the parts of the contract a later release implements.

Each method still passes through the interceptors (auth, org access) and then answers
UNIMPLEMENTED with a message naming the method, rather than grpc's bare default.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from spoke_grpc.errors import Unimplemented


def unimplemented_servicer(base: type, service: ServiceDescriptor) -> Any:
    """An instance of ``base`` (a generated Servicer) whose every method raises Unimplemented."""

    def make(name: str) -> Any:
        async def method(self: Any, request: Any, context: Any) -> Any:
            raise Unimplemented(
                f"{service.full_name}.{name} is part of the spoke.v1 contract"
                " but not implemented by this server yet"
            )

        method.__name__ = name
        return method

    namespace = {m.name: make(m.name) for m in service.methods}
    return type(f"Unimplemented{service.name}", (base,), namespace)()
