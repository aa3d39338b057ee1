from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Access(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCESS_UNSPECIFIED: _ClassVar[Access]
    ACCESS_ANONYMOUS: _ClassVar[Access]
    ACCESS_AUTHENTICATED: _ClassVar[Access]
    ACCESS_ORG_VIEWER: _ClassVar[Access]
    ACCESS_ORG_DEVELOPER: _ClassVar[Access]
    ACCESS_ORG_ADMIN: _ClassVar[Access]
    ACCESS_ORG_OWNER: _ClassVar[Access]
    ACCESS_PLATFORM_ADMIN: _ClassVar[Access]

class QuotaKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUOTA_KIND_UNSPECIFIED: _ClassVar[QuotaKind]
    QUOTA_KIND_MODULES: _ClassVar[QuotaKind]
    QUOTA_KIND_VERSIONS: _ClassVar[QuotaKind]
    QUOTA_KIND_COMPILE_JOBS: _ClassVar[QuotaKind]
ACCESS_UNSPECIFIED: Access
ACCESS_ANONYMOUS: Access
ACCESS_AUTHENTICATED: Access
ACCESS_ORG_VIEWER: Access
ACCESS_ORG_DEVELOPER: Access
ACCESS_ORG_ADMIN: Access
ACCESS_ORG_OWNER: Access
ACCESS_PLATFORM_ADMIN: Access
QUOTA_KIND_UNSPECIFIED: QuotaKind
QUOTA_KIND_MODULES: QuotaKind
QUOTA_KIND_VERSIONS: QuotaKind
QUOTA_KIND_COMPILE_JOBS: QuotaKind
POLICY_FIELD_NUMBER: _ClassVar[int]
policy: _descriptor.FieldDescriptor

class MethodPolicy(_message.Message):
    __slots__ = ("access", "read_only", "quota", "public_read")
    ACCESS_FIELD_NUMBER: _ClassVar[int]
    READ_ONLY_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_READ_FIELD_NUMBER: _ClassVar[int]
    access: Access
    read_only: bool
    quota: QuotaKind
    public_read: bool
    def __init__(self, access: _Optional[_Union[Access, str]] = ..., read_only: _Optional[bool] = ..., quota: _Optional[_Union[QuotaKind, str]] = ..., public_read: _Optional[bool] = ...) -> None: ...
