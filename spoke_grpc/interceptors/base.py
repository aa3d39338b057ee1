"""A server interceptor that wraps unary spoke.v1 behaviours with its policy at hand (a
server stream only gets its request decoded the same way: ``wrap_deserializer``).

A servicer may answer with the response already serialized (``bytes``: a response kept by
``spoke_grpc.response_cache``); the wrapped handler's serializer sends those as they are.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from spoke_grpc.policy import POLICIES
from spoke_grpc.types import Policy

Behavior = Callable[[Any, aio.ServicerContext], Awaitable[Any]]
Deserializer = Callable[[bytes], Any]
Serializer = Callable[[Any], bytes]


class _BytesAsIs:
    """``serialize``, except that a response that is already bytes is sent as it is."""

    __slots__ = ("_serialize",)

    def __init__(self, serialize: Serializer) -> None:
        self._serialize = serialize

    def __call__(self, response: Any) -> bytes:
        if type(response) is bytes:
            return response
        return self._serialize(response)


def sending_bytes_as_is(serialize: Serializer) -> Serializer:
    if isinstance(serialize, _BytesAsIs):  # wrapped by an inner interceptor already
        return serialize
    return _BytesAsIs(serialize)


class PolicyInterceptor(aio.ServerInterceptor, abc.ABC):
    """Subclasses implement ``intercept``; wrapped handlers are cached per method."""

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        policy = POLICIES.get(method)
        if policy is not None and handler is not None and handler.unary_stream is not None:
            # Streams are not wrapped (they apply their policy themselves), but they decode
            # their request the way unary calls do.
            stream = grpc.unary_stream_rpc_method_handler(
                handler.unary_stream,
                request_deserializer=self.wrap_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
            self._wrapped[method] = stream
            return stream
        if policy is None or handler is None or handler.unary_unary is None:
            return handler
        inner: Behavior = handler.unary_unary

        async def behavior(request: Any, context: aio.ServicerContext) -> Any:
            return await self.intercept(policy, request, context, inner)

        wrapped = grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=self.wrap_deserializer(handler.request_deserializer),
            response_serializer=sending_bytes_as_is(handler.response_serializer),
        )
        self._wrapped[method] = wrapped
        return wrapped

    def wrap_deserializer(self, deserializer: Deserializer) -> Deserializer:
        """The request deserializer to use; interceptors that guard decoding override this."""
        return deserializer

    @abc.abstractmethod
    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        """Runs around ``call_next(request, context)``."""
