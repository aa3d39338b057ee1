"""No INTERNAL on races or clashes (issue 15, item 5), through the real server: a push that
races a DeleteModule of its own module, and file paths that clash with a directory of a
dependency's files.

A push is held in its compile deterministically: every compile worker runs a job that waits
for an event the test sets (``held_workers``), so the push waits its turn in the queue,
after it read what it needs and before it writes anything.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from multiprocessing.managers import SyncManager
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb

from tests.conftest import Users
from tests.harness import Client, ServerThread, failure
from tests.servicers.test_modules import create_module, create_org, delete, proto, push


def wait_for_event(event: Any) -> None:
    """Runs in a compile worker: holds it until the test sets ``event``."""
    event.wait()


@contextmanager
def held_workers(server: ServerThread) -> Iterator[Any]:
    """Every compile worker of ``server`` busy until the block ends (or ``release``):
    compiles started meanwhile wait their turn in the queue."""
    compiler = server.server.compiler
    with SyncManager(ctx=multiprocessing.get_context("spawn")) as manager:
        event = manager.Event()
        held = [
            asyncio.run_coroutine_threadsafe(compiler.offload(wait_for_event, event), server.loop)
            for _ in range(compiler.workers)
        ]
        try:
            # Running (so counted) before the test looks at the queue.
            wait_until(lambda: compiler.queue.running == compiler.workers, "workers held")
            yield event
        finally:
            event.set()
            for future in held:
                future.result(timeout=30)


def wait_until(condition: Any, what: str) -> None:
    """Until ``condition()`` holds: an observable state, not a sleep."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.005)


def queued_compiles(server: ServerThread) -> int:
    compiler = server.server.compiler
    return compiler.in_flight - compiler.workers


@pytest.fixture
def acme(users: Users) -> Client:
    owner = users.create("owner")
    create_org(owner, "acme")
    return owner


SIMPLE = {"race/v1/thing.proto": proto("race.v1", "message Thing { string id = 1; }")}


@pytest.mark.parametrize("policy", ["allow", "reject"])
def test_a_push_racing_the_delete_of_its_module_is_not_found(
    acme: Client, server: ServerThread, db: psycopg.Connection[Any], policy: str
) -> None:
    """The push read its module, then waited for a worker; the module was deleted meanwhile.
    The push answers NOT_FOUND for the module (it is gone), and stores nothing."""
    fields = {"breaking_change_policy": 2} if policy == "reject" else {}
    create_module(acme, "acme", "racing", **fields)
    if policy == "reject":
        push(acme, "acme", "racing", "1.0.0", SIMPLE)
    with held_workers(server) as release, ThreadPoolExecutor(1) as pool:
        before = queued_compiles(server)
        pushing: Future[Any] = pool.submit(
            failure, lambda: push(acme, "acme", "racing", "2.0.0", SIMPLE)
        )
        wait_until(lambda: queued_compiles(server) > before, "a queued compile")
        delete(acme, "acme", "racing")  # not blocked: the push holds no lock on it yet
        release.set()
        error = pushing.result(timeout=30)
    assert error.code is grpc.StatusCode.NOT_FOUND, error.message
    assert error.message == "module 'racing' not found"
    assert db.execute("SELECT count(*) FROM module_versions").fetchone() == (0,)


DEPENDENCY_FILE = {"shared/x.proto": proto("shared", "message X { string id = 1; }")}
UNDER_IT = {"shared/x.proto/y.proto": proto("shared.y", "message Y { string id = 1; }")}


@pytest.mark.parametrize(
    ("dependency", "mine", "field", "description"),
    [
        pytest.param(
            DEPENDENCY_FILE,
            UNDER_IT,
            "files[0].path",
            "'shared/x.proto/y.proto' needs a directory 'shared/x.proto', which is a file of"
            " dependency acme/dep@1.0.0; rename it or drop the dependency",
            id="mine-under-a-dependency-file",
        ),
        pytest.param(
            UNDER_IT,
            DEPENDENCY_FILE,
            "files[0].path",
            "'shared/x.proto' is a directory of 'shared/x.proto/y.proto', a file of dependency"
            " acme/dep@1.0.0; rename it or drop the dependency",
            id="mine-over-a-dependency-directory",
        ),
    ],
)
def test_a_path_that_clashes_with_a_directory_of_a_dependency_is_invalid(
    acme: Client,
    dependency: dict[str, str],
    mine: dict[str, str],
    field: str,
    description: str,
) -> None:
    create_module(acme, "acme", "dep")
    push(acme, "acme", "dep", "1.0.0", dependency)
    create_module(acme, "acme", "app")
    error = failure(
        lambda: push(acme, "acme", "app", "1.0.0", mine, deps=[("acme", "dep", "1.0.0")])
    )
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error.message
    violations = error.detail(error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [(field, description)]


def test_two_dependencies_whose_paths_clash_as_file_and_directory_are_named(
    acme: Client,
) -> None:
    create_module(acme, "acme", "one")
    push(acme, "acme", "one", "1.0.0", DEPENDENCY_FILE)
    create_module(acme, "acme", "two")
    push(acme, "acme", "two", "1.0.0", UNDER_IT)
    create_module(acme, "acme", "app")
    deps = [("acme", "one", "1.0.0"), ("acme", "two", "1.0.0")]
    error = failure(lambda: push(acme, "acme", "app", "1.0.0", SIMPLE, deps=deps))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT, error.message
    violations = error.detail(error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [
        (
            "dependencies",
            "'shared/x.proto' of acme/one@1.0.0 is a directory of 'shared/x.proto/y.proto' of"
            " acme/two@1.0.0; depend on only one of them",
        )
    ]


@pytest.mark.parametrize("change", ["delete", "make-private"])
def test_a_push_holds_no_lock_on_another_orgs_module_while_it_compiles(
    acme: Client, users: Users, server: ServerThread, change: str
) -> None:
    """globex pushes a version depending on acme/base and waits for a compile worker: acme
    may delete base, or make it private, meanwhile (it does not wait for the push); the push
    then finds its dependency gone and stores nothing."""
    create_module(acme, "acme", "base", is_public=True)
    push(acme, "acme", "base", "1.0.0", DEPENDENCY_FILE)
    other = users.create()
    create_org(other, "globex")
    create_module(other, "globex", "app")
    uses = {"app/app.proto": proto("app", "message App { shared.X x = 1; }", ["shared/x.proto"])}
    with held_workers(server) as release, ThreadPoolExecutor(1) as pool:
        before = queued_compiles(server)
        pushing: Future[Any] = pool.submit(
            failure,
            lambda: push(other, "globex", "app", "1.0.0", uses, deps=[("acme", "base", "1.0.0")]),
        )
        wait_until(lambda: queued_compiles(server) > before, "a queued compile")
        # Answered while the push is in flight: it holds no lock on acme's row.
        if change == "delete":
            request: Any = pb.DeleteModuleRequest(org="acme", module="base")
            acme.modules.DeleteModule(request, timeout=5)
        else:
            request = pb.UpdateModuleRequest(
                org="acme",
                module="base",
                update=pb.Module(is_public=False),
                update_mask=FieldMask(paths=["is_public"]),
            )
            acme.modules.UpdateModule(request, timeout=5)
        release.set()
        error = pushing.result(timeout=30)
    assert error.code is grpc.StatusCode.NOT_FOUND, error.message
    assert error.message == "dependency 'acme/base@1.0.0' not found"
    versions = other.modules.ListVersions(pb.ListVersionsRequest(org="globex", module="app"))
    assert list(versions.versions) == []
