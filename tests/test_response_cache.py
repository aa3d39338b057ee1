"""Pulls served from bytes (issue 16, item 2): repeated GetVersion, GetDependencyGraph and
CompileVersion answers are kept serialized per reader, run no statement for the reads, and
never outlive a change of who may read what: a dependency made private, a member removed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from spoke.v1 import member_pb2
from spoke.v1 import module_pb2 as pb

from spoke_grpc.response_cache import ResponseCache, reader_class
from spoke_grpc.store.visibility import ANONYMOUS, Reader
from spoke_grpc.types import Role
from tests.conftest import Users
from tests.harness import (
    Client,
    ServerThread,
    checkouts,
    failure,
    notifications_applied,
    usage_flush_paused,
)
from tests.servicers.test_modules import create_module, create_org, proto, push


def kept(server: ServerThread, call: Callable[[], Any]) -> list[int]:
    """Pool checkouts of three calls in a row: [1, 0, 0] once the answer is kept."""
    with usage_flush_paused(server):
        return [checkouts(server, call) for _ in range(3)]


def files_of(descriptor_set: bytes) -> list[str]:
    return [f.name for f in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file]


def test_repeated_pulls_run_no_statement(
    users: Users, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner = users.create()
    create_org(owner, "pulled")
    create_module(owner, "pulled", "api")
    push(owner, "pulled", "api", "1.0.0", {"api/a.proto": proto("api.v1", "message A {}")})
    notifications_applied(server, db)
    get = pb.GetVersionRequest(org="pulled", module="api", version="1.0.0")
    graph = pb.GetDependencyGraphRequest(org="pulled", module="api", version="1.0.0")
    assert kept(server, lambda: owner.modules.GetVersion(get)) == [1, 0, 0]
    assert kept(server, lambda: owner.modules.GetDependencyGraph(graph)) == [1, 0, 0]
    # The bytes kept are the response: the same message as built.
    version = owner.modules.GetVersion(get).version
    assert [f.path for f in version.files] == ["api/a.proto"]
    assert version.module_name == "api" and version.org_name == "pulled"
    # Another caller's reads are theirs: not served from the owner's answer.
    admin_reader = users.create(is_admin=True)
    assert kept(server, lambda: admin_reader.modules.GetVersion(get)) == [1, 0, 0]
    # A compile answered from what was built before is a download, not a compile job. It
    # still takes its connection: CompileVersion is a write by policy, and a write's access
    # check always reads (and locks) the caller's rows; nothing else is read.
    compile_request = pb.CompileVersionRequest(
        org="pulled", module="api", version="1.0.0", languages=["python"]
    )
    first = owner.modules.CompileVersion(compile_request)
    hits = server.server.responses.hits
    assert kept(server, lambda: owner.modules.CompileVersion(compile_request)) == [1, 1, 1]
    again = owner.modules.CompileVersion(compile_request)
    assert again == first and "api/a.proto" in files_of(again.descriptor_set)
    # Served whole: the first compile's own commit (a job) did not drop what it kept.
    assert server.server.responses.hits == hits + 4
    jobs = db.execute(
        "SELECT outcome FROM compile_jobs j JOIN organizations o ON o.id = j.org_id"
        " WHERE o.name = 'pulled' ORDER BY j.created_at"
    ).fetchall()
    assert [j[0] for j in jobs] == ["compiled"]


@pytest.fixture(params=["rpc", "sql"])
def how(request: pytest.FixtureRequest) -> str:
    """How the dependency is made private: by UpdateModule(force) through this server, or
    by an operator's SQL, which the server hears of through the notifications."""
    return str(request.param)


def test_a_dependency_made_private_leaves_the_outsiders_kept_answers(
    users: Users, admin: Client, server: ServerThread, db: psycopg.Connection[Any], how: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    owner, outsider = users.create("depowner"), users.create("outsider")
    create_org(owner, f"dep-{tag}")
    create_module(owner, f"dep-{tag}", "money", is_public=True)
    push(
        owner,
        f"dep-{tag}",
        "money",
        "1.0.0",
        {f"money{tag}/m.proto": proto(f"money{tag}.v1", "message Money { int64 units = 1; }")},
    )
    create_org(outsider, f"app-{tag}")
    create_module(outsider, f"app-{tag}", "billing")
    push(
        outsider,
        f"app-{tag}",
        "billing",
        "1.0.0",
        {
            f"billing{tag}/b.proto": proto(
                f"billing{tag}.v1",
                f"message Bill {{ money{tag}.v1.Money total = 1; }}",
                imports=[f"money{tag}/m.proto"],
            )
        },
        deps=[(f"dep-{tag}", "money", "1.0.0")],
    )
    notifications_applied(server, db)
    get = pb.GetVersionRequest(org=f"app-{tag}", module="billing", version="1.0.0")
    graph = pb.GetDependencyGraphRequest(org=f"app-{tag}", module="billing", version="1.0.0")
    build = pb.CompileVersionRequest(org=f"app-{tag}", module="billing", version="1.0.0")
    # Kept, showing the public dependency.
    assert kept(server, lambda: outsider.modules.GetVersion(get)) == [1, 0, 0]
    assert kept(server, lambda: outsider.modules.GetDependencyGraph(graph)) == [1, 0, 0]
    for _ in range(2):
        compiled = outsider.modules.CompileVersion(build)
        assert f"money{tag}/m.proto" in files_of(compiled.descriptor_set)
    assert [d.module for d in outsider.modules.GetVersion(get).version.dependencies] == ["money"]
    assert len(outsider.modules.GetDependencyGraph(graph).nodes) == 2
    if how == "rpc":
        owner.modules.UpdateModule(
            pb.UpdateModuleRequest(
                org=f"dep-{tag}",
                module="money",
                update=pb.Module(is_public=False),
                update_mask=FieldMask(paths=["is_public"]),
                force=True,
            )
        )
    else:
        db.execute(
            "UPDATE modules SET is_public = false WHERE name = 'money' AND org_id ="
            " (SELECT id FROM organizations WHERE name = %s)",
            [f"dep-{tag}"],
        )
        notifications_applied(server, db)
    # The outsider's next reads no longer show it, and the compile is refused.
    assert list(outsider.modules.GetVersion(get).version.dependencies) == []
    assert [n.version.module for n in outsider.modules.GetDependencyGraph(graph).nodes] == [
        "billing"
    ]
    error = failure(lambda: outsider.modules.CompileVersion(build))
    assert error.code is grpc.StatusCode.FAILED_PRECONDITION
    violation = error.detail(error_details_pb2.PreconditionFailure).violations[0]
    assert violation.type == "DEPENDENCY_NOT_VISIBLE"
    assert "money" not in error.message
    # A platform admin still reads it whole.
    assert [d.module for d in admin.modules.GetVersion(get).version.dependencies] == ["money"]


def test_a_removed_member_is_refused_their_kept_answers(
    users: Users, admin: Client, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    owner, member = users.create("owner"), users.create("member")
    org_id = create_org(owner, "kept-members")
    users.join(org_id, member, Role.DEVELOPER)
    # A public module too: non-members pass the organization check for public reads, so
    # only the private module's own rule stands between them and its kept answer.
    create_module(owner, "kept-members", "open", is_public=True)
    create_module(owner, "kept-members", "closed")
    push(owner, "kept-members", "closed", "1.0.0", {"c/c.proto": proto("c.v1", "message C {}")})
    notifications_applied(server, db)
    get = pb.GetVersionRequest(org="kept-members", module="closed", version="1.0.0")
    build = pb.CompileVersionRequest(org="kept-members", module="closed", version="1.0.0")
    assert kept(server, lambda: member.modules.GetVersion(get)) == [1, 0, 0]
    member.modules.CompileVersion(build)
    member.modules.CompileVersion(build)
    owner.members.RemoveMember(
        member_pb2.RemoveMemberRequest(org="kept-members", user_id=member.user_id)
    )
    assert failure(lambda: member.modules.GetVersion(get)).code is grpc.StatusCode.NOT_FOUND
    assert failure(lambda: member.modules.CompileVersion(build)).code is grpc.StatusCode.NOT_FOUND


# --- the cache itself ----------------------------------------------------------------------


def _key(n: int, org: uuid.UUID) -> tuple[str, str, uuid.UUID, str, str, tuple[str, ...]]:
    return ("GetVersion", "anonymous", org, f"m{n}", "1.0.0", ())


def test_the_kept_answers_are_bounded_in_bytes() -> None:
    cache = ResponseCache(max_bytes=10_000)
    cache.pinged()
    org = uuid.uuid4()
    for n in range(20):
        assert cache.put(_key(n, org), bytes(1000), [org], cache.generation)
    assert cache.size_bytes <= 10_000 and len(cache) < 20 and cache.evictions > 0
    assert cache.get(_key(19, org)) is not None and cache.get(_key(0, org)) is None
    # One answer larger than a quarter of the bound is not kept.
    assert not cache.put(_key(99, org), bytes(3000), [org], cache.generation)


def test_an_invalidation_drops_what_depends_on_the_org_and_stale_puts() -> None:
    cache = ResponseCache()
    cache.pinged()
    own, dependency, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    cache.put(_key(1, own), b"a", [own, dependency], cache.generation)
    cache.put(_key(2, own), b"b", [own], cache.generation)
    cache.put(_key(3, other), b"c", [other], cache.generation)
    cache.apply(f"org:{dependency}")
    assert cache.get(_key(1, own)) is None
    assert cache.get(_key(2, own)) is not None and cache.get(_key(3, other)) is not None
    since = cache.generation  # a miss starts reading, then the dependency changes
    cache.invalidate_org(dependency)
    assert not cache.put(_key(1, own), b"a", [own, dependency], since)
    cache.apply("user:" + str(uuid.uuid4()))  # users do not concern it
    assert len(cache) == 2
    cache.apply("all")
    assert len(cache) == 0
    cache.silenced()  # no listener: off
    assert not cache.put(_key(2, own), b"b", [own], cache.generation)


def test_reader_classes_are_exact() -> None:
    user = uuid.uuid4()
    assert reader_class(ANONYMOUS) == "anonymous"
    assert reader_class(Reader(user, is_platform_admin=True)) == "admin"
    assert reader_class(Reader(uuid.uuid4(), is_platform_admin=True)) == "admin"
    assert reader_class(Reader(user)) == str(user) != reader_class(Reader(uuid.uuid4()))
