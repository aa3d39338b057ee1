"""Compile workers fairly shared (issue 15, item 4), through the real server: each
organization's share of workers and queue, and the caller's deadline.

Slots are held through the compile queue itself (``hold``: tickets admitted for an org, and
running on a worker where asked), so every state is reached deterministically, without
jobs that sleep.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from spoke.v1 import module_pb2 as pb

from spoke_grpc.compile_queue import SERVER, CompileQueue, Requester, Ticket
from tests.conftest import Users
from tests.harness import ServerThread, failure
from tests.servicers.test_compile import Billing, compile_jobs_used, compiler_of, job_rows
from tests.servicers.test_compile_races import wait_until
from tests.servicers.test_modules import create_org


def queue_of(server: ServerThread) -> CompileQueue:
    return compiler_of(server).queue


@contextmanager
def hold(
    server: ServerThread, requester: Requester, count: int, *, running: int = 0
) -> Iterator[list[Ticket]]:
    """``count`` jobs admitted for ``requester``, the first ``running`` of them on a worker,
    until the block ends."""
    queue = queue_of(server)

    async def take() -> list[Ticket]:
        tickets = [queue.admit(requester, refuse=False) for _ in range(count)]
        for ticket in tickets[:running]:
            await queue.turn(ticket)
        return tickets

    async def give_back(tickets: list[Ticket]) -> None:
        for ticket in tickets:
            ticket.release()

    tickets = server.run(take(), timeout=10)
    try:
        yield tickets
    finally:
        server.run(give_back(tickets))


@contextmanager
def expected_run(server: ServerThread, seconds: float) -> Iterator[None]:
    """The queue's estimate of one run, set for the block (no run ends meanwhile)."""
    queue = queue_of(server)
    before, queue.expected_run_seconds = queue.expected_run_seconds, seconds
    try:
        yield
    finally:
        queue.expected_run_seconds = before


class TwoOrgs:
    def __init__(self, users: Users) -> None:
        self.acme_owner, self.globex_owner = users.create("acme"), users.create("globex")
        self.acme_id = uuid.UUID(create_org(self.acme_owner, "acme"))
        create_org(self.globex_owner, "globex")
        self.acme = Billing(self.acme_owner, "acme")
        self.globex = Billing(self.globex_owner, "globex")


@pytest.fixture
def orgs(users: Users) -> TwoOrgs:
    return TwoOrgs(users)


def test_one_org_beyond_its_share_is_busy_while_another_compiles(
    orgs: TwoOrgs, server: ServerThread, db: psycopg.Connection[Any]
) -> None:
    queue = queue_of(server)
    share = queue.org_capacity
    assert share < queue.capacity
    with hold(server, Requester(orgs.acme_id), share, running=queue.org_workers):
        error = failure(lambda: orgs.acme.compile())
        assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error.error_info.reason == "COMPILER_BUSY"
        assert dict(error.error_info.metadata) == {
            "capacity": str(queue.capacity),
            "org_share": str(share),
        }
        assert "other organizations' compiles proceed" in error.message
        assert error.detail(error_details_pb2.RetryInfo).retry_delay.seconds == 1
        # The other organization compiles meanwhile, on the worker acme may not take.
        assert orgs.globex.compile("python").files
    assert compile_jobs_used(orgs.acme_owner, "acme") == 0  # the refusal counted nothing
    assert orgs.acme.compile().descriptor_set  # its share is free again
    assert sorted(row[4] for row in job_rows(db)) == ["compiled", "compiled"]


def test_an_org_runs_its_share_of_workers_and_others_use_the_rest(
    orgs: TwoOrgs, server: ServerThread
) -> None:
    queue = queue_of(server)
    assert queue.org_workers < queue.workers
    request = pb.CompileVersionRequest(org="acme", module=orgs.acme.billing, version="1.0.0")
    with hold(server, Requester(orgs.acme_id), queue.org_workers, running=queue.org_workers):
        waiting = orgs.acme_owner.modules.CompileVersion.future(request)
        wait_until(lambda: queue.waiting == 1, "acme's compile waiting for its share")
        assert orgs.globex.compile().descriptor_set  # while acme's waits
        assert not waiting.done()
    assert waiting.result(timeout=30).descriptor_set  # acme's turn came


def test_a_deadline_too_short_for_the_queue_is_refused_up_front(
    orgs: TwoOrgs, server: ServerThread
) -> None:
    queue = queue_of(server)
    with hold(server, SERVER, queue.workers, running=queue.workers), expected_run(server, 30):
        error = failure(
            lambda: orgs.acme_owner.modules.CompileVersion(
                pb.CompileVersionRequest(org="acme", module=orgs.acme.billing, version="1.0.0"),
                timeout=5,
            )
        )
        assert queue.in_flight == queue.workers  # nothing of it is left queued
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.error_info.reason == "COMPILER_BUSY"
    deadline = float(error.error_info.metadata["deadline_seconds"])
    assert 4 < deadline <= 5  # the deadline the client set, as the server saw it
    assert float(error.error_info.metadata["expected_seconds"]) == 60  # a run ahead, and its own
    assert "set a longer deadline" in error.message


def test_a_compile_still_queued_at_its_deadline_leaves_the_queue(
    orgs: TwoOrgs, server: ServerThread
) -> None:
    queue = queue_of(server)
    with hold(server, SERVER, queue.workers, running=queue.workers), expected_run(server, 0.01):
        error = failure(
            lambda: orgs.acme_owner.modules.CompileVersion(
                pb.CompileVersionRequest(org="acme", module=orgs.acme.billing, version="1.0.0"),
                timeout=1,
            )
        )
        assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: queue.in_flight == queue.workers, "the queue emptied")
        assert queue.waiting == 0
