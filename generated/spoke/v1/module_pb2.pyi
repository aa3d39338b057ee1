import datetime

from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from spoke.v1 import policy_pb2 as _policy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BreakingChangePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BREAKING_CHANGE_POLICY_UNSPECIFIED: _ClassVar[BreakingChangePolicy]
    BREAKING_CHANGE_POLICY_ALLOW: _ClassVar[BreakingChangePolicy]
    BREAKING_CHANGE_POLICY_REJECT: _ClassVar[BreakingChangePolicy]
BREAKING_CHANGE_POLICY_UNSPECIFIED: BreakingChangePolicy
BREAKING_CHANGE_POLICY_ALLOW: BreakingChangePolicy
BREAKING_CHANGE_POLICY_REJECT: BreakingChangePolicy

class Module(_message.Message):
    __slots__ = ("id", "org_id", "org_name", "name", "description", "is_public", "created_by", "create_time", "update_time", "breaking_change_policy")
    ID_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    BREAKING_CHANGE_POLICY_FIELD_NUMBER: _ClassVar[int]
    id: str
    org_id: str
    org_name: str
    name: str
    description: str
    is_public: bool
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    breaking_change_policy: BreakingChangePolicy
    def __init__(self, id: _Optional[str] = ..., org_id: _Optional[str] = ..., org_name: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., is_public: _Optional[bool] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., breaking_change_policy: _Optional[_Union[BreakingChangePolicy, str]] = ...) -> None: ...

class ProtoFile(_message.Message):
    __slots__ = ("path", "content", "size_bytes")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: str
    size_bytes: int
    def __init__(self, path: _Optional[str] = ..., content: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class VersionRef(_message.Message):
    __slots__ = ("org", "module", "version", "deleted")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    deleted: bool
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ..., deleted: _Optional[bool] = ...) -> None: ...

class VersionSource(_message.Message):
    __slots__ = ("repository", "commit_sha", "branch")
    REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    COMMIT_SHA_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    repository: str
    commit_sha: str
    branch: str
    def __init__(self, repository: _Optional[str] = ..., commit_sha: _Optional[str] = ..., branch: _Optional[str] = ...) -> None: ...

class Version(_message.Message):
    __slots__ = ("id", "module_id", "version", "files", "size_bytes", "created_by", "create_time", "digest", "source", "dependencies", "org_id", "org_name", "module_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODULE_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    ORG_ID_FIELD_NUMBER: _ClassVar[int]
    ORG_NAME_FIELD_NUMBER: _ClassVar[int]
    MODULE_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    module_id: str
    version: str
    files: _containers.RepeatedCompositeFieldContainer[ProtoFile]
    size_bytes: int
    created_by: str
    create_time: _timestamp_pb2.Timestamp
    digest: str
    source: VersionSource
    dependencies: _containers.RepeatedCompositeFieldContainer[VersionRef]
    org_id: str
    org_name: str
    module_name: str
    def __init__(self, id: _Optional[str] = ..., module_id: _Optional[str] = ..., version: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ProtoFile, _Mapping]]] = ..., size_bytes: _Optional[int] = ..., created_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., digest: _Optional[str] = ..., source: _Optional[_Union[VersionSource, _Mapping]] = ..., dependencies: _Optional[_Iterable[_Union[VersionRef, _Mapping]]] = ..., org_id: _Optional[str] = ..., org_name: _Optional[str] = ..., module_name: _Optional[str] = ...) -> None: ...

class GeneratedFile(_message.Message):
    __slots__ = ("language", "path", "content")
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    language: str
    path: str
    content: str
    def __init__(self, language: _Optional[str] = ..., path: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class CreateModuleRequest(_message.Message):
    __slots__ = ("org", "name", "description", "is_public", "breaking_change_policy")
    ORG_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    IS_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    BREAKING_CHANGE_POLICY_FIELD_NUMBER: _ClassVar[int]
    org: str
    name: str
    description: str
    is_public: bool
    breaking_change_policy: BreakingChangePolicy
    def __init__(self, org: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., is_public: _Optional[bool] = ..., breaking_change_policy: _Optional[_Union[BreakingChangePolicy, str]] = ...) -> None: ...

class CreateModuleResponse(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: Module
    def __init__(self, module: _Optional[_Union[Module, _Mapping]] = ...) -> None: ...

class GetModuleRequest(_message.Message):
    __slots__ = ("org", "module")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ...) -> None: ...

class GetModuleResponse(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: Module
    def __init__(self, module: _Optional[_Union[Module, _Mapping]] = ...) -> None: ...

class ListModulesRequest(_message.Message):
    __slots__ = ("org", "page_size", "page_token")
    ORG_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    org: str
    page_size: int
    page_token: str
    def __init__(self, org: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModulesResponse(_message.Message):
    __slots__ = ("modules", "next_page_token")
    MODULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    modules: _containers.RepeatedCompositeFieldContainer[Module]
    next_page_token: str
    def __init__(self, modules: _Optional[_Iterable[_Union[Module, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class UpdateModuleRequest(_message.Message):
    __slots__ = ("org", "module", "update", "update_mask", "force")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    update: Module
    update_mask: _field_mask_pb2.FieldMask
    force: bool
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., update: _Optional[_Union[Module, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., force: _Optional[bool] = ...) -> None: ...

class UpdateModuleResponse(_message.Message):
    __slots__ = ("module",)
    MODULE_FIELD_NUMBER: _ClassVar[int]
    module: Module
    def __init__(self, module: _Optional[_Union[Module, _Mapping]] = ...) -> None: ...

class DeleteModuleRequest(_message.Message):
    __slots__ = ("org", "module", "force")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    force: bool
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class DeleteModuleResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateVersionRequest(_message.Message):
    __slots__ = ("org", "module", "version", "files", "dependencies", "source")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    files: _containers.RepeatedCompositeFieldContainer[ProtoFile]
    dependencies: _containers.RepeatedCompositeFieldContainer[VersionRef]
    source: VersionSource
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ProtoFile, _Mapping]]] = ..., dependencies: _Optional[_Iterable[_Union[VersionRef, _Mapping]]] = ..., source: _Optional[_Union[VersionSource, _Mapping]] = ...) -> None: ...

class CreateVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("org", "module", "version")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetVersionResponse(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: Version
    def __init__(self, version: _Optional[_Union[Version, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("org", "module", "page_size", "page_token")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    page_size: int
    page_token: str
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions", "next_page_token")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Version]
    next_page_token: str
    def __init__(self, versions: _Optional[_Iterable[_Union[Version, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CompileVersionRequest(_message.Message):
    __slots__ = ("org", "module", "version", "languages")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    languages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ..., languages: _Optional[_Iterable[str]] = ...) -> None: ...

class CompileVersionResponse(_message.Message):
    __slots__ = ("descriptor_set", "files")
    DESCRIPTOR_SET_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    descriptor_set: bytes
    files: _containers.RepeatedCompositeFieldContainer[GeneratedFile]
    def __init__(self, descriptor_set: _Optional[bytes] = ..., files: _Optional[_Iterable[_Union[GeneratedFile, _Mapping]]] = ...) -> None: ...

class CompatibilityViolation(_message.Message):
    __slots__ = ("rule", "path", "message")
    RULE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    path: str
    message: str
    def __init__(self, rule: _Optional[str] = ..., path: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class CheckCompatibilityRequest(_message.Message):
    __slots__ = ("org", "module", "version", "against_version")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AGAINST_VERSION_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    against_version: str
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ..., against_version: _Optional[str] = ...) -> None: ...

class CheckCompatibilityResponse(_message.Message):
    __slots__ = ("compatible", "violations")
    COMPATIBLE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    compatible: bool
    violations: _containers.RepeatedCompositeFieldContainer[CompatibilityViolation]
    def __init__(self, compatible: _Optional[bool] = ..., violations: _Optional[_Iterable[_Union[CompatibilityViolation, _Mapping]]] = ...) -> None: ...

class DependencyGraphNode(_message.Message):
    __slots__ = ("id", "version", "is_public")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IS_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: VersionRef
    is_public: bool
    def __init__(self, id: _Optional[str] = ..., version: _Optional[_Union[VersionRef, _Mapping]] = ..., is_public: _Optional[bool] = ...) -> None: ...

class DependencyGraphEdge(_message.Message):
    __slots__ = ("dependent", "dependency")
    DEPENDENT_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    dependent: str
    dependency: str
    def __init__(self, dependent: _Optional[str] = ..., dependency: _Optional[str] = ...) -> None: ...

class GetDependencyGraphRequest(_message.Message):
    __slots__ = ("org", "module", "version")
    ORG_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    org: str
    module: str
    version: str
    def __init__(self, org: _Optional[str] = ..., module: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class GetDependencyGraphResponse(_message.Message):
    __slots__ = ("nodes", "edges")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[DependencyGraphNode]
    edges: _containers.RepeatedCompositeFieldContainer[DependencyGraphEdge]
    def __init__(self, nodes: _Optional[_Iterable[_Union[DependencyGraphNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[DependencyGraphEdge, _Mapping]]] = ...) -> None: ...

class ListPublicModulesRequest(_message.Message):
    __slots__ = ("query", "page_size", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    page_size: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPublicModulesResponse(_message.Message):
    __slots__ = ("modules", "next_page_token")
    MODULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    modules: _containers.RepeatedCompositeFieldContainer[Module]
    next_page_token: str
    def __init__(self, modules: _Optional[_Iterable[_Union[Module, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class LanguageGenerator(_message.Message):
    __slots__ = ("name", "program", "version", "options", "installed")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTALLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    program: str
    version: str
    options: _containers.RepeatedScalarFieldContainer[str]
    installed: bool
    def __init__(self, name: _Optional[str] = ..., program: _Optional[str] = ..., version: _Optional[str] = ..., options: _Optional[_Iterable[str]] = ..., installed: _Optional[bool] = ...) -> None: ...

class Language(_message.Message):
    __slots__ = ("name", "generators", "grpc_stubs", "available", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATORS_FIELD_NUMBER: _ClassVar[int]
    GRPC_STUBS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    generators: _containers.RepeatedCompositeFieldContainer[LanguageGenerator]
    grpc_stubs: bool
    available: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., generators: _Optional[_Iterable[_Union[LanguageGenerator, _Mapping]]] = ..., grpc_stubs: _Optional[bool] = ..., available: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class ListLanguagesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListLanguagesResponse(_message.Message):
    __slots__ = ("languages",)
    LANGUAGES_FIELD_NUMBER: _ClassVar[int]
    languages: _containers.RepeatedCompositeFieldContainer[Language]
    def __init__(self, languages: _Optional[_Iterable[_Union[Language, _Mapping]]] = ...) -> None: ...
