"""The current call's context, set by the interceptors and read by the servicers.

grpc.aio runs the interceptors' wrapped behaviours and the servicer method in one
task, so a ContextVar carries the CallContext down without threading it through
every signature.
"""

from __future__ import annotations

from contextvars import ContextVar

from spoke_grpc.types import CallContext

_current: ContextVar[CallContext] = ContextVar("spoke_call")


def current_call() -> CallContext:
    """The CallContext of the RPC being served; only valid inside a servicer method."""
    return _current.get()


def set_call(call: CallContext) -> None:
    _current.set(call)
