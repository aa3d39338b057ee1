"""The errors domain code raises; the errors interceptor turns each into a gRPC status.

Domain and store code never touch ``grpc.StatusCode``: they raise one of these, and
``spoke_grpc.interceptors.errors`` converts it into a status whose details carry a
``google.rpc.ErrorInfo`` (always) plus the class's own details::

    SpokeError                      (base; never raised itself)
    ├── InvalidArgument             INVALID_ARGUMENT     + BadRequest field violations
    ├── Unauthenticated             UNAUTHENTICATED
    ├── PermissionDenied            PERMISSION_DENIED
    ├── NotFound                    NOT_FOUND
    ├── AlreadyExists               ALREADY_EXISTS
    ├── FailedPrecondition          FAILED_PRECONDITION  + PreconditionFailure violations
    ├── QuotaExceeded               RESOURCE_EXHAUSTED   + QuotaFailure (+ RetryInfo: rate windows)
    ├── TooManyCalls                RESOURCE_EXHAUSTED   + RetryInfo (the process's call cap)
    ├── SlowConsumer                RESOURCE_EXHAUSTED   (a stream's reader fell behind)
    ├── Unavailable                 UNAVAILABLE          + RetryInfo (the database is unreachable)
    │   └── Overloaded              UNAVAILABLE          + RetryInfo (no free connection: busy)
    ├── Aborted                     ABORTED              (a concurrent change won, retries spent)
    ├── DeadlineExceeded            DEADLINE_EXCEEDED    (the caller's deadline or server maximum)
    ├── Unimplemented               UNIMPLEMENTED
    └── Internal                    INTERNAL
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

ERROR_DOMAIN = "spoke.v1"
# An error travels in trailers, which clients cap (8 KiB by default in most gRPC stacks):
# text echoed from a request is shortened so that an error always reaches its caller.
MAX_MESSAGE = 1000
MAX_VIOLATIONS = 10
MAX_FIELD = 120
MAX_DESCRIPTION = 300
MAX_METADATA_VALUE = 200


def shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: ``field`` is its path (``organization.name``)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition: ``type`` is a short code, ``subject`` what it is about."""

    type: str
    subject: str
    description: str


class SpokeError(Exception):
    """Base of every error a caller may see. ``message`` is safe to show to clients."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        message = shorten(message, MAX_MESSAGE)
        super().__init__(message)
        self.message = message
        self.metadata = {k: shorten(v, MAX_METADATA_VALUE) for k, v in (metadata or {}).items()}
        self.reason = reason or self.default_reason

    def details(self) -> list[any_pb2.Any]:
        """The ``google.rpc`` detail messages after the ErrorInfo."""
        return []

    def to_status(self) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        packed = [_pack(info), *self.details()]
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


class InvalidArgument(SpokeError):
    """One or more request fields are invalid; the caller must fix the request."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one violation")
        shown = [
            FieldViolation(shorten(v.field, MAX_FIELD), shorten(v.description, MAX_DESCRIPTION))
            for v in violations[:MAX_VIOLATIONS]
        ]
        if len(violations) > MAX_VIOLATIONS:
            more = len(violations) - MAX_VIOLATIONS
            shown.append(FieldViolation("…", f"and {more} more invalid field(s)"))
        self.violations = shown
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(f"invalid request: {message}")

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        return [_pack(bad_request)]


class Unauthenticated(SpokeError):
    """No valid API token: send ``authorization: Bearer spoke_...`` metadata."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(SpokeError):
    """The caller is known but its role does not allow the call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(SpokeError):
    """The resource does not exist, or the caller may not know that it does."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"

    def __init__(self, kind: str, ref: str) -> None:
        super().__init__(f"{kind} {ref!r} not found", metadata={"kind": kind, "ref": ref})


class AlreadyExists(SpokeError):
    """A resource with the same unique name already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"

    def __init__(self, kind: str, ref: str) -> None:
        super().__init__(f"{kind} {ref!r} already exists", metadata={"kind": kind, "ref": ref})


class FailedPrecondition(SpokeError):
    """The system is not in a state that allows the call; retrying as-is will not help."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(self, violation: PreconditionViolation) -> None:
        super().__init__(violation.description, metadata={"type": violation.type})
        self.violation = violation

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=self.violation.type,
                    subject=self.violation.subject,
                    description=self.violation.description,
                )
            ]
        )
        return [_pack(failure)]


class QuotaExceeded(SpokeError):
    """An allocation quota or a rate window is used up: the organization's, a user's (the
    organizations and API tokens one may hold) or an anonymous client address's.
    ``advice``, when given, ends the message with what the caller can do."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_QUOTA_EXCEEDED"

    def __init__(
        self,
        *,
        quota: str,
        subject: str,
        current: int,
        limit: int,
        retry_after_seconds: int | None = None,
        advice: str | None = None,
    ) -> None:
        label = quota.replace("_", " ")
        super().__init__(
            f"{label} quota exceeded: {current} of {limit} used"
            + (f"; {advice}" if advice else ""),
            metadata={"quota": quota, "limit": str(limit), "current": str(current)},
            reason="RATE_LIMIT_EXCEEDED" if retry_after_seconds is not None else None,
        )
        self.quota = quota
        self.subject = subject
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        failure = error_details_pb2.QuotaFailure(
            violations=[
                error_details_pb2.QuotaFailure.Violation(
                    subject=self.subject, description=self.message
                )
            ]
        )
        packed = [_pack(failure)]
        if self.retry_after_seconds is not None:
            retry = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
            )
            packed.append(_pack(retry))
        return packed


class TooManyCalls(SpokeError):
    """The process already serves ``SPOKE_MAX_CONCURRENT_CALLS`` calls; retry shortly."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "TOO_MANY_CONCURRENT_CALLS"

    def __init__(self, limit: int, *, retry_after_seconds: int = 1) -> None:
        super().__init__(
            f"the server is busy with its limit of {limit} calls; retry with backoff",
            metadata={"limit": str(limit)},
        )
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
        )
        return [_pack(retry)]


class SlowConsumer(SpokeError):
    """A stream's client stopped reading for too long; it may resume where it was."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "SLOW_CONSUMER"

    def __init__(self, seconds: float, last_event_id: str) -> None:
        resume = (
            f"; resume with after_event_id={last_event_id!r}"
            if last_event_id
            else "; reconnect to resume"
        )
        super().__init__(
            f"the stream was cut off: the client read nothing for {seconds:g}s{resume}",
            metadata={"last_event_id": last_event_id},
        )


class Unavailable(SpokeError):
    """A dependency (the database) cannot be reached now; retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "DATABASE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: int = 1) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=self.retry_after_seconds)
        )
        return [_pack(retry)]


class Overloaded(Unavailable):
    """Every database connection is busy: the server is overloaded, not broken."""

    default_reason = "SERVER_OVERLOADED"


class Aborted(SpokeError):
    """The call kept colliding with concurrent changes (deadlock or serialization failure)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "CONCURRENT_MODIFICATION"


class DeadlineExceeded(SpokeError):
    """The call ran out of time: the caller's deadline or the server's maximum."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(SpokeError):
    """The RPC is part of the contract but this server does not implement it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(SpokeError):
    """A bug on the server. The message carries a reference to find the logged traceback."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"
