"""A load generator: several client processes, each with many calls in flight (grpc.aio).

``run`` sends raw request bytes to one method for a while and returns the calls made, the
status codes and a sample of the OK calls' latencies. The same generator drives the echo
baseline and the service, so their figures compare.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
from grpc import aio

# (request bytes, bearer token or "") pairs; each process takes its own slice.
Call = tuple[bytes, str]
_MAX_SAMPLES = 50_000


@dataclass
class Result:
    calls: int = 0
    seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def merge(self, other: Result) -> None:
        self.calls += other.calls
        self.seconds = max(self.seconds, other.seconds)
        self.codes.update(other.codes)
        self.latencies.extend(other.latencies)

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    @property
    def ok_rate(self) -> float:
        """Calls answered OK per second: refused calls (busy, over quota) do no work."""
        return self.codes["OK"] / self.seconds if self.seconds else 0.0

    @property
    def refused(self) -> float:
        """The share of calls that did not answer OK."""
        return 1 - self.codes["OK"] / self.calls if self.calls else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _drive(
    address: str, method: str, calls: list[Call], concurrency: int, seconds: float, warmup: float
) -> Result:
    result = Result()
    async with aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        position = 0
        start = time.perf_counter()
        measure_from = start + warmup
        end = measure_from + seconds

        async def worker() -> None:
            nonlocal position
            while (now := time.perf_counter()) < end:
                body, token = calls[position % len(calls)]
                position += 1
                metadata = (("authorization", f"Bearer {token}"),) if token else ()
                began = time.perf_counter()
                try:
                    await stub(body, metadata=metadata, timeout=30)
                    code = "OK"
                except grpc.RpcError as exc:
                    code = exc.code().name  # type: ignore[attr-defined]
                finished = time.perf_counter()
                if began >= measure_from and finished <= end:
                    result.calls += 1
                    result.codes[code] += 1
                    if code == "OK" and len(result.latencies) < _MAX_SAMPLES:
                        result.latencies.append(finished - began)
                del now

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = seconds
    return result


def _process(args: tuple[str, str, list[Call], int, float, float]) -> Result:
    return asyncio.run(_drive(*args))


def run(
    address: str,
    method: str,
    calls: list[Call],
    *,
    processes: int = 2,
    concurrency: int = 32,
    seconds: float = 5.0,
    warmup: float = 1.0,
) -> Result:
    """Drives ``method`` from ``processes`` client processes for ``seconds`` (after warm-up)."""
    shuffled = calls[:]
    random.Random(7).shuffle(shuffled)
    slices = [shuffled[i::processes] or shuffled for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        parts = pool.map(
            _process, [(address, method, s, concurrency, seconds, warmup) for s in slices]
        )
    total = Result()
    for part in parts:
        total.merge(part)
    return total
