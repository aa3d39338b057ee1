import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from spoke.v1 import organization_pb2 as _organization_pb2
from spoke.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Quotas(_message.Message):
    __slots__ = ("tier", "max_modules", "max_versions_per_module", "max_storage_bytes", "max_compile_jobs_per_month", "max_api_requests_per_hour")
    TIER_FIELD_NUMBER: _ClassVar[int]
    MAX_MODULES_FIELD_NUMBER: _ClassVar[int]
    MAX_VERSIONS_PER_MODULE_FIELD_NUMBER: _ClassVar[int]
    MAX_STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_COMPILE_JOBS_PER_MONTH_FIELD_NUMBER: _ClassVar[int]
    MAX_API_REQUESTS_PER_HOUR_FIELD_NUMBER: _ClassVar[int]
    tier: _organization_pb2.QuotaTier
    max_modules: int
    max_versions_per_module: int
    max_storage_bytes: int
    max_compile_jobs_per_month: int
    max_api_requests_per_hour: int
    def __init__(self, tier: _Optional[_Union[_organization_pb2.QuotaTier, str]] = ..., max_modules: _Optional[int] = ..., max_versions_per_module: _Optional[int] = ..., max_storage_bytes: _Optional[int] = ..., max_compile_jobs_per_month: _Optional[int] = ..., max_api_requests_per_hour: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("modules", "versions", "storage_bytes", "compile_jobs", "api_requests", "api_requests_this_hour", "period_start", "period_end")
    MODULES_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STORAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    COMPILE_JOBS_FIELD_NUMBER: _ClassVar[int]
    API_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    API_REQUESTS_THIS_HOUR_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    modules: int
    versions: int
    storage_bytes: int
    compile_jobs: int
    api_requests: int
    api_requests_this_hour: int
    period_start: _timestamp_pb2.Timestamp
    period_end: _timestamp_pb2.Timestamp
    def __init__(self, modules: _Optional[int] = ..., versions: _Optional[int] = ..., storage_bytes: _Optional[int] = ..., compile_jobs: _Optional[int] = ..., api_requests: _Optional[int] = ..., api_requests_this_hour: _Optional[int] = ..., period_start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., period_end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetQuotasRequest(_message.Message):
    __slots__ = ("org",)
    ORG_FIELD_NUMBER: _ClassVar[int]
    org: str
    def __init__(self, org: _Optional[str] = ...) -> None: ...

class GetQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: Quotas
    def __init__(self, quotas: _Optional[_Union[Quotas, _Mapping]] = ...) -> None: ...

class UpdateQuotasRequest(_message.Message):
    __slots__ = ("org", "quotas", "update_mask")
    ORG_FIELD_NUMBER: _ClassVar[int]
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    org: str
    quotas: Quotas
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, org: _Optional[str] = ..., quotas: _Optional[_Union[Quotas, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: Quotas
    def __init__(self, quotas: _Optional[_Union[Quotas, _Mapping]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("org",)
    ORG_FIELD_NUMBER: _ClassVar[int]
    org: str
    def __init__(self, org: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("usage",)
    USAGE_FIELD_NUMBER: _ClassVar[int]
    usage: Usage
    def __init__(self, usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class GetUsageHistoryRequest(_message.Message):
    __slots__ = ("org", "page_size", "page_token")
    ORG_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    org: str
    page_size: int
    page_token: str
    def __init__(self, org: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetUsageHistoryResponse(_message.Message):
    __slots__ = ("periods", "next_page_token")
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    periods: _containers.RepeatedCompositeFieldContainer[Usage]
    next_page_token: str
    def __init__(self, periods: _Optional[_Iterable[_Union[Usage, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
