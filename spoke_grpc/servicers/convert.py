"""Conversions between stored values and proto messages/enums, shared by the servicers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from enum import StrEnum

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from spoke.v1 import member_pb2, organization_pb2

from spoke_grpc.errors import InvalidArgument
from spoke_grpc.tiers import QuotaTier
from spoke_grpc.types import OrgStatus, Role

TIER_TO_PROTO: dict[QuotaTier, organization_pb2.QuotaTier] = {
    QuotaTier.SMALL: organization_pb2.QUOTA_TIER_SMALL,
    QuotaTier.MEDIUM: organization_pb2.QUOTA_TIER_MEDIUM,
    QuotaTier.LARGE: organization_pb2.QUOTA_TIER_LARGE,
    QuotaTier.UNLIMITED: organization_pb2.QUOTA_TIER_UNLIMITED,
}
STATUS_TO_PROTO: dict[OrgStatus, organization_pb2.OrganizationStatus] = {
    OrgStatus.ACTIVE: organization_pb2.ORGANIZATION_STATUS_ACTIVE,
    OrgStatus.SUSPENDED: organization_pb2.ORGANIZATION_STATUS_SUSPENDED,
}
ROLE_TO_PROTO: dict[Role, member_pb2.Role] = {
    Role.ADMIN: member_pb2.ROLE_ADMIN,
    Role.DEVELOPER: member_pb2.ROLE_DEVELOPER,
    Role.VIEWER: member_pb2.ROLE_VIEWER,
}
_TIER_FROM_PROTO: dict[int, QuotaTier] = {int(v): k for k, v in TIER_TO_PROTO.items()}
_STATUS_FROM_PROTO: dict[int, OrgStatus] = {int(v): k for k, v in STATUS_TO_PROTO.items()}
_ROLE_FROM_PROTO: dict[int, Role] = {int(v): k for k, v in ROLE_TO_PROTO.items()}


def timestamp(value: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def tier_from_proto(field: str, value: int, *, required: bool) -> QuotaTier | None:
    """None for QUOTA_TIER_UNSPECIFIED when not ``required``; INVALID_ARGUMENT otherwise."""
    if value == organization_pb2.QUOTA_TIER_UNSPECIFIED and not required:
        return None
    tier = _TIER_FROM_PROTO.get(value)
    if tier is None:
        raise InvalidArgument.field(field, _enum_message("QUOTA_TIER_", TIER_TO_PROTO, value))
    return tier


def status_from_proto(field: str, value: int) -> OrgStatus:
    status = _STATUS_FROM_PROTO.get(value)
    if status is None:
        raise InvalidArgument.field(
            field, _enum_message("ORGANIZATION_STATUS_", STATUS_TO_PROTO, value)
        )
    return status


def role_from_proto(field: str, value: int) -> Role:
    role = _ROLE_FROM_PROTO.get(value)
    if role is None:
        raise InvalidArgument.field(field, _enum_message("ROLE_", ROLE_TO_PROTO, value))
    return role


def _enum_message(prefix: str, known: Iterable[StrEnum], value: int) -> str:
    names = ", ".join(prefix + k.value.upper() for k in known)
    return f"must be one of {names}; got {value}"


def mask_paths(
    mask: FieldMask, updatable: Sequence[str], immutable: Sequence[str] = ()
) -> set[str]:
    """The paths of an update mask, checked: one rule for every Update RPC. Empty, immutable,
    unknown or repeated paths are INVALID_ARGUMENT on ``update_mask``."""
    paths = list(mask.paths)
    if not paths:
        raise InvalidArgument.field(
            "update_mask", f"required: list the fields to update ({', '.join(updatable)})"
        )
    seen: set[str] = set()
    for path in paths:
        if path in immutable:
            raise InvalidArgument.field("update_mask", f"{path!r} cannot be updated")
        if path not in updatable:
            raise InvalidArgument.field(
                "update_mask", f"unknown field {path!r}; updatable: {', '.join(updatable)}"
            )
        if path in seen:
            raise InvalidArgument.field("update_mask", f"{path!r} is listed twice")
        seen.add(path)
    return seen
