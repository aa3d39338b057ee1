"""The status each domain error becomes (what the errors interceptor sends)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from spoke_grpc.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    SpokeError,
    Unavailable,
)


def unpack(error: SpokeError, kind: type) -> object:
    for packed in error.to_status().details:
        message = kind()
        if packed.Unpack(message):
            return message
    raise AssertionError(f"no {kind.__name__}")


def test_allocation_quota_error_carries_current_limit_and_subject() -> None:
    error = QuotaExceeded(quota="module", subject="organizations/acme", current=10, limit=10)
    status = error.to_status()
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "module quota exceeded: 10 of 10 used"
    info = unpack(error, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "RESOURCE_QUOTA_EXCEEDED"
    assert dict(info.metadata) == {"quota": "module", "limit": "10", "current": "10"}
    failure = unpack(error, error_details_pb2.QuotaFailure)
    assert isinstance(failure, error_details_pb2.QuotaFailure)
    assert failure.violations[0].subject == "organizations/acme"
    with pytest.raises(AssertionError):
        unpack(error, error_details_pb2.RetryInfo)


def test_rate_quota_error_says_when_to_retry() -> None:
    error = QuotaExceeded(
        quota="api_requests_per_hour",
        subject="organizations/acme",
        current=5000,
        limit=5000,
        retry_after_seconds=120,
    )
    info = unpack(error, error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "RATE_LIMIT_EXCEEDED"
    retry = unpack(error, error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 120


def test_invalid_argument_lists_every_violation() -> None:
    error = InvalidArgument([FieldViolation("name", "required"), FieldViolation("email", "bad")])
    bad = unpack(error, error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("name", "required"),
        ("email", "bad"),
    ]
    with pytest.raises(ValueError):
        InvalidArgument([])


def test_not_found_and_unavailable() -> None:
    assert NotFound("organization", "acme").message == "organization 'acme' not found"
    retry = unpack(Unavailable("db down"), error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.seconds == 1


def test_errors_stay_small_enough_for_client_trailers() -> None:
    many = [FieldViolation(f"settings[{'k' * 500}{i}]", "x" * 5000) for i in range(64)]
    status = InvalidArgument(many).to_status()
    assert len(status.SerializeToString()) < 6000
    bad = unpack(InvalidArgument(many), error_details_pb2.BadRequest)
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert len(bad.field_violations) == 11
    assert bad.field_violations[-1].description == "and 54 more invalid field(s)"
    assert len(NotFound("organization", "n" * 10_000).to_status().SerializeToString()) < 2000
