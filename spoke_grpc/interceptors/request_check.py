"""Checks each request at the edge, before any database work: it must decode, and every
string in it must follow the text rule (``spoke_grpc.wire``).

grpc decodes the request before any interceptor runs and answers UNKNOWN when that
fails; this interceptor's deserializer keeps the failure instead, and the call is then
answered INVALID_ARGUMENT like any other bad request. Request types without a string
field anywhere (``GetCurrentUserRequest``) skip the walk: that is decided once per type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from grpc import aio

from spoke_grpc.errors import InvalidArgument
from spoke_grpc.interceptors.base import Behavior, Deserializer, PolicyInterceptor
from spoke_grpc.types import Policy
from spoke_grpc.wire import carries_text, text_violations


@dataclass(frozen=True)
class UndecodableRequest:
    """Stands in for a request whose bytes did not decode."""

    reason: str


class RequestCheckInterceptor(PolicyInterceptor):
    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        def decode(data: bytes) -> Any:
            try:
                return deserializer(data)
            except (DecodeError, ValueError, UnicodeDecodeError) as exc:
                return UndecodableRequest(str(exc) or type(exc).__name__)

        return decode

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if isinstance(request, UndecodableRequest):
            request_type = policy.method.rsplit("/", 1)[-1] + "Request"
            raise InvalidArgument.field(
                "request", f"the bytes sent are not a valid spoke.v1.{request_type} message"
            )
        if carries_text(request.DESCRIPTOR):
            violations = text_violations(request)
            if violations:
                raise InvalidArgument(violations)
        return await call_next(request, context)
