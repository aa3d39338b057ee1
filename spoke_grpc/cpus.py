"""How many CPUs this process may use: what ``serve --workers auto`` starts.

The least of the CPUs it may be scheduled on (``os.sched_getaffinity``: taskset, cpusets,
Kubernetes' static CPU manager) and its cgroup's CPU quota, rounded up: cgroup v2's
``cpu.max`` (``200000 100000`` is 2 CPUs; ``max`` is none) of its own cgroup and each
parent, or cgroup v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (a quota of -1 is
none). A container limited to 1.5 CPUs on a 64-core host gets 2 workers, not 64. Files
that are missing or unreadable mean no limit; the answer is never below 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_ROOT = Path("/")


def available_cpus(root: Path = _ROOT, affinity: int | None = None) -> int:
    """The CPUs this process may use (``root``: where /proc and /sys are, for tests)."""
    cpus = affinity if affinity is not None else _affinity()
    quota = cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_quota(root: Path = _ROOT) -> float | None:
    """The CPU quota of this process's cgroup, in CPUs; None when none is set."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: the unified hierarchy
            quotas += _v2_quotas(root / "sys/fs/cgroup", path)
        elif "cpu" in controllers.split(","):
            quotas += _v1_quotas(root / "sys/fs/cgroup", controllers, path)
    return min(quotas) if quotas else None


def _v2_quotas(mount: Path, path: str) -> list[float]:
    """``cpu.max`` of the cgroup and of each parent up to the root: each one limits."""
    found = []
    directory = mount / path.strip("/")
    while True:
        quota = _v2_quota(directory / "cpu.max")
        if quota is not None:
            found.append(quota)
        if directory == mount or mount not in directory.parents:
            return found
        directory = directory.parent


def _v2_quota(file: Path) -> float | None:
    try:
        fields = file.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quotas(mount: Path, controllers: str, path: str) -> list[float]:
    """cgroup v1: the cpu controller's directory (``cpu,cpuacct`` or ``cpu``), at the
    process's path or, inside a container that mounts its own cgroup as root, at the top."""
    found = []
    for name in (controllers, "cpu", "cpu,cpuacct"):
        base = mount / name
        for directory in (base / path.strip("/"), base):
            try:
                quota = (directory / "cpu.cfs_quota_us").read_text().strip()
                period = (directory / "cpu.cfs_period_us").read_text().strip()
            except OSError:
                continue
            value = _ratio(quota, period)
            if value is not None:
                found.append(value)
            return found
    return found


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:  # -1: no quota
        return None
    return q / p
