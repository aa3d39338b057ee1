"""Who gets the next compile worker: admission, each organization's fair share, deadlines.

The compiler's ``workers`` processes run one job each; ``queue`` more jobs may wait. A job
is admitted (``admit``) before its caller reads anything for it, holds its place while the
caller loads its sources, waits for its turn (``turn``), runs, and is released when the
worker is done with it, even if its caller stopped waiting. Admission refuses at once, with
``CompilerBusy`` (RESOURCE_EXHAUSTED, COMPILER_BUSY, RetryInfo), a job that would pass

- the server's capacity: ``workers + queue`` jobs admitted;
- its organization's share: ``org_workers + org_queue`` jobs of one organization admitted
  (by default half the workers and half the queue, at least one of each), so that one
  organization's burst cannot take every slot: its excess is refused, others proceed;
- its caller's deadline: when the expected wait (the jobs ahead, at the recent mean run
  time) plus one run would end after it, the job is refused up front rather than left to
  time out in the queue. A job that still waits when its deadline comes leaves the queue.

Jobs that must not be refused (``refuse=False``: the breaking-change check of a push whose
own compile already ran, the comparison of two builds) are admitted beyond these bounds,
and wait their turn like the others.

Turns: an organization runs at most ``org_workers`` jobs at once; when a worker frees, it
goes to the waiting job whose organization runs the fewest, then whose organization started
a job least recently (round robin), then the earliest: an organization with many waiting
jobs cannot starve one with a few.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2

from spoke_grpc.errors import SpokeError

# Seconds a caller refused for a busy pool is told to wait.
BUSY_RETRY_SECONDS = 1
# The expected run time before any job finished, and how fast the mean follows new runs.
INITIAL_RUN_SECONDS = 0.5
_SMOOTHING = 0.2


@dataclass(frozen=True)
class Requester:
    """Whose job it is: the organization whose share it takes (None: the server's own
    work, counted against the server's capacity only), and when its caller stops waiting
    (``time.monotonic()`` seconds; None: no deadline)."""

    org_id: uuid.UUID | None = None
    deadline: float | None = None

    @classmethod
    def for_call(cls, org_id: uuid.UUID | None, time_remaining: float | None) -> Requester:
        """For a call with ``time_remaining`` seconds left (grpc's ``time_remaining()``)."""
        deadline = None if time_remaining is None else time.monotonic() + time_remaining
        return cls(org_id, deadline)


SERVER = Requester()


def _pack(message: error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class CompilerBusy(SpokeError):
    """No room for another compile now (the server's, the organization's share, or the
    caller's deadline): retry after the RetryInfo delay."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "COMPILER_BUSY"

    def __init__(self, message: str, metadata: dict[str, str]) -> None:
        super().__init__(f"{message}; retry in {BUSY_RETRY_SECONDS}s", metadata=metadata)

    @classmethod
    def full(cls, capacity: int) -> CompilerBusy:
        return cls(
            f"the compiler is busy: {capacity} compiles are running or queued, the most this"
            " server takes",
            {"capacity": str(capacity)},
        )

    @classmethod
    def org_share(cls, share: int, capacity: int) -> CompilerBusy:
        return cls(
            f"the compiler is busy for this organization: it has {share} compiles running or"
            f" queued, its share of the {capacity} this server takes (other organizations'"
            " compiles proceed)",
            {"capacity": str(capacity), "org_share": str(share)},
        )

    @classmethod
    def deadline(cls, remaining: float, expected: float, ahead: int) -> CompilerBusy:
        return cls(
            f"the compiler is busy: the call's deadline is {max(remaining, 0):.3g}s away, and"
            f" with {ahead} compile(s) ahead of it this one would take about {expected:.3g}s;"
            " set a longer deadline",
            {"deadline_seconds": f"{max(remaining, 0):.3g}", "expected_seconds": f"{expected:.3g}"},
        )

    def details(self) -> list[any_pb2.Any]:
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=BUSY_RETRY_SECONDS)
        )
        return [_pack(retry)]


class TurnMissed(SpokeError):
    """A job still waited for a worker when its caller's deadline came: it left the queue."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Ticket:
    """One admitted job: it waits for a turn, runs, and is released exactly once."""

    def __init__(self, queue: CompileQueue, requester: Requester, number: int) -> None:
        self.requester = requester
        self.number = number
        self.running = False
        self.released = False
        self._queue = queue
        self._turn: asyncio.Future[None] | None = None

    def release(self) -> None:
        """The job is over (done, failed, or given up before it ran); idempotent."""
        if not self.released:
            self.released = True
            self._queue._released(self)


class CompileQueue:
    """Admission and turns for ``workers`` worker processes (see the module docstring)."""

    def __init__(
        self,
        workers: int,
        queue: int,
        *,
        org_workers: int | None = None,
        org_queue: int | None = None,
    ) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self.org_workers = min(workers, org_workers or max(1, math.ceil(workers / 2)))
        queued = max(1, math.ceil(queue / 2)) if org_queue is None else org_queue
        self.org_capacity = self.org_workers + queued
        self.expected_run_seconds = INITIAL_RUN_SECONDS
        self.running = 0
        self.refused = 0
        self._admitted: Counter[uuid.UUID | None] = Counter()
        self._running: Counter[uuid.UUID | None] = Counter()
        self._waiting: list[Ticket] = []
        self._numbers = 0
        # When each organization last started a job, in jobs started (a logical clock).
        self._last_start: dict[uuid.UUID | None, int] = {}
        self._starts = 0

    @property
    def in_flight(self) -> int:
        """Jobs admitted and not yet released: running, waiting, or being loaded."""
        return sum(self._admitted.values())

    @property
    def waiting(self) -> int:
        """Jobs whose sources are loaded and that wait for a worker."""
        return len(self._waiting)

    def admitted(self, org_id: uuid.UUID | None) -> int:
        return self._admitted[org_id]

    def admit(self, requester: Requester, *, refuse: bool = True) -> Ticket:
        """A place for one job; with ``refuse``, CompilerBusy when there is none."""
        if refuse:
            try:
                self._refuse_beyond_bounds(requester)
            except CompilerBusy:
                self.refused += 1
                raise
        self._numbers += 1
        self._admitted[requester.org_id] += 1
        return Ticket(self, requester, self._numbers)

    async def turn(self, ticket: Ticket) -> None:
        """Waits until ``ticket`` may run on a worker. A caller that gives up, or whose
        deadline comes first, leaves the queue (its ticket released)."""
        loop = asyncio.get_running_loop()
        ticket._turn = loop.create_future()
        self._waiting.append(ticket)
        self._dispatch()
        deadline = ticket.requester.deadline
        when = None if deadline is None else loop.time() + (deadline - time.monotonic())
        try:
            async with asyncio.timeout_at(when):
                await asyncio.shield(ticket._turn)
        except TimeoutError:
            ticket.release()
            raise TurnMissed(
                "the call's deadline came while its compile waited for a worker; it left"
                " the queue without running"
            ) from None
        except BaseException:
            ticket.release()  # the caller gave up: the job will not run
            raise

    def record_run(self, seconds: float) -> None:
        """A job ran ``seconds``: the mean that expected waits are estimated with."""
        self.expected_run_seconds += _SMOOTHING * (seconds - self.expected_run_seconds)

    def expected_wait(self, requester: Requester) -> tuple[float, int]:
        """Seconds a job admitted now would wait for a worker, and the jobs ahead of it."""
        org = requester.org_id
        ahead = len(self._waiting)
        free = self.running < self.workers and (
            org is None or self._running[org] < self.org_workers
        )
        if free and not ahead:
            return 0.0, 0
        usable = self.workers if org is None else self.org_workers
        rounds = math.ceil((ahead + 1) / usable)
        return rounds * self.expected_run_seconds, ahead

    def _refuse_beyond_bounds(self, requester: Requester) -> None:
        if self.in_flight >= self.capacity:
            raise CompilerBusy.full(self.capacity)
        org = requester.org_id
        if org is not None and self._admitted[org] >= self.org_capacity:
            raise CompilerBusy.org_share(self._admitted[org], self.capacity)
        if requester.deadline is not None:
            wait, ahead = self.expected_wait(requester)
            expected = wait + self.expected_run_seconds
            remaining = requester.deadline - time.monotonic()
            if remaining < expected:
                raise CompilerBusy.deadline(remaining, expected, ahead)

    def _released(self, ticket: Ticket) -> None:
        org = ticket.requester.org_id
        self._admitted[org] -= 1
        if not self._admitted[org]:
            del self._admitted[org]
            self._last_start.pop(org, None)  # nothing of it left: forget it
        if ticket.running:
            self.running -= 1
            self._running[org] -= 1
            if not self._running[org]:
                del self._running[org]
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
        self._dispatch()

    def _precedence(self, ticket: Ticket) -> tuple[int, int, int]:
        org = ticket.requester.org_id
        return (self._running[org], self._last_start.get(org, 0), ticket.number)

    def _dispatch(self) -> None:
        """Gives free workers to waiting jobs, the least-served organization first."""
        while self.running < self.workers:
            eligible = [
                t
                for t in self._waiting
                if t.requester.org_id is None
                or self._running[t.requester.org_id] < self.org_workers
            ]
            if not eligible:
                return
            chosen = min(eligible, key=self._precedence)
            self._waiting.remove(chosen)
            self._starts += 1
            self._last_start[chosen.requester.org_id] = self._starts
            chosen.running = True
            self.running += 1
            self._running[chosen.requester.org_id] += 1
            if chosen._turn is not None and not chosen._turn.done():
                chosen._turn.set_result(None)
