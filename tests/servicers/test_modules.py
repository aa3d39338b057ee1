"""ModuleService: modules, versions, dependencies and public sharing (issue 7).

Everything goes through the real server and generated stubs; compilation runs the real
protoc in the server's worker pool.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from spoke.v1 import module_pb2 as pb
from spoke.v1 import organization_pb2

from spoke_grpc.domain import modules as domain
from spoke_grpc.types import Role
from tests import harness
from tests.conftest import Users
from tests.harness import Client, RpcFailure, all_pages, failure, failure_of
from tests.test_fuzz import BAD_CODES, LEAK_MARKERS, NASTY_STRINGS

OK = "OK"
T = TypeVar("T")


def proto(package: str, body: str = "", imports: Sequence[str] = ()) -> str:
    lines = ['syntax = "proto3";', f"package {package};", *(f'import "{i}";' for i in imports)]
    return "\n".join([*lines, body]) + "\n"


def create_org(client: Client, name: str, *, unlimited: bool = False) -> str:
    tier = organization_pb2.QUOTA_TIER_UNLIMITED if unlimited else 0
    request = organization_pb2.CreateOrganizationRequest(name=name, quota_tier=tier)
    org_id: str = client.orgs.CreateOrganization(request).organization.id
    return org_id


def create_module(client: Client, org: str, name: str, **fields: Any) -> pb.Module:
    request = pb.CreateModuleRequest(org=org, name=name, **fields)
    module: pb.Module = client.modules.CreateModule(request).module
    return module


def push(
    client: Client,
    org: str,
    module: str,
    version: str,
    files: Mapping[str, str],
    deps: Sequence[tuple[str, str, str]] = (),
    **fields: Any,
) -> pb.Version:
    request = pb.CreateVersionRequest(
        org=org,
        module=module,
        version=version,
        files=[pb.ProtoFile(path=path, content=content) for path, content in files.items()],
        dependencies=[pb.VersionRef(org=o, module=m, version=v) for o, m, v in deps],
        **fields,
    )
    result: pb.Version = client.modules.CreateVersion(request).version
    return result


def get_version(client: Client, org: str, module: str, version: str) -> pb.Version:
    request = pb.GetVersionRequest(org=org, module=module, version=version)
    result: pb.Version = client.modules.GetVersion(request).version
    return result


def code_of(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return str(exc.code().name)  # type: ignore[attr-defined]
    return OK


def retrying_busy(call: Callable[[], T]) -> T:
    """``call`` again while the compile pool is full (``COMPILER_BUSY``), as a client honouring
    RetryInfo would; the pause is shorter than RetryInfo's second, to keep tests quick."""
    for _ in range(200):
        try:
            return call()
        except grpc.RpcError as exc:
            busy = exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            if not busy or failure_of(exc).error_info.reason != "COMPILER_BUSY":
                raise
        time.sleep(0.05)
    raise AssertionError("the compile pool stayed busy")


def violations_of(error: RpcFailure, field: str) -> list[str]:
    """Every BadRequest description for ``field`` (one file may have several errors)."""
    bad = error.detail(error_details_pb2.BadRequest)
    return [v.description for v in bad.field_violations if v.field == field]


def count(db: psycopg.Connection[Any], table: str) -> int:
    row = db.execute(f"SELECT count(*) FROM {table}").fetchone()  # tables named in tests only
    assert row is not None
    return int(row[0])


SIMPLE = {"acme/core/v1/core.proto": proto("acme.core.v1", "message Thing { string id = 1; }")}


# --- Modules ---------------------------------------------------------------------------------


def test_create_module_records_creator_policy_and_audit(
    users: Users, db: psycopg.Connection[Any]
) -> None:
    owner, developer = users.create("owner"), users.create("dev")
    org_id = create_org(owner, "acme")
    users.join(org_id, developer, Role.DEVELOPER)
    module = create_module(
        developer,
        "acme",
        "common_types",
        description="Shared types",
        breaking_change_policy=pb.BREAKING_CHANGE_POLICY_REJECT,
    )
    assert (module.name, module.org_id, module.org_name) == ("common_types", org_id, "acme")
    assert module.created_by == developer.user_id
    assert module.description == "Shared types"
    assert not module.is_public
    assert module.breaking_change_policy == pb.BREAKING_CHANGE_POLICY_REJECT
    assert module.create_time.seconds > 0
    default = create_module(developer, org_id, "defaults")
    assert default.breaking_change_policy == pb.BREAKING_CHANGE_POLICY_ALLOW
    assert db.execute(
        "SELECT target, actor_id::text FROM audit_events"
        " WHERE method LIKE '%%CreateModule' ORDER BY id"
    ).fetchall() == [
        ("organizations/acme/modules/common_types", developer.user_id),
        ("organizations/acme/modules/defaults", developer.user_id),
    ]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("ab", id="too-short"),
        pytest.param("a" * 41, id="too-long"),
        pytest.param("Core", id="uppercase"),
        pytest.param("1core", id="leading-digit"),
        pytest.param("core_", id="trailing-underscore"),
        pytest.param("co--re", id="double-dash"),
        pytest.param("co re", id="space"),
        pytest.param("co.re", id="dot"),
        pytest.param("a1b2c3d4-e5f6-a7b8-c9d0-e1f2a3b4c5d6", id="uuid-shaped"),
    ],
)
def test_create_module_rejects_bad_names(
    users: Users, db: psycopg.Connection[Any], name: str
) -> None:
    owner = users.create()
    create_org(owner, "acme")
    error = failure(lambda: create_module(owner, "acme", name))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"name"}
    assert count(db, "modules") == 0


def test_create_module_validates_description_and_policy(users: Users) -> None:
    owner = users.create()
    create_org(owner, "acme")
    error = failure(lambda: create_module(owner, "acme", "core", description="x" * 2001))
    assert set(error.field_violations) == {"description"}
    error = failure(lambda: create_module(owner, "acme", "core", breaking_change_policy=7))
    assert set(error.field_violations) == {"breaking_change_policy"}
    assert create_module(owner, "acme", "snake_case_ok").name == "snake_case_ok"


def test_module_names_are_unique_per_org(users: Users) -> None:
    alice, bob = users.create(), users.create()
    create_org(alice, "alpha")
    create_org(bob, "beta")
    create_module(alice, "alpha", "core")
    error = failure(lambda: create_module(alice, "alpha", "core"))
    assert error.code is grpc.StatusCode.ALREADY_EXISTS
    assert error.error_info.metadata["kind"] == "module"
    assert create_module(bob, "beta", "core").name == "core"  # another org: fine


def test_get_module_by_name_and_by_id(users: Users) -> None:
    owner = users.create()
    org_id = create_org(owner, "acme")
    module = create_module(owner, "acme", "core")
    by_name = owner.modules.GetModule(pb.GetModuleRequest(org="acme", module="core")).module
    by_id = owner.modules.GetModule(pb.GetModuleRequest(org=org_id, module=module.id)).module
    assert by_name == by_id == module
    error = failure(lambda: owner.modules.GetModule(pb.GetModuleRequest(org="acme", module="")))
    assert set(error.field_violations) == {"module"}
    huge = failure(
        lambda: owner.modules.GetModule(pb.GetModuleRequest(org="acme", module="m" * 5000))
    )
    assert huge.code is grpc.StatusCode.NOT_FOUND


def update(client: Client, org: str, module: str, paths: list[str], **fields: Any) -> pb.Module:
    request = pb.UpdateModuleRequest(
        org=org, module=module, update=pb.Module(**fields), update_mask=FieldMask(paths=paths)
    )
    result: pb.Module = client.modules.UpdateModule(request).module
    return result


def test_update_changes_only_masked_fields(users: Users, db: psycopg.Connection[Any]) -> None:
    owner = users.create()
    create_org(owner, "acme")
    module = create_module(owner, "acme", "core", description="keep")
    updated = update(owner, "acme", "core", ["is_public"], is_public=True, description="no")
    assert updated.is_public
    assert updated.description == "keep"
    assert updated.update_time.ToDatetime() > module.update_time.ToDatetime()
    updated = update(
        owner,
        "acme",
        module.id,
        ["description", "breaking_change_policy"],
        breaking_change_policy=pb.BREAKING_CHANGE_POLICY_REJECT,
    )
    assert updated.description == ""
    assert updated.breaking_change_policy == pb.BREAKING_CHANGE_POLICY_REJECT
    assert updated.is_public
    assert db.execute(
        "SELECT target FROM audit_events WHERE method LIKE '%%UpdateModule' ORDER BY id"
    ).fetchall() == [
        ("organizations/acme/modules/core:is_public",),
        ("organizations/acme/modules/core:breaking_change_policy,description",),
    ]


@pytest.mark.parametrize(
    ("paths", "field", "fragment"),
    [
        pytest.param([], "update_mask", "required", id="empty-mask"),
        pytest.param(["name"], "update_mask", "cannot be updated", id="immutable-name"),
        pytest.param(["created_by"], "update_mask", "cannot be updated", id="immutable-creator"),
        pytest.param(["colour"], "update_mask", "unknown field", id="unknown"),
        pytest.param(["is_public", "is_public"], "update_mask", "twice", id="repeated"),
        pytest.param(
            ["breaking_change_policy"],
            "update.breaking_change_policy",
            "must be one of",
            id="unspecified-policy",
        ),
    ],
)
def test_update_rejects_bad_masks(
    users: Users, paths: list[str], field: str, fragment: str
) -> None:
    owner = users.create()
    create_org(owner, "acme")
    create_module(owner, "acme", "core")
    error = failure(lambda: update(owner, "acme", "core", paths, is_public=True))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.field_violations[field]


# --- The role matrix -------------------------------------------------------------------------

# Each caller runs every RPC of this issue against a private module `core` (made by the
# developer `creator`) in an org without public modules; DeleteModule comes last.
ROLE_MATRIX: dict[str, dict[str, str]] = {
    "viewer": {
        "GetModule": OK,
        "ListModules": OK,
        "GetVersion": OK,
        "ListVersions": OK,
        "CreateModule": "PERMISSION_DENIED",
        "CreateVersion": "PERMISSION_DENIED",
        "UpdateModule": "PERMISSION_DENIED",
        "DeleteModule": "PERMISSION_DENIED",
    },
    "creator": dict.fromkeys(
        (
            "GetModule",
            "ListModules",
            "GetVersion",
            "ListVersions",
            "CreateModule",
            "CreateVersion",
            "UpdateModule",
            "DeleteModule",
        ),
        OK,
    ),
    "other-developer": {
        "GetModule": OK,
        "ListModules": OK,
        "GetVersion": OK,
        "ListVersions": OK,
        "CreateModule": OK,
        "CreateVersion": OK,
        "UpdateModule": "PERMISSION_DENIED",
        "DeleteModule": "PERMISSION_DENIED",
    },
    "admin": {},
    "owner": {},
    "platform-admin": {},
    "stranger": {},
    "anonymous": {
        "GetModule": "NOT_FOUND",
        "ListModules": "NOT_FOUND",
        "GetVersion": "NOT_FOUND",
        "ListVersions": "NOT_FOUND",
        "CreateModule": "UNAUTHENTICATED",
        "CreateVersion": "UNAUTHENTICATED",
        "UpdateModule": "UNAUTHENTICATED",
        "DeleteModule": "UNAUTHENTICATED",
    },
}
for _caller in ("admin", "owner", "platform-admin"):
    ROLE_MATRIX[_caller] = ROLE_MATRIX["creator"]
ROLE_MATRIX["stranger"] = dict.fromkeys(ROLE_MATRIX["creator"], "NOT_FOUND")


@pytest.mark.parametrize("caller", list(ROLE_MATRIX))
def test_role_matrix(
    admin: Client, anonymous: Client, users: Users, db: psycopg.Connection[Any], caller: str
) -> None:
    owner, creator = users.create("owner"), users.create("creator")
    org_id = create_org(owner, "acme")
    users.join(org_id, creator, Role.DEVELOPER)
    create_module(creator, "acme", "core")
    push(creator, "acme", "core", "1.0.0", SIMPLE)
    roles = {"viewer": Role.VIEWER, "other-developer": Role.DEVELOPER, "admin": Role.ADMIN}
    client = {
        "creator": creator,
        "owner": owner,
        "platform-admin": admin,
        "anonymous": anonymous,
    }.get(caller) or users.create(caller)
    if caller in roles:
        users.join(org_id, client, roles[caller])
    stub = client.modules
    tag = caller.replace("-", "")
    calls: dict[str, Callable[[], Any]] = {
        "GetModule": lambda: stub.GetModule(pb.GetModuleRequest(org="acme", module="core")),
        "ListModules": lambda: stub.ListModules(pb.ListModulesRequest(org="acme")),
        "GetVersion": lambda: get_version(client, "acme", "core", "1.0.0"),
        "ListVersions": lambda: stub.ListVersions(
            pb.ListVersionsRequest(org="acme", module="core")
        ),
        "CreateModule": lambda: create_module(client, "acme", f"by-{tag}"),
        "CreateVersion": lambda: push(client, "acme", "core", f"2.0.0-{tag}", SIMPLE),
        "UpdateModule": lambda: update(client, "acme", "core", ["description"], description="x"),
        "DeleteModule": lambda: stub.DeleteModule(
            pb.DeleteModuleRequest(org="acme", module="core")
        ),
    }
    codes = {name: code_of(call) for name, call in calls.items()}
    assert codes == ROLE_MATRIX[caller]
    deleted = ROLE_MATRIX[caller]["DeleteModule"] == OK
    assert db.execute("SELECT count(*) FROM modules WHERE name = 'core'").fetchone() == (
        (0,) if deleted else (1,)
    )


def test_permission_denied_names_the_rule(users: Users) -> None:
    owner, creator, other = users.create(), users.create(), users.create()
    org_id = create_org(owner, "acme")
    users.join(org_id, creator, Role.DEVELOPER)
    users.join(org_id, other, Role.DEVELOPER)
    create_module(creator, "acme", "core")
    error = failure(lambda: update(other, "acme", "core", ["description"], description="x"))
    assert error.code is grpc.StatusCode.PERMISSION_DENIED
    assert "creator" in error.message and "developer" in error.message


# --- Public and private visibility -----------------------------------------------------------


@pytest.fixture
def shared_world(users: Users) -> Client:
    """Org `acme` with public module `shared` (version 1.0.0) and private module `secret`
    (version 1.0.0); org `closed` with only a private module. Returns acme's owner."""
    owner = users.create("owner")
    create_org(owner, "acme")
    create_module(owner, "acme", "shared", is_public=True, description="Shared types")
    create_module(owner, "acme", "secret")
    push(owner, "acme", "shared", "1.0.0", {"acme/shared.proto": proto("acme.shared")})
    push(owner, "acme", "secret", "1.0.0", {"acme/secret.proto": proto("acme.secret")})
    create_org(owner, "closed")
    create_module(owner, "closed", "hidden")
    push(owner, "closed", "hidden", "1.0.0", {"closed/hidden.proto": proto("closed")})
    return owner


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_public_modules_and_versions_are_readable_by_anyone(
    shared_world: Client, anonymous: Client, users: Users, who: str
) -> None:
    client = anonymous if who == "anonymous" else users.create()
    stub = client.modules
    module = stub.GetModule(pb.GetModuleRequest(org="acme", module="shared")).module
    assert module.is_public and module.org_name == "acme"
    listed = stub.ListModules(pb.ListModulesRequest(org="acme")).modules
    assert [m.name for m in listed] == ["shared"]
    version = get_version(client, "acme", "shared", "1.0.0")
    assert [f.path for f in version.files] == ["acme/shared.proto"]
    assert version.files[0].content == proto("acme.shared")
    versions = stub.ListVersions(pb.ListVersionsRequest(org="acme", module="shared")).versions
    assert [v.version for v in versions] == ["1.0.0"]
    public = stub.ListPublicModules(pb.ListPublicModulesRequest()).modules
    assert [(m.org_name, m.name) for m in public] == [("acme", "shared")]


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_private_modules_look_missing_to_outsiders(
    shared_world: Client, anonymous: Client, users: Users, who: str
) -> None:
    client = anonymous if who == "anonymous" else users.create()
    for module in ("secret", "no-such-module"):
        error = failure(
            lambda m=module: client.modules.GetModule(pb.GetModuleRequest(org="acme", module=m))
        )
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.message == f"module {module!r} not found"
        assert dict(error.error_info.metadata) == {"kind": "module", "ref": module}
        for call in (
            lambda m=module: get_version(client, "acme", m, "1.0.0"),
            lambda m=module: client.modules.ListVersions(
                pb.ListVersionsRequest(org="acme", module=m)
            ),
        ):
            assert failure(call).message == f"module {module!r} not found"
    # The private module's id does not help either.
    secret_id = shared_world.modules.GetModule(
        pb.GetModuleRequest(org="acme", module="secret")
    ).module.id
    error = failure(
        lambda: client.modules.GetModule(pb.GetModuleRequest(org="acme", module=secret_id))
    )
    assert error.message == f"module {secret_id!r} not found"


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_an_org_without_public_modules_looks_missing_to_outsiders(
    shared_world: Client, anonymous: Client, users: Users, who: str
) -> None:
    client = anonymous if who == "anonymous" else users.create()
    stub = client.modules
    for org in ("closed", "no-such-org"):
        calls = (
            lambda o=org: stub.GetModule(pb.GetModuleRequest(org=o, module="hidden")),
            lambda o=org: stub.ListModules(pb.ListModulesRequest(org=o)),
            lambda o=org: get_version(client, o, "hidden", "1.0.0"),
            lambda o=org: stub.ListVersions(pb.ListVersionsRequest(org=o, module="hidden")),
        )
        for call in calls:
            error = failure(call)
            assert error.code is grpc.StatusCode.NOT_FOUND
            assert error.message == f"organization {org!r} not found"


def test_outsiders_cannot_write_to_an_org_with_public_modules(
    shared_world: Client, anonymous: Client, users: Users, db: psycopg.Connection[Any]
) -> None:
    stranger = users.create()
    before = count(db, "module_versions")
    for client, code in ((stranger, "NOT_FOUND"), (anonymous, "UNAUTHENTICATED")):
        assert code_of(lambda c=client: create_module(c, "acme", "mine")) == code
        assert code_of(lambda c=client: push(c, "acme", "shared", "9.0.0", SIMPLE)) == code
        assert (
            code_of(lambda c=client: update(c, "acme", "shared", ["is_public"], is_public=False))
            == code
        )
    assert count(db, "module_versions") == before


def test_members_and_platform_admins_see_private_modules(
    shared_world: Client, admin: Client, users: Users
) -> None:
    for client in (shared_world, admin):
        listed = client.modules.ListModules(pb.ListModulesRequest(org="acme")).modules
        assert [m.name for m in listed] == ["secret", "shared"]
        assert get_version(client, "acme", "secret", "v1.0.0").version == "1.0.0"


# --- Versions --------------------------------------------------------------------------------


@pytest.fixture
def acme(users: Users) -> Client:
    """The owner of org `acme` with an empty private module `core`."""
    owner = users.create("owner")
    create_org(owner, "acme")
    create_module(owner, "acme", "core")
    return owner


def test_push_stores_files_digest_size_source_and_audit(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    files = {
        "acme/core/v1/b.proto": proto("acme.core.v1", "// café 🚀\nmessage B {}"),
        "acme/core/v1/a.proto": proto(
            "acme.core.v1", "message A { B b = 1; }", ["acme/core/v1/b.proto"]
        ),
    }
    source = pb.VersionSource(
        repository="https://github.com/acme/protos", commit_sha="ABCDEF1234567", branch="main"
    )
    pushed = push(acme, "acme", "core", "v1.2.3-rc.1+build.7", files, source=source)
    sizes = {path: len(content.encode()) for path, content in files.items()}
    assert pushed.version == "v1.2.3-rc.1+build.7"
    assert pushed.size_bytes == sum(sizes.values())
    assert pushed.org_name == "acme" and pushed.module_name == "core"
    assert pushed.created_by == acme.user_id
    assert pushed.source.commit_sha == "abcdef1234567"  # stored in lower case
    assert pushed.source.repository == source.repository and pushed.source.branch == "main"
    # The response names the files (sorted by path) but carries no contents.
    assert [(f.path, f.size_bytes, f.content) for f in pushed.files] == [
        (path, sizes[path], "") for path in sorted(files)
    ]
    got = get_version(acme, "acme", "core", "1.2.3-rc.1")
    assert {f.path: f.content for f in got.files} == files
    assert got.digest == pushed.digest
    assert db.execute(
        "SELECT target FROM audit_events WHERE method LIKE '%%CreateVersion'"
    ).fetchall() == [("organizations/acme/modules/core/versions/v1.2.3-rc.1+build.7",)]


def canonical_digest(files: Mapping[str, str]) -> str:
    """The documented encoding, written independently of the server's code."""
    data = b""
    for path in sorted(files, key=lambda p: p.encode()):
        for part in (path.encode(), files[path].encode()):
            data += len(part).to_bytes(8, "big") + part
    return hashlib.sha256(data).hexdigest()


def test_digest_is_canonical_and_stable(acme: Client, db: psycopg.Connection[Any]) -> None:
    files = {
        "z.proto": proto("z", "message Z {}"),
        "a/b.proto": proto("a.b", "// ünïcode\nmessage AB {}"),
        "a.proto": proto("a", "message A {}"),
    }
    first = push(acme, "acme", "core", "1.0.0", files)
    reordered = dict(reversed(list(files.items())))
    second = push(acme, "acme", "core", "1.0.1", reordered)
    assert first.digest == second.digest == canonical_digest(files)
    changed = push(acme, "acme", "core", "1.0.2", {**files, "a.proto": proto("a", "message A2 {}")})
    assert changed.digest != first.digest
    listed = acme.modules.ListVersions(pb.ListVersionsRequest(org="acme", module="core")).versions
    assert {v.version: v.digest for v in listed}["1.0.0"] == first.digest
    # The migration's SQL form of the encoding (used to backfill) agrees.
    row = db.execute(
        "SELECT encode(sha256(string_agg(int8send(octet_length(path)) || convert_to(path, 'UTF8')"
        " || int8send(octet_length(content)) || convert_to(content, 'UTF8'), ''::bytea"
        " ORDER BY convert_to(path, 'UTF8'))), 'hex') FROM version_files WHERE version_id = %s",
        [first.id],
    ).fetchone()
    assert row == (first.digest,)


def test_list_versions_newest_first_without_contents(acme: Client) -> None:
    for i in range(12):
        push(acme, "acme", "core", f"1.{i}.0", {f"v{i}.proto": proto(f"v{i}")})
    pages = all_pages(
        lambda token: acme.modules.ListVersions(
            pb.ListVersionsRequest(org="acme", module="core", page_size=5, page_token=token)
        ),
        "versions",
    )
    assert [len(page) for page in pages] == [5, 5, 2]
    versions = [v for page in pages for v in page]
    assert [v.version for v in versions] == [f"1.{i}.0" for i in reversed(range(12))]
    assert all(v.files and not v.files[0].content and v.files[0].size_bytes for v in versions)
    assert versions[0].files[0].path == "v11.proto"


def test_list_versions_pages_stay_within_their_size_budget(
    acme: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        push(
            acme,
            "acme",
            "core",
            f"1.{i}.0",
            {f"dir/file{j}.proto": proto(f"p{j}") for j in range(3)},
        )
    # Each version's listing is over the budget: a page still holds one, and the tokens
    # continue after it.
    monkeypatch.setattr(domain, "LIST_BUDGET_BYTES", 100)
    pages = all_pages(
        lambda token: acme.modules.ListVersions(
            pb.ListVersionsRequest(org="acme", module="core", page_size=3, page_token=token)
        ),
        "versions",
    )
    assert [[v.version for v in page] for page in pages] == [
        ["1.3.0"],
        ["1.2.0"],
        ["1.1.0"],
        ["1.0.0"],
    ]


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("", id="empty"),
        pytest.param("1.2", id="two-parts"),
        pytest.param("01.2.3", id="leading-zero"),
        pytest.param("1.2.3-", id="empty-prerelease"),
        pytest.param("1.2.3-01", id="numeric-prerelease-leading-zero"),
        pytest.param("1.2.3+", id="empty-build"),
        pytest.param("V1.2.3", id="capital-v"),
        pytest.param("latest", id="word"),
        pytest.param("1.2.3 ", id="trailing-space"),
        pytest.param("1.2.3-" + "a" * 200, id="too-long"),
        pytest.param("\uff11.2.3", id="fullwidth-digit"),
    ],
)
def test_push_rejects_bad_versions(acme: Client, db: psycopg.Connection[Any], version: str) -> None:
    error = failure(lambda: push(acme, "acme", "core", version, SIMPLE))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"version"}
    assert count(db, "module_versions") == 0


@pytest.mark.parametrize("version", ["0.0.0", "v1.2.3", "1.2.3-rc.1", "1.2.3-0.a-b.9+exp.sha.5"])
def test_push_accepts_semantic_versions(acme: Client, version: str) -> None:
    assert push(acme, "acme", "core", version, SIMPLE).version == version


def test_a_version_is_unique_whatever_its_spelling(acme: Client) -> None:
    push(acme, "acme", "core", "v1.0.0", SIMPLE)
    for spelling in ("v1.0.0", "1.0.0", "1.0.0+other-build"):
        error = failure(lambda s=spelling: push(acme, "acme", "core", s, SIMPLE))
        assert error.code is grpc.StatusCode.ALREADY_EXISTS
        assert error.error_info.metadata["kind"] == "version"
    assert push(acme, "acme", "core", "1.0.0-rc.1", SIMPLE).version == "1.0.0-rc.1"
    assert get_version(acme, "acme", "core", "1.0.0+whatever").version == "v1.0.0"


def test_concurrent_pushes_of_one_version_make_exactly_one(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    def attempt(i: int) -> str:
        files = {f"race{i}.proto": proto(f"race{i}")}
        return code_of(lambda: retrying_busy(lambda: push(acme, "acme", "core", "3.0.0", files)))

    with ThreadPoolExecutor(8) as pool:  # more than the compile pool takes at once
        codes = list(pool.map(attempt, range(8)))
    assert sorted(codes) == ["ALREADY_EXISTS"] * 7 + [OK]
    assert count(db, "module_versions") == 1
    assert count(db, "version_files") == 1


def test_get_version_errors(acme: Client) -> None:
    push(acme, "acme", "core", "1.0.0", SIMPLE)
    missing = failure(lambda: get_version(acme, "acme", "core", "2.0.0"))
    assert missing.code is grpc.StatusCode.NOT_FOUND
    assert missing.message == "version 'core@2.0.0' not found"
    bad = failure(lambda: get_version(acme, "acme", "core", "two"))
    assert set(bad.field_violations) == {"version"}
    version = get_version(acme, "acme", "core", "1.0.0")
    assert get_version(acme, "acme", "core", version.id).digest == version.digest


# --- Files -----------------------------------------------------------------------------------

GOOD = proto("ok", "message Ok {}")


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        pytest.param("", "required", id="empty"),
        pytest.param("/etc/x.proto", "relative", id="absolute"),
        pytest.param("../x.proto", "'..'", id="parent"),
        pytest.param("a/../../x.proto", "'..'", id="parent-inside"),
        pytest.param("a\\x.proto", "backslash", id="backslash"),
        pytest.param("C:\\x.proto", "backslash", id="windows-drive"),
        pytest.param("a//x.proto", "empty segments", id="double-slash"),
        pytest.param("a/", "empty segments", id="trailing-slash"),
        pytest.param("./x.proto", "'.' segments", id="dot-segment"),
        pytest.param("x.txt", ".proto", id="not-proto"),
        pytest.param("x.proto.bak", ".proto", id="proto-not-last"),
        pytest.param(".proto", "segments may contain", id="only-extension"),
        pytest.param("-I.proto", "segments may contain", id="leading-dash"),
        pytest.param(".hidden/x.proto", "segments may contain", id="hidden-dir"),
        pytest.param("a b.proto", "segments may contain", id="space"),
        pytest.param("caf\u00e9.proto", "segments may contain", id="non-ascii"),
        pytest.param("a:b.proto", "segments may contain", id="colon"),
        pytest.param("google/protobuf/any.proto", "reserved", id="well-known-types"),
        pytest.param("a/" * 256 + "x.proto", "at most 512", id="too-long"),
    ],
)
def test_push_rejects_bad_paths(
    acme: Client, db: psycopg.Connection[Any], path: str, fragment: str
) -> None:
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", {"ok.proto": GOOD, path: GOOD}))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert set(error.field_violations) == {"files[1].path"}
    assert fragment in error.field_violations["files[1].path"]
    assert count(db, "module_versions") == 0


def test_push_rejects_duplicate_paths_and_file_directory_clashes(acme: Client) -> None:
    request = pb.CreateVersionRequest(
        org="acme",
        module="core",
        version="1.0.0",
        files=[
            pb.ProtoFile(path="a.proto", content=GOOD),
            pb.ProtoFile(path="a.proto", content=GOOD),
            pb.ProtoFile(path="b.proto", content=GOOD),
            pb.ProtoFile(path="b.proto/c.proto", content=GOOD),
        ],
    )
    error = failure(lambda: acme.modules.CreateVersion(request))
    assert error.field_violations == {
        "files[1].path": "duplicates files[0].path",
        "files[2].path": "'b.proto' is also a directory of files[3].path",
    }


@pytest.mark.parametrize(
    ("files", "field", "fragment"),
    [
        pytest.param({}, "files", "at least one", id="no-files"),
        pytest.param({"a.proto": ""}, "files[0].content", "empty", id="empty-content"),
        pytest.param({"a.proto": " \n\t"}, "files[0].content", "empty", id="blank-content"),
        pytest.param(
            {"a.proto": GOOD + "//" + "x" * 2**20}, "files[0].content", "1 MiB", id="file-too-big"
        ),
        pytest.param(
            {f"f{i}.proto": GOOD for i in range(201)}, "files", "at most 200", id="too-many-files"
        ),
        pytest.param(
            {f"f{i}.proto": GOOD + "//" + "x" * (2**20 - 100) for i in range(9)},
            "files",
            "8 MiB",
            id="version-too-big",
        ),
    ],
)
def test_push_enforces_content_and_size_limits(
    acme: Client, files: dict[str, str], field: str, fragment: str
) -> None:
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", files))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in error.field_violations[field]


def test_push_validates_source(acme: Client) -> None:
    source = pb.VersionSource(repository="x\ny", commit_sha="not-a-sha", branch="b" * 256)
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", SIMPLE, source=source))
    assert set(error.field_violations) == {
        "source.repository",
        "source.commit_sha",
        "source.branch",
    }


def test_every_bad_field_is_reported_at_once(acme: Client) -> None:
    error = failure(
        lambda: push(acme, "acme", "core", "nope", {"../x.proto": ""}, deps=[("", "m", "1")])
    )
    assert set(error.field_violations) == {
        "version",
        "files[0].path",
        "files[0].content",
        "dependencies[0].org",
        "dependencies[0].version",
    }


# --- Compilation -----------------------------------------------------------------------------


def test_compiler_errors_name_the_file_and_line(acme: Client, db: psycopg.Connection[Any]) -> None:
    files = {
        "ok.proto": GOOD,
        "broken.proto": 'syntax = "proto3";\npackage broken;\nmessage X { string a = 1 }\n',
        "undefined.proto": proto("undefined", "message Y { Missing m = 1; }"),
        "importer.proto": proto("importer", "", ["broken.proto"]),
    }
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", files))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    # protoc stops at the first file with errors; the server compiles the others again, so
    # one push reports every broken file, each with its file, line and column.
    violations = error.field_violations
    assert violations == {
        "files[1].content": 'broken.proto:3:26: Expected ";".',
        "files[2].content": 'undefined.proto:3:13: "Missing" is not defined.',
        "files[3].content": (
            'importer.proto:3:1: Import "broken.proto" was not found or had errors.'
        ),
    }
    assert "files[1].content: broken.proto:3:26" in error.message
    assert count(db, "module_versions") == 0


def test_imports_within_a_version_and_of_well_known_types(acme: Client) -> None:
    files = {
        "acme/a.proto": proto(
            "acme",
            "message A { B b = 1; google.protobuf.Timestamp at = 2; }",
            ["acme/b.proto", "google/protobuf/timestamp.proto"],
        ),
        "acme/b.proto": proto("acme", "message B {}"),
    }
    assert push(acme, "acme", "core", "1.0.0", files).version == "1.0.0"


def test_an_import_nothing_provides_names_the_missing_file(acme: Client) -> None:
    files = {"a.proto": proto("a", "message A {}", ["vendor/missing.proto"])}
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", files))
    message = violations_of(error, "files[0].content")[0]
    assert message.startswith('a.proto:3:1: import "vendor/missing.proto" not found')


def test_a_file_importing_itself_is_refused(acme: Client) -> None:
    files = {"a.proto": proto("a", "message A {}", ["a.proto"])}
    error = failure(lambda: push(acme, "acme", "core", "1.0.0", files))
    assert "recursively imports itself" in error.field_violations["files[0].content"]


BASE = {"base/types.proto": proto("base", "message Id { string value = 1; }")}
USES_BASE = {"app/app.proto": proto("app", "message App { base.Id id = 1; }", ["base/types.proto"])}


def test_imports_resolve_through_dependencies_transitively(
    acme: Client, db: psycopg.Connection[Any]
) -> None:
    create_module(acme, "acme", "base")
    create_module(acme, "acme", "app")
    create_module(acme, "acme", "top")
    push(acme, "acme", "base", "1.0.0", BASE)
    without = failure(lambda: push(acme, "acme", "app", "1.0.0", USES_BASE))
    assert violations_of(without, "files[0].content")[0].startswith(
        'app/app.proto:3:1: import "base/types.proto" not found'
    )
    app = push(acme, "acme", "app", "1.0.0", USES_BASE, deps=[("acme", "base", "v1.0.0")])
    assert [(d.org, d.module, d.version, d.deleted) for d in app.dependencies] == [
        ("acme", "base", "1.0.0", False)
    ]
    # `top` names only app@1.0.0; base comes along with it.
    top_files = {
        "top/top.proto": proto(
            "top",
            "message Top { app.App app = 1; base.Id id = 2; }",
            ["app/app.proto", "base/types.proto"],
        )
    }
    top = push(acme, "acme", "top", "1.0.0", top_files, deps=[("acme", "app", "1.0.0")])
    assert [d.module for d in top.dependencies] == ["app"]
    assert get_version(acme, "acme", "top", "1.0.0").dependencies == top.dependencies
    assert db.execute(
        "SELECT dep_module_name, dep_version FROM version_dependencies ORDER BY dep_module_name"
    ).fetchall() == [("app", "1.0.0"), ("base", "1.0.0")]


def test_dependencies_on_public_modules_of_other_orgs(acme: Client, users: Users) -> None:
    other = users.create("other")
    other_org_id = create_org(other, "globex")
    create_module(other, "globex", "shared", is_public=True)
    create_module(other, "globex", "private")
    push(other, "globex", "shared", "1.0.0", BASE)
    push(other, "globex", "private", "1.0.0", {"p/p.proto": proto("p", "message P {}")})
    shared_id = other.modules.GetModule(
        pb.GetModuleRequest(org="globex", module="shared")
    ).module.id
    # By names, or by ids.
    for ref in (("globex", "shared", "1.0.0"), (other_org_id, shared_id, "1.0.0")):
        version = f"1.0.{len(ref[0])}"
        pushed = push(acme, "acme", "core", version, USES_BASE, deps=[ref])
        assert [(d.org, d.module) for d in pushed.dependencies] == [("globex", "shared")]
    # A private module of another org is exactly as missing as a missing one, even to a
    # member of both organizations: the dependency would leak it to acme's readers.
    users.join(other_org_id, acme, Role.ADMIN)
    for module in ("private", "no-such"):
        error = failure(
            lambda m=module: push(
                acme, "acme", "core", "2.0.0", SIMPLE, deps=[("globex", m, "1.0.0")]
            )
        )
        assert error.code is grpc.StatusCode.NOT_FOUND
        assert error.message == f"dependency 'globex/{module}@1.0.0' not found"
    missing_version = failure(
        lambda: push(acme, "acme", "core", "2.0.0", SIMPLE, deps=[("globex", "shared", "9.9.9")])
    )
    assert missing_version.message == "dependency 'globex/shared@9.9.9' not found"


def test_two_dependencies_providing_one_path_are_refused(acme: Client, users: Users) -> None:
    create_module(acme, "acme", "base")
    create_module(acme, "acme", "fork")
    push(acme, "acme", "base", "1.0.0", BASE)
    push(acme, "acme", "fork", "1.0.0", BASE)
    error = failure(
        lambda: push(
            acme,
            "acme",
            "core",
            "1.0.0",
            USES_BASE,
            deps=[("acme", "base", "1.0.0"), ("acme", "fork", "1.0.0")],
        )
    )
    message = error.field_violations["dependencies"]
    assert "'base/types.proto'" in message
    assert "acme/base@1.0.0" in message and "acme/fork@1.0.0" in message
    # A file of the version itself that a dependency provides too.
    clash = failure(
        lambda: push(
            acme, "acme", "core", "1.0.0", {**USES_BASE, **BASE}, deps=[("acme", "base", "1.0.0")]
        )
    )
    assert "acme/base@1.0.0" in clash.field_violations["files[1].path"]


def test_dependency_rules(acme: Client) -> None:
    create_module(acme, "acme", "base")
    push(acme, "acme", "base", "1.0.0", BASE)
    push(acme, "acme", "base", "1.1.0", BASE)
    push(acme, "acme", "core", "1.0.0", SIMPLE)
    own = failure(
        lambda: push(acme, "acme", "core", "2.0.0", SIMPLE, deps=[("acme", "core", "1.0.0")])
    )
    assert "its own module" in own.field_violations["dependencies[0]"]
    twice = failure(
        lambda: push(
            acme,
            "acme",
            "core",
            "2.0.0",
            SIMPLE,
            deps=[("acme", "base", "1.0.0"), ("acme", "base", "v1.0.0")],
        )
    )
    assert twice.field_violations == {"dependencies[1]": "repeats dependencies[0]"}
    two_versions = failure(
        lambda: push(
            acme,
            "acme",
            "core",
            "2.0.0",
            SIMPLE,
            deps=[("acme", "base", "1.0.0"), ("acme", "base", "1.1.0")],
        )
    )
    assert "one version" in two_versions.field_violations["dependencies[1]"]
    many = failure(
        lambda: push(acme, "acme", "core", "2.0.0", SIMPLE, deps=[("acme", "base", "1.0.0")] * 51)
    )
    assert "at most 50" in many.field_violations["dependencies"]


# --- Deleting modules ------------------------------------------------------------------------


@dataclass
class Dependents:
    provider: Client  # owner of `acme`, whose public module `base` others depend on
    creator: Client  # the developer who created `base`
    consumer: Client  # owner of `globex`


@pytest.fixture
def dependents(users: Users) -> Dependents:
    """acme/base (public, by a developer) 1.0.0; globex/app 1.0.0 (public) and
    globex/internal 1.0.0 (private) depend on it."""
    provider, creator, consumer = users.create("provider"), users.create("dev"), users.create()
    acme_id = create_org(provider, "acme")
    users.join(acme_id, creator, Role.DEVELOPER)
    create_module(creator, "acme", "base", is_public=True)
    push(creator, "acme", "base", "1.0.0", BASE)
    create_org(consumer, "globex")
    create_module(consumer, "globex", "app", is_public=True)
    create_module(consumer, "globex", "internal")
    for module in ("app", "internal"):
        push(consumer, "globex", module, "1.0.0", USES_BASE, deps=[("acme", "base", "1.0.0")])
    return Dependents(provider, creator, consumer)


def delete(client: Client, org: str, module: str, *, force: bool = False) -> None:
    client.modules.DeleteModule(pb.DeleteModuleRequest(org=org, module=module, force=force))


def test_deleting_a_module_others_depend_on_needs_force(
    dependents: Dependents, db: psycopg.Connection[Any]
) -> None:
    error = failure(lambda: delete(dependents.provider, "acme", "base"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "MODULE_HAS_DEPENDENTS"
    assert violation.subject == "organizations/acme/modules/base"
    # The public dependent is named; the private one is only counted.
    assert "2 dependent version(s)" in violation.description
    assert "globex/app@1.0.0 (on 1.0.0)" in violation.description
    assert "internal" not in violation.description
    assert "1 in organizations you cannot see" in violation.description
    assert "force" in violation.description
    assert count(db, "modules") == 3
    # The developer who created it may not force it.
    denied = failure(lambda: delete(dependents.creator, "acme", "base", force=True))
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    delete(dependents.provider, "acme", "base", force=True)
    assert db.execute("SELECT count(*) FROM modules WHERE name = 'base'").fetchone() == (0,)
    assert db.execute(
        "SELECT target, outcome FROM audit_events WHERE method LIKE '%%DeleteModule' ORDER BY id"
    ).fetchall() == [
        ("organizations/acme/modules/base", "FAILED_PRECONDITION"),
        ("organizations/acme/modules/base", "PERMISSION_DENIED"),
        ("organizations/acme/modules/base (1 versions) (force, 2 dependents)", "OK"),
    ]


def test_dependents_keep_naming_a_force_deleted_dependency(dependents: Dependents) -> None:
    delete(dependents.provider, "acme", "base", force=True)
    app = get_version(dependents.consumer, "globex", "app", "1.0.0")
    assert [(d.org, d.module, d.version, d.deleted) for d in app.dependencies] == [
        ("acme", "base", "1.0.0", True)
    ]
    # What needs the deleted version cannot be depended on any more.
    create_module(dependents.consumer, "globex", "next")
    error = failure(
        lambda: push(
            dependents.consumer,
            "globex",
            "next",
            "1.0.0",
            SIMPLE,
            deps=[("globex", "app", "1.0.0")],
        )
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "DEPENDENCY_DELETED"
    assert "acme/base@1.0.0" in violation.description


def test_deleting_a_module_deletes_its_versions_files_and_edges(
    dependents: Dependents, db: psycopg.Connection[Any]
) -> None:
    # globex/internal has no dependents: its creator deletes it, with its version and edge.
    delete(dependents.consumer, "globex", "internal")
    assert count(db, "module_versions") == 2
    assert count(db, "version_files") == 2
    assert count(db, "version_dependencies") == 1
    # The developer who created acme/base may delete it once nothing depends on it.
    delete(dependents.consumer, "globex", "app")
    delete(dependents.creator, "acme", "base")
    assert (count(db, "modules"), count(db, "module_versions"), count(db, "version_files")) == (
        0,
        0,
        0,
    )


def test_deleting_an_org_keeps_the_force_rule(dependents: Dependents) -> None:
    orgs = dependents.provider.orgs
    error = failure(
        lambda: orgs.DeleteOrganization(organization_pb2.DeleteOrganizationRequest(org="acme"))
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    orgs.DeleteOrganization(organization_pb2.DeleteOrganizationRequest(org="acme", force=True))
    app = get_version(dependents.consumer, "globex", "app", "1.0.0")
    assert [d.deleted for d in app.dependencies] == [True]


# --- Pagination and public search ------------------------------------------------------------


def test_list_modules_pages_by_name(admin: Client, users: Users) -> None:
    create_org(admin, "big", unlimited=True)
    names = sorted(f"mod-{i:02d}" for i in range(23))
    for i, name in enumerate(reversed(names)):
        create_module(admin, "big", name, is_public=i % 2 == 0)
    pages = all_pages(
        lambda token: admin.modules.ListModules(
            pb.ListModulesRequest(org="big", page_size=5, page_token=token)
        ),
        "modules",
    )
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    assert [m.name for page in pages for m in page] == names
    # An outsider's list is the public modules only, and its tokens are its own.
    stranger = users.create()
    public_pages = all_pages(
        lambda token: stranger.modules.ListModules(
            pb.ListModulesRequest(org="big", page_size=5, page_token=token)
        ),
        "modules",
    )
    public = [m.name for page in public_pages for m in page]
    assert public == sorted(n for i, n in enumerate(reversed(names)) if i % 2 == 0)
    member_token = admin.modules.ListModules(
        pb.ListModulesRequest(org="big", page_size=5)
    ).next_page_token
    error = failure(
        lambda: stranger.modules.ListModules(
            pb.ListModulesRequest(org="big", page_token=member_token)
        )
    )
    assert set(error.field_violations) == {"page_token"}
    negative = failure(
        lambda: admin.modules.ListModules(pb.ListModulesRequest(org="big", page_size=-1))
    )
    assert set(negative.field_violations) == {"page_size"}


def test_page_tokens_belong_to_their_list(acme: Client) -> None:
    for i in range(3):
        push(acme, "acme", "core", f"1.0.{i}", SIMPLE)
        create_module(acme, "acme", f"extra-{i}")
    versions_token = acme.modules.ListVersions(
        pb.ListVersionsRequest(org="acme", module="core", page_size=1)
    ).next_page_token
    modules_token = acme.modules.ListModules(
        pb.ListModulesRequest(org="acme", page_size=1)
    ).next_page_token
    assert versions_token and modules_token
    for call in (
        lambda: acme.modules.ListModules(
            pb.ListModulesRequest(org="acme", page_token=versions_token)
        ),
        lambda: acme.modules.ListVersions(
            pb.ListVersionsRequest(org="acme", module="extra-0", page_token=versions_token)
        ),
        lambda: acme.modules.ListPublicModules(
            pb.ListPublicModulesRequest(page_token=modules_token)
        ),
    ):
        assert set(failure(call).field_violations) == {"page_token"}


def search(client: Client, query: str = "", page_size: int = 0) -> list[tuple[str, str]]:
    pages = all_pages(
        lambda token: client.modules.ListPublicModules(
            pb.ListPublicModulesRequest(query=query, page_size=page_size, page_token=token)
        ),
        "modules",
    )
    return [(m.org_name, m.name) for page in pages for m in page]


def test_public_search_matches_names_and_descriptions_across_orgs(
    admin: Client, anonymous: Client
) -> None:
    create_org(admin, "acme", unlimited=True)
    create_org(admin, "globex", unlimited=True)
    for org in ("acme", "globex"):
        create_module(admin, org, "payments", is_public=True, description="Card PAYMENTS")
        create_module(admin, org, "ledger", is_public=True, description="Double-entry books")
        create_module(admin, org, "payroll", description="private: never listed")
    create_module(admin, "acme", "percent", is_public=True, description="100% literal_")
    assert search(anonymous, "PAY") == [("acme", "payments"), ("globex", "payments")]
    assert search(anonymous, "double-ENTRY") == [("acme", "ledger"), ("globex", "ledger")]
    # LIKE wildcards are taken literally.
    assert search(anonymous, "%") == [("acme", "percent")]
    assert search(anonymous, "l_") == [("acme", "percent")]
    assert search(anonymous, "nothing matches this") == []
    everything = search(anonymous, page_size=2)
    assert len(everything) == 5
    assert everything == sorted(everything, key=lambda item: (item[1], item[0]))
    assert ("acme", "payroll") not in everything


def test_public_search_pages_and_binds_tokens_to_the_query(admin: Client) -> None:
    create_org(admin, "acme", unlimited=True)
    create_org(admin, "globex", unlimited=True)
    for i in range(7):
        for org in ("acme", "globex"):
            create_module(admin, org, f"common-{i}", is_public=True)
    found = search(admin, "common", page_size=3)
    assert len(found) == 14
    assert found == sorted(found, key=lambda item: (item[1], item[0]))
    token = admin.modules.ListPublicModules(
        pb.ListPublicModulesRequest(query="common", page_size=3)
    ).next_page_token
    error = failure(
        lambda: admin.modules.ListPublicModules(
            pb.ListPublicModulesRequest(query="other", page_token=token)
        )
    )
    assert set(error.field_violations) == {"page_token"}
    too_long = failure(
        lambda: admin.modules.ListPublicModules(pb.ListPublicModulesRequest(query="q" * 201))
    )
    assert set(too_long.field_violations) == {"query"}


def test_public_search_at_scale(admin: Client, db: psycopg.Connection[Any]) -> None:
    """100,000 public modules: with pg_trgm a selective search is a trigram index search;
    without it (the embedded server) the search scans the public modules, still quickly."""
    org_id = create_org(admin, "scale", unlimited=True)
    db.execute(
        "INSERT INTO modules (org_id, name, description, is_public)"
        " SELECT %s, 'mod-' || i, 'description number ' || i, true"
        " FROM generate_series(1, 100000) AS i",
        [org_id],
    )
    db.execute("ANALYZE modules")
    trigram = db.execute(
        "SELECT 1 FROM pg_indexes WHERE indexname = 'modules_public_search_idx'"
    ).fetchone()
    if trigram:
        plan = "\n".join(
            row[0]
            for row in db.execute(
                "EXPLAIN SELECT m.id FROM modules m JOIN organizations o ON o.id = m.org_id"
                " WHERE m.is_public AND (m.name ILIKE %s OR m.description ILIKE %s)"
                " ORDER BY m.name, o.name LIMIT 51",
                ["%number 77777%", "%number 77777%"],
            ).fetchall()
        )
        assert "modules_public_search_idx" in plan, plan
    started = time.monotonic()
    assert search(admin, "number 77777") == [("scale", "mod-77777")]
    first_page = admin.modules.ListPublicModules(pb.ListPublicModulesRequest(query="mod-9"))
    assert len(first_page.modules) == 50 and first_page.next_page_token
    assert time.monotonic() - started < 5, "public search is too slow at 100,000 modules"


# --- Hostile input ---------------------------------------------------------------------------


def _version_request(**changes: Any) -> pb.CreateVersionRequest:
    fields: dict[str, Any] = {
        "module": "core",
        "version": "5.0.0",
        "path": "ok.proto",
        "content": GOOD,
        "dep_org": "acme",
        "dep_module": "base",
        "dep_version": "1.0.0",
        "repository": "",
        "commit_sha": "",
        "branch": "",
        **changes,
    }
    return pb.CreateVersionRequest(
        org="acme",
        module=fields["module"],
        version=fields["version"],
        files=[pb.ProtoFile(path=fields["path"], content=fields["content"])],
        dependencies=[
            pb.VersionRef(
                org=fields["dep_org"], module=fields["dep_module"], version=fields["dep_version"]
            )
        ],
        source=pb.VersionSource(
            repository=fields["repository"],
            commit_sha=fields["commit_sha"],
            branch=fields["branch"],
        ),
    )


HOSTILE_CALLS: dict[str, tuple[str, Callable[[str], Any]]] = {
    **{
        f"CreateVersion.{name}": ("CreateVersion", lambda v, n=name: _version_request(**{n: v}))
        for name in (
            "module",
            "version",
            "path",
            "content",
            "dep_org",
            "dep_module",
            "dep_version",
            "repository",
            "commit_sha",
            "branch",
        )
    },
    "GetVersion.module": (
        "GetVersion",
        lambda v: pb.GetVersionRequest(org="acme", module=v, version="1.0.0"),
    ),
    "GetVersion.version": (
        "GetVersion",
        lambda v: pb.GetVersionRequest(org="acme", module="core", version=v),
    ),
    "ListVersions.page_token": (
        "ListVersions",
        lambda v: pb.ListVersionsRequest(org="acme", module="core", page_token=v),
    ),
    "GetModule.module": ("GetModule", lambda v: pb.GetModuleRequest(org="acme", module=v)),
    "UpdateModule.description": (
        "UpdateModule",
        lambda v: pb.UpdateModuleRequest(
            org="acme",
            module="core",
            update=pb.Module(description=v),
            update_mask=FieldMask(paths=["description"]),
        ),
    ),
    "UpdateModule.mask": (
        "UpdateModule",
        lambda v: pb.UpdateModuleRequest(
            org="acme", module="core", update_mask=FieldMask(paths=[v])
        ),
    ),
    "DeleteModule.module": (
        "DeleteModule",
        lambda v: pb.DeleteModuleRequest(org="acme", module=v),
    ),
    "CreateModule.name": ("CreateModule", lambda v: pb.CreateModuleRequest(org="acme", name=v)),
    "ListPublicModules.query": (
        "ListPublicModules",
        lambda v: pb.ListPublicModulesRequest(query=v),
    ),
    "ListPublicModules.page_token": (
        "ListPublicModules",
        lambda v: pb.ListPublicModulesRequest(page_token=v),
    ),
}


@pytest.mark.parametrize("target", list(HOSTILE_CALLS))
def test_hostile_values_are_refused_cleanly(
    acme: Client, db: psycopg.Connection[Any], target: str
) -> None:
    """Whatever a field holds: never UNKNOWN or INTERNAL, never SQL or a traceback, always
    google.rpc details, and a refused call changes no module, version, file or edge."""
    create_module(acme, "acme", "base", is_public=True)
    push(acme, "acme", "base", "1.0.0", BASE)
    push(acme, "acme", "core", "1.0.0", SIMPLE)
    method, build = HOSTILE_CALLS[target]
    state = (
        "SELECT (SELECT md5(string_agg(m::text, ',' ORDER BY m.id)) FROM modules m),"
        " (SELECT count(*) FROM module_versions), (SELECT count(*) FROM version_files),"
        " (SELECT count(*) FROM version_dependencies)"
    )
    for value in NASTY_STRINGS:
        before = db.execute(state).fetchone()
        label = f"{target}={value[:30]!r}"
        try:
            getattr(acme.modules, method)(build(value))
            continue  # accepted (a description may be anything printable): nothing to check
        except grpc.RpcError as exc:
            code, message = exc.code(), exc.details() or ""  # type: ignore[attr-defined]
            status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        assert code not in BAD_CODES, label
        assert status is not None and status.details, label
        assert not any(marker in message for marker in LEAK_MARKERS), label
        assert db.execute(state).fetchone() == before, label


def test_same_org_dependents_block_deletion_too(acme: Client) -> None:
    create_module(acme, "acme", "base")
    create_module(acme, "acme", "app")
    push(acme, "acme", "base", "1.0.0", BASE)
    push(acme, "acme", "app", "1.0.0", USES_BASE, deps=[("acme", "base", "1.0.0")])
    error = failure(lambda: delete(acme, "acme", "base"))
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.description.startswith(
        "module 'base' has 1 dependent version(s): acme/app@1.0.0 (on 1.0.0)"
    )
    delete(acme, "acme", "base", force=True)


def make_private(client: Client, org: str, module: str, *, force: bool = False) -> pb.Module:
    request = pb.UpdateModuleRequest(
        org=org,
        module=module,
        update=pb.Module(is_public=False),
        update_mask=FieldMask(paths=["is_public"]),
        force=force,
    )
    result: pb.Module = client.modules.UpdateModule(request).module
    return result


def test_a_module_public_modules_depend_on_goes_private_only_by_force(
    dependents: Dependents,
) -> None:
    """Publication rule: globex/app (public) depends on acme/base, which therefore stays
    public; an admin may force it private, and then outsiders reach nothing of it."""
    error = failure(lambda: make_private(dependents.provider, "acme", "base"))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "MODULE_HAS_PUBLIC_DEPENDENTS"
    assert "1 version(s) of public modules" in violation.description
    # Counted, never named: the dependents may be in organizations the caller cannot see.
    assert "globex" not in error.message and "app" not in violation.description
    # force is for admins: the module's creator (a developer) may not.
    denied = failure(lambda: make_private(dependents.creator, "acme", "base", force=True))
    assert denied.code is grpc.StatusCode.PERMISSION_DENIED
    assert not make_private(dependents.provider, "acme", "base", force=True).is_public
    consumer = dependents.consumer
    # globex reads its own version, without the edge it may no longer read.
    app = get_version(consumer, "globex", "app", "1.0.0")
    assert list(app.dependencies) == []
    assert [
        d.module for d in get_version(dependents.provider, "globex", "app", "1.0.0").dependencies
    ] == ["base"]
    # Building on it is refused without naming what is hidden.
    create_module(consumer, "globex", "next")
    files = {"next/next.proto": proto("next", "message N { app.App a = 1; }", ["app/app.proto"])}
    refused = failure(
        lambda: push(consumer, "globex", "next", "1.0.0", files, deps=[("globex", "app", "1.0.0")])
    )
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION
    hidden = refused.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert hidden.type == "DEPENDENCY_NOT_VISIBLE"
    assert "base" not in refused.message
    # A new direct dependency on it is refused like a missing module.
    error = failure(
        lambda: push(
            consumer, "globex", "next", "2.0.0", USES_BASE, deps=[("acme", "base", "1.0.0")]
        )
    )
    assert error.message == "dependency 'acme/base@1.0.0' not found"


def test_making_a_module_private_waits_for_a_public_push_in_flight(
    dependents: Dependents, database_url: str
) -> None:
    """The publication rule under concurrency: a push of a public module that depends on
    acme/base holds base's row (FOR SHARE, taken after its compile) until it commits, so
    making base private waits for it, then counts it, and is refused."""
    consumer = dependents.consumer
    create_module(consumer, "globex", "late", is_public=True)
    with (
        psycopg.connect(database_url, autocommit=True) as db,
        psycopg.connect(database_url) as holder,
        ThreadPoolExecutor(2) as pool,
    ):
        # The push stops where it writes its version (whose foreign key needs a lock on its
        # own module's row), after it resolved, and locked, base.
        holder.execute("SELECT 1 FROM modules WHERE name = 'late' FOR UPDATE")
        pushing = pool.submit(
            push, consumer, "globex", "late", "1.0.0", USES_BASE, deps=[("acme", "base", "1.0.0")]
        )
        pusher = harness.wait_for_lock_waiter(db, blocked_by=holder.info.backend_pid)
        # Only the public dependent globex/app counts so far; the push in flight holds base.
        privatising = pool.submit(
            code_of, lambda: make_private(dependents.provider, "acme", "base")
        )
        harness.wait_for_lock_waiter(db, blocked_by=pusher)
        holder.rollback()
        assert pushing.result(timeout=30).version == "1.0.0"
        assert privatising.result(timeout=30) == "FAILED_PRECONDITION"
    error = failure(lambda: make_private(dependents.provider, "acme", "base"))
    assert "2 version(s) of public modules" in error.message


def test_a_push_decides_the_publication_rule_on_its_module_as_it_is_at_the_write(
    acme: Client, database_url: str
) -> None:
    """A push to a private module that depends on a private one, while the module is made
    public: the push read the module private, but re-reads it under its key lock before
    writing, sees it public, and is refused, so no public version depends on a private
    module."""
    create_module(acme, "acme", "inner")
    push(acme, "acme", "inner", "1.0.0", BASE)
    create_module(acme, "acme", "closed")
    with (
        psycopg.connect(database_url, autocommit=True) as db,
        psycopg.connect(database_url) as holder,
        ThreadPoolExecutor(1) as pool,
    ):
        # The push stops at its dependency (FOR SHARE), after it read its own module.
        holder.execute("SELECT 1 FROM modules WHERE name = 'inner' FOR UPDATE")
        pushing = pool.submit(
            code_of,
            lambda: push(
                acme, "acme", "closed", "1.0.0", USES_BASE, deps=[("acme", "inner", "1.0.0")]
            ),
        )
        harness.wait_for_lock_waiter(db, blocked_by=holder.info.backend_pid)
        assert update(acme, "acme", "closed", ["is_public"], is_public=True).is_public
        holder.rollback()
        assert pushing.result(timeout=30) == "FAILED_PRECONDITION"
    versions = acme.modules.ListVersions(pb.ListVersionsRequest(org="acme", module="closed"))
    assert list(versions.versions) == []


def test_a_public_module_depends_only_on_public_modules(acme: Client) -> None:
    """Publication rule, the other direction: a public module's push may not depend on a
    private module, and a module whose versions do may not be made public."""
    create_module(acme, "acme", "inner")
    push(acme, "acme", "inner", "1.0.0", BASE)
    create_module(acme, "acme", "outer", is_public=True)
    error = failure(
        lambda: push(acme, "acme", "outer", "1.0.0", USES_BASE, deps=[("acme", "inner", "1.0.0")])
    )
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert (violation.type, violation.subject) == ("DEPENDENCY_NOT_PUBLIC", "acme/inner@1.0.0")
    # A private module may depend on it; it may not then be made public.
    create_module(acme, "acme", "closed")
    push(acme, "acme", "closed", "1.0.0", USES_BASE, deps=[("acme", "inner", "1.0.0")])
    refused = failure(lambda: update(acme, "acme", "closed", ["is_public"], is_public=True))
    assert refused.code is grpc.StatusCode.FAILED_PRECONDITION
    why = refused.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert why.type == "DEPENDENCY_NOT_PUBLIC"
    assert "acme/inner" in why.description
    # Once what it needs is public, it may be.
    update(acme, "acme", "inner", ["is_public"], is_public=True)
    assert update(acme, "acme", "closed", ["is_public"], is_public=True).is_public
    assert push(acme, "acme", "outer", "1.0.0", USES_BASE, deps=[("acme", "inner", "1.0.0")])


def test_a_delete_waits_for_a_push_in_flight_and_then_sees_its_edge(
    acme: Client, users: Users, database_url: str
) -> None:
    create_module(acme, "acme", "base", is_public=True)
    base = push(acme, "acme", "base", "1.0.0", BASE)
    other = users.create()
    create_org(other, "globex")
    create_module(other, "globex", "app")
    app = push(other, "globex", "app", "1.0.0", SIMPLE)
    with psycopg.connect(database_url) as push_in_flight, harness.connect(database_url) as db:
        # What CreateVersion does with a dependency: read its module FOR SHARE, then (after
        # compiling) write the edge, and commit.
        push_in_flight.execute("SELECT 1 FROM modules WHERE name = 'base' AND is_public FOR SHARE")
        with ThreadPoolExecutor(1) as pool:
            deleting = pool.submit(code_of, lambda: delete(acme, "acme", "base"))
            # The delete provably waits for the push's lock (pg_locks), not merely "not yet".
            harness.wait_for_lock_waiter(db, blocked_by=push_in_flight.info.backend_pid)
            assert not deleting.done()
            push_in_flight.execute(
                "INSERT INTO version_dependencies (org_id, version_id, position, dep_org_id,"
                " dep_module_id, dep_version_id, dep_org_name, dep_module_name, dep_version)"
                " VALUES (%s, %s, 0, %s, %s, %s, 'acme', 'base', '1.0.0')",
                [app.org_id, app.id, base.org_id, base.module_id, base.id],
            )
            push_in_flight.commit()
            assert deleting.result(timeout=30) == "FAILED_PRECONDITION"


@pytest.mark.parametrize("who", ["anonymous", "stranger"])
def test_outsiders_never_see_private_dependencies_named(
    acme: Client, anonymous: Client, users: Users, who: str
) -> None:
    # A public module whose version depends on one of the same org made private since (force).
    create_module(acme, "acme", "hidden-base", is_public=True)
    push(acme, "acme", "hidden-base", "1.0.0", BASE)
    create_module(acme, "acme", "open-app", is_public=True)
    push(acme, "acme", "open-app", "1.0.0", USES_BASE, deps=[("acme", "hidden-base", "1.0.0")])
    make_private(acme, "acme", "hidden-base", force=True)
    member_view = get_version(acme, "acme", "open-app", "1.0.0")
    assert [d.module for d in member_view.dependencies] == ["hidden-base"]
    client = anonymous if who == "anonymous" else users.create()
    outside = get_version(client, "acme", "open-app", "1.0.0")
    assert list(outside.dependencies) == []
    listed = client.modules.ListVersions(pb.ListVersionsRequest(org="acme", module="open-app"))
    assert [list(v.dependencies) for v in listed.versions] == [[]]
    # Once the dependency is public, outsiders see it named.
    acme.modules.UpdateModule(
        pb.UpdateModuleRequest(
            org="acme",
            module="hidden-base",
            update=pb.Module(is_public=True),
            update_mask=FieldMask(paths=["is_public"]),
        )
    )
    shown = get_version(client, "acme", "open-app", "1.0.0")
    assert [d.module for d in shown.dependencies] == ["hidden-base"]
