"""The compile queue on its own: admission within the server's and each organization's
share, turns in fair order, and deadlines. Jobs are tickets held and released by the test,
so every state is reached deterministically (no workers, no sleeps)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from spoke_grpc.compile_queue import (
    SERVER,
    CompileQueue,
    CompilerBusy,
    Requester,
    TurnMissed,
)

A, B, C = (Requester(uuid.uuid4()) for _ in range(3))


def test_the_default_share_is_half_the_workers_and_half_the_queue() -> None:
    queue = CompileQueue(2, 4)
    assert (queue.capacity, queue.org_workers, queue.org_capacity) == (6, 1, 3)
    assert CompileQueue(1, 0).org_capacity == 2  # at least one worker and one waiting place
    assert CompileQueue(4, 8, org_workers=3, org_queue=0).org_capacity == 3


def test_one_org_is_refused_beyond_its_share_while_others_proceed() -> None:
    queue = CompileQueue(2, 4)
    held = [queue.admit(A) for _ in range(3)]
    with pytest.raises(CompilerBusy) as refused:
        queue.admit(A)
    assert refused.value.metadata == {"capacity": "6", "org_share": "3"}
    assert "other organizations' compiles proceed" in refused.value.message
    others = [queue.admit(B) for _ in range(3)]  # B has a share of its own
    with pytest.raises(CompilerBusy) as full:
        queue.admit(C)  # the server's capacity: 6 admitted
    assert full.value.metadata == {"capacity": "6"}
    extra = queue.admit(C, refuse=False)  # work that must not be refused is admitted anyway
    for ticket in [*held, *others, extra]:
        ticket.release()
    assert queue.in_flight == 0
    queue.admit(A).release()  # room again


def test_an_org_runs_at_most_its_workers_and_turns_go_round_robin() -> None:
    async def scenario() -> list[str]:
        queue = CompileQueue(2, 10, org_workers=1, org_queue=10)
        a1 = queue.admit(A)
        await queue.turn(a1)  # A runs on one worker
        a2 = queue.admit(A)
        tasks = [asyncio.create_task(queue.turn(a2))]
        await asyncio.sleep(0)  # a2 is in the queue now
        assert not a2.running  # a worker is free, but A runs its share already
        b1 = queue.admit(B)
        await queue.turn(b1)  # B takes the free worker at once
        a3, c1, b2 = queue.admit(A), queue.admit(C), queue.admit(B)
        tasks += [asyncio.create_task(queue.turn(t)) for t in (a3, c1, b2)]
        await asyncio.sleep(0)  # all four wait, in the order a2, a3, c1, b2
        names = {a2: "a2", a3: "a3", c1: "c1", b2: "b2"}
        order: list[str] = []
        for done in (a1, b1, c1, a2, b2, a3):  # each release frees a worker at once
            done.release()
            order += [names.pop(t) for t in list(names) if t.running]
        await asyncio.gather(*tasks)
        assert queue.in_flight == 0
        return order

    # C never ran: first. Then A, which started a job before B did. B's second waits while
    # B runs one; A's third waits while A runs its second.
    assert asyncio.run(scenario()) == ["c1", "a2", "b2", "a3"]


def test_a_deadline_too_short_for_the_expected_wait_is_refused_up_front() -> None:
    async def scenario() -> None:
        queue = CompileQueue(1, 4, org_workers=1, org_queue=4)
        queue.expected_run_seconds = 10.0
        running = queue.admit(SERVER)
        await queue.turn(running)
        soon = Requester(A.org_id, deadline=time.monotonic() + 5)
        with pytest.raises(CompilerBusy) as refused:
            queue.admit(soon)
        assert refused.value.metadata["expected_seconds"] == "20"  # one run ahead, its own
        assert float(refused.value.metadata["deadline_seconds"]) <= 5
        assert queue.in_flight == 1
        # Without a deadline, or with one long enough, it is admitted.
        queue.admit(Requester(A.org_id, deadline=time.monotonic() + 60)).release()
        running.release()

    asyncio.run(scenario())


def test_a_job_still_waiting_at_its_deadline_leaves_the_queue() -> None:
    async def scenario() -> None:
        queue = CompileQueue(1, 4)
        queue.expected_run_seconds = 0.001
        running = queue.admit(SERVER)
        await queue.turn(running)
        ticket = queue.admit(Requester(A.org_id, deadline=time.monotonic() + 0.05))
        with pytest.raises(TurnMissed):
            await queue.turn(ticket)
        assert (queue.waiting, queue.in_flight, ticket.released) == (0, 1, True)
        running.release()
        assert queue.in_flight == 0

    asyncio.run(scenario())


def test_a_caller_that_gives_up_while_waiting_leaves_the_queue() -> None:
    async def scenario() -> None:
        queue = CompileQueue(1, 4)
        running = queue.admit(SERVER)
        await queue.turn(running)
        ticket = queue.admit(A)
        waiting = asyncio.create_task(queue.turn(ticket))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (queue.waiting, queue.in_flight) == (0, 1)
        running.release()  # and the worker it frees goes to nobody
        assert queue.running == 0

    asyncio.run(scenario())
