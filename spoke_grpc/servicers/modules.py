"""spoke.v1.ModuleService.

Reads declared ``public_read`` reach this servicer for callers who are not members when the
organization has a public module (the org-context interceptor checked that); they are then
shown public modules and their versions only.

``GetVersion``, ``GetDependencyGraph`` and ``CompileVersion`` answer from the response cache
(``spoke_grpc.response_cache``) when it holds the answer for this reader: the bytes go out
as they are, with no statement for the reads (a compile still counts, records and audits
its job).
"""

from __future__ import annotations

from dataclasses import replace

from grpc import aio
from spoke.v1 import module_pb2, module_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.compile_queue import Requester
from spoke_grpc.compiler import SourceFile
from spoke_grpc.database import UnitOfWork
from spoke_grpc.domain import compilation, dependency_graph
from spoke_grpc.domain import modules as domain
from spoke_grpc.domain.modules import BreakingChangePolicy
from spoke_grpc.errors import InvalidArgument
from spoke_grpc.generators import LANGUAGES
from spoke_grpc.response_cache import Key, ResponseCache, reader_class
from spoke_grpc.servicers.convert import mask_paths, timestamp
from spoke_grpc.store import modules as store
from spoke_grpc.store import versions as version_store
from spoke_grpc.store.modules import Module
from spoke_grpc.store.versions import Version
from spoke_grpc.store.visibility import Reader
from spoke_grpc.types import CallContext

_UPDATABLE_PATHS = ("description", "is_public", "breaking_change_policy")
_IMMUTABLE_PATHS = ("id", "org_id", "org_name", "name", "created_by", "create_time", "update_time")

POLICY_TO_PROTO: dict[BreakingChangePolicy, module_pb2.BreakingChangePolicy] = {
    BreakingChangePolicy.ALLOW: module_pb2.BREAKING_CHANGE_POLICY_ALLOW,
    BreakingChangePolicy.REJECT: module_pb2.BREAKING_CHANGE_POLICY_REJECT,
}
_POLICY_FROM_PROTO = {int(v): k for k, v in POLICY_TO_PROTO.items()}


def policy_from_proto(field: str, value: int, *, required: bool) -> BreakingChangePolicy:
    if value == module_pb2.BREAKING_CHANGE_POLICY_UNSPECIFIED and not required:
        return BreakingChangePolicy.ALLOW
    policy = _POLICY_FROM_PROTO.get(value)
    if policy is None:
        names = ", ".join(f"BREAKING_CHANGE_POLICY_{p.value.upper()}" for p in POLICY_TO_PROTO)
        raise InvalidArgument.field(field, f"must be one of {names}; got {value}")
    return policy


def module_to_proto(row: Module) -> module_pb2.Module:
    return module_pb2.Module(
        id=str(row.id),
        org_id=str(row.org_id),
        org_name=row.org_name,
        name=row.name,
        description=row.description,
        is_public=row.is_public,
        created_by=str(row.created_by) if row.created_by else "",
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        breaking_change_policy=POLICY_TO_PROTO[BreakingChangePolicy(row.breaking_change_policy)],
    )


def version_to_proto(view: domain.VersionView) -> module_pb2.Version:
    row = view.version
    return module_pb2.Version(
        id=str(row.id),
        module_id=str(row.module_id),
        version=row.version,
        files=[
            module_pb2.ProtoFile(path=f.path, content=f.content, size_bytes=f.size_bytes)
            for f in view.files
        ],
        size_bytes=row.size_bytes,
        created_by=str(row.created_by) if row.created_by else "",
        create_time=timestamp(row.created_at),
        digest=row.digest,
        source=_source_to_proto(row),
        dependencies=[
            module_pb2.VersionRef(
                org=e.dep_org_name,
                module=e.dep_module_name,
                version=e.dep_version,
                deleted=e.deleted,
            )
            for e in view.dependencies
        ],
        org_id=str(row.org_id),
        org_name=view.module.org_name,
        module_name=view.module.name,
    )


def _source_to_proto(row: Version) -> module_pb2.VersionSource | None:
    """None (unset) when the pusher gave no source."""
    if not (row.source_repository or row.source_commit_sha or row.source_branch):
        return None
    return module_pb2.VersionSource(
        repository=row.source_repository, commit_sha=row.source_commit_sha, branch=row.source_branch
    )


def update_from_proto(request: module_pb2.UpdateModuleRequest) -> domain.ModuleUpdate:
    """Reads exactly the masked fields; an empty, unknown or repeated path is INVALID_ARGUMENT."""
    seen = mask_paths(request.update_mask, _UPDATABLE_PATHS, _IMMUTABLE_PATHS)
    source = request.update
    return domain.ModuleUpdate(
        description=source.description if "description" in seen else None,
        is_public=source.is_public if "is_public" in seen else None,
        breaking_change_policy=(
            policy_from_proto(
                "update.breaking_change_policy", source.breaking_change_policy, required=True
            )
            if "breaking_change_policy" in seen
            else None
        ),
        force=request.force,
    )


def reader(call: CallContext) -> Reader:
    """Who reads: every read of module data takes it to ``spoke_grpc.store.visibility``."""
    return Reader.of(call.principal)


def response_key(
    method: str, call: CallContext, module: str, version: str, extra: tuple[str, ...] = ()
) -> Key:
    """What decides a kept response: see ``spoke_grpc.response_cache``."""
    return (method, reader_class(reader(call)), call.require_org().id, module, version, extra)


class ModuleServicer(module_pb2_grpc.ModuleServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def CreateModule(
        self, request: module_pb2.CreateModuleRequest, context: aio.ServicerContext
    ) -> module_pb2.CreateModuleResponse:
        call = current_call()
        new = domain.NewModule(
            name=request.name,
            description=request.description,
            is_public=request.is_public,
            breaking_change_policy=policy_from_proto(
                "breaking_change_policy", request.breaking_change_policy, required=False
            ),
        )
        row = await domain.create_module(
            await call.connection(),
            call.require_org(),
            new,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return module_pb2.CreateModuleResponse(module=module_to_proto(row))

    async def GetModule(
        self, request: module_pb2.GetModuleRequest, context: aio.ServicerContext
    ) -> module_pb2.GetModuleResponse:
        call = current_call()
        row = await domain.get_module(
            await call.connection(),
            call.require_org(),
            request.module,
            reader=reader(call),
        )
        return module_pb2.GetModuleResponse(module=module_to_proto(row))

    async def ListModules(
        self, request: module_pb2.ListModulesRequest, context: aio.ServicerContext
    ) -> module_pb2.ListModulesResponse:
        call = current_call()
        org = call.require_org()
        who = reader(call)
        # Readers see different lists: tokens are bound to who reads.
        scope = f"{org.id}:{who.user_id or 'anonymous'}:{who.is_platform_admin}"
        pages = self._app.pages
        page = pages.request(
            "modules", scope, request.page_size, request.page_token, (pagination.text,)
        )
        rows = await store.list_modules(await call.connection(), org.id, reader=who, page=page)
        return module_pb2.ListModulesResponse(
            modules=[module_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token("modules", scope, rows, page, lambda r: [r.name]),
        )

    async def UpdateModule(
        self, request: module_pb2.UpdateModuleRequest, context: aio.ServicerContext
    ) -> module_pb2.UpdateModuleResponse:
        call = current_call()
        update = update_from_proto(request)
        row = await domain.update_module(
            await call.connection(),
            call.require_org(),
            request.module,
            update,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return module_pb2.UpdateModuleResponse(module=module_to_proto(row))

    async def DeleteModule(
        self, request: module_pb2.DeleteModuleRequest, context: aio.ServicerContext
    ) -> module_pb2.DeleteModuleResponse:
        call = current_call()
        await domain.delete_module(
            await call.connection(),
            call.require_org(),
            request.module,
            force=request.force,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return module_pb2.DeleteModuleResponse()

    async def CreateVersion(
        self, request: module_pb2.CreateVersionRequest, context: aio.ServicerContext
    ) -> module_pb2.CreateVersionResponse:
        call = current_call()
        new = domain.NewVersion(
            version=request.version,
            files=[SourceFile(f.path, f.content) for f in request.files],
            dependencies=[
                domain.DependencyRef(org=d.org, module=d.module, version=d.version)
                for d in request.dependencies
            ],
            source=domain.Source(
                repository=request.source.repository,
                commit_sha=request.source.commit_sha,
                branch=request.source.branch,
            ),
        )
        view = await domain.create_version(
            await call.connection(),
            call.require_org(),
            request.module,
            new,
            principal=call.require_principal(),
            compiler=self._app.compiler,
            requester=requester(call, context),
            method=call.policy.method,
        )
        return module_pb2.CreateVersionResponse(version=version_to_proto(view))

    @property
    def _responses(self) -> ResponseCache:
        return self._app.responses

    async def GetVersion(
        self, request: module_pb2.GetVersionRequest, context: aio.ServicerContext
    ) -> bytes:
        call = current_call()
        key = response_key("GetVersion", call, request.module, request.version)
        kept = self._responses.get(key)
        if kept is not None:
            return kept.data
        since = self._responses.generation
        view = await domain.get_version(
            await call.connection(),
            call.require_org(),
            request.module,
            request.version,
            reader=reader(call),
        )
        data = module_pb2.GetVersionResponse(version=version_to_proto(view)).SerializeToString()
        self._responses.put(key, data, view.orgs, since)
        return data

    async def ListVersions(
        self, request: module_pb2.ListVersionsRequest, context: aio.ServicerContext
    ) -> module_pb2.ListVersionsResponse:
        call = current_call()
        org = call.require_org()
        module = await domain.get_module(
            await call.connection(), org, request.module, reader=reader(call)
        )
        scope = str(module.id)
        pages = self._app.pages
        page = pages.request(
            "versions",
            scope,
            request.page_size,
            request.page_token,
            (pagination.timestamp, pagination.uuid_part),
        )
        rows = await version_store.list_versions(await call.connection(), org.id, module.id, page)
        views = await domain.list_versions(
            await call.connection(),
            org,
            module,
            rows[: page.size],
            reader=reader(call),
        )
        # A page cut short by its size budget continues after its last version.
        shown = replace(page, size=len(views)) if len(views) < page.size else page
        return module_pb2.ListVersionsResponse(
            versions=[version_to_proto(v) for v in views],
            next_page_token=pages.next_token(
                "versions", scope, rows, shown, lambda r: [r.created_at, r.id]
            ),
        )

    async def CompileVersion(
        self, request: module_pb2.CompileVersionRequest, context: aio.ServicerContext
    ) -> bytes:
        call = current_call()
        org = call.require_org()
        # Before any database work.
        languages = compilation.parse_languages(request.languages, self._app.compiler.toolchain)
        key = response_key("CompileVersion", call, request.module, request.version, languages)
        kept = self._responses.get(key)
        if kept is not None:
            # A download of what this reader was answered before: no compile job (as any
            # build from the cache), no statement.
            return kept.data
        since = self._responses.generation
        module, version, _ = await domain.find_version(
            await call.connection(),
            org,
            request.module,
            request.version,
            reader=reader(call),
        )
        compiled = await compilation.compile_version(
            await call.connection(),
            org,
            module,
            version,
            languages,
            principal=call.require_principal(),
            compiler=self._app.compiler,
            requester=requester(call, context),
            method=call.policy.method,
            on_rollback=_unit(call).on_rollback,
        )
        build = compiled.build
        data = module_pb2.CompileVersionResponse(
            descriptor_set=build.descriptor_set,
            files=[
                module_pb2.GeneratedFile(language=f.language, path=f.path, content=f.content)
                for f in build.files
            ],
        ).SerializeToString()
        self._responses.put(key, data, compiled.orgs, since)
        return data

    async def CheckCompatibility(
        self, request: module_pb2.CheckCompatibilityRequest, context: aio.ServicerContext
    ) -> module_pb2.CheckCompatibilityResponse:
        call = current_call()
        org = call.require_org()
        module, version, against = await domain.find_version(
            await call.connection(),
            org,
            request.module,
            request.version,
            reader=reader(call),
            against_ref=request.against_version,
        )
        if against is None:  # find_version returns it whenever against_ref is given
            raise RuntimeError("CheckCompatibility found no against_version")
        violations = await compilation.check_compatibility(
            await call.connection(),
            org,
            module,
            version,
            against,
            principal=call.require_principal(),
            compiler=self._app.compiler,
            requester=requester(call, context),
            method=call.policy.method,
            on_rollback=_unit(call).on_rollback,
        )
        return module_pb2.CheckCompatibilityResponse(
            compatible=not violations,
            violations=[
                module_pb2.CompatibilityViolation(rule=v.rule, path=v.path, message=v.message)
                for v in violations
            ],
        )

    async def GetDependencyGraph(
        self, request: module_pb2.GetDependencyGraphRequest, context: aio.ServicerContext
    ) -> bytes:
        call = current_call()
        key = response_key("GetDependencyGraph", call, request.module, request.version)
        kept = self._responses.get(key)
        if kept is not None:
            return kept.data
        since = self._responses.generation
        module, version, _ = await domain.find_version(
            await call.connection(),
            call.require_org(),
            request.module,
            request.version,
            reader=reader(call),
        )
        graph = await dependency_graph.dependency_graph(
            await call.connection(), module, version, reader=reader(call)
        )
        data = module_pb2.GetDependencyGraphResponse(
            nodes=[
                module_pb2.DependencyGraphNode(
                    id=n.id,
                    version=module_pb2.VersionRef(
                        org=n.org, module=n.module, version=n.version, deleted=n.deleted
                    ),
                    is_public=n.is_public,
                )
                for n in graph.nodes
            ],
            edges=[
                module_pb2.DependencyGraphEdge(dependent=e.dependent, dependency=e.dependency)
                for e in graph.edges
            ],
        ).SerializeToString()
        self._responses.put(key, data, graph.orgs, since)
        return data

    async def ListPublicModules(
        self, request: module_pb2.ListPublicModulesRequest, context: aio.ServicerContext
    ) -> module_pb2.ListPublicModulesResponse:
        call = current_call()
        domain.check_query(request.query)
        # The token is bound to its query: a page of one search cannot continue another.
        scope = f"query:{request.query}"
        pages = self._app.pages
        page = pages.request(
            "public_modules",
            scope,
            request.page_size,
            request.page_token,
            (pagination.text, pagination.text),
        )
        rows = await store.search_public(await call.connection(), request.query, page)
        return module_pb2.ListPublicModulesResponse(
            modules=[module_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "public_modules", scope, rows, page, lambda r: [r.name, r.org_name]
            ),
        )

    async def ListLanguages(
        self, request: module_pb2.ListLanguagesRequest, context: aio.ServicerContext
    ) -> module_pb2.ListLanguagesResponse:
        toolchain = self._app.compiler.toolchain
        languages = []
        for name in sorted(LANGUAGES):
            language = LANGUAGES[name]
            generators = []
            for generator in language.generators:
                program = toolchain.program(generator.program)
                generators.append(
                    module_pb2.LanguageGenerator(
                        name=generator.out,
                        program=generator.program,
                        version=program.version if program.path else "",
                        options=generator.options,
                        installed=program.path is not None,
                    )
                )
            languages.append(
                module_pb2.Language(
                    name=name,
                    generators=generators,
                    grpc_stubs=language.grpc_stubs,
                    available=toolchain.available(name),
                    description=language.note,
                )
            )
        return module_pb2.ListLanguagesResponse(languages=languages)


def requester(call: CallContext, context: aio.ServicerContext) -> Requester:
    """Whose compile jobs the call's are: its organization's, until the caller's deadline."""
    return Requester.for_call(call.require_org().id, context.time_remaining())


def _unit(call: CallContext) -> UnitOfWork:
    if call.unit is None:  # the unit-of-work interceptor sets it for every spoke.v1 call
        raise RuntimeError(f"{call.policy.method} has no unit of work")
    return call.unit
