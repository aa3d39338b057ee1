"""Anonymous calls per client address and UTC minute (``SPOKE_ANONYMOUS_RATE_LIMIT``, 60;
0: no limit), in fixed windows as the members' hourly API requests are.

The key is the caller's address without its port (``client_key``): an IPv4 address, or the
/64 network of an IPv6 address (a subscriber is usually given a whole /64, so changing the
low 64 bits gives no fresh allowance); an IPv4-mapped IPv6 address is its IPv4 address, and
callers on a unix socket share one key. It is the TCP peer: behind a proxy that does not
keep client addresses, every anonymous caller shares the proxy's allowance.

Memory is bounded: a window holds at most ``max_addresses`` counts (100,000: about 15 MiB),
the least recently seen address forgotten first when a new one arrives, so a flood of new
addresses can only reset counts early, never grow the process; a window's counts are
dropped when it ends. Counts live in this process's memory, with no statement: with N
server processes, a client whose connections land on all of them may make up to N times
the limit.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import unquote

from spoke_grpc.usage import Clock, utc_now

WINDOW = dt.timedelta(minutes=1)
MAX_TRACKED_ADDRESSES = 100_000
IPV6_PREFIX = 64
UNIX_KEY = "unix"


def client_key(peer: str) -> str:
    """The rate-limit key of a grpc peer (``ipv4:203.0.113.7:5555``, ``ipv6:[2001:db8::1]:5555``,
    percent-encoded or not, ``unix:/path``): ``203.0.113.7``, ``2001:db8::/64``, ``unix``."""
    scheme, _, rest = unquote(peer).partition(":")
    if scheme in ("unix", "unix-abstract"):
        return UNIX_KEY
    if scheme == "ipv6" and rest.startswith("["):
        host = rest[1 : rest.find("]")] if "]" in rest else rest[1:]
    elif scheme == "ipv4":
        host = rest.rpartition(":")[0] or rest
    else:
        return peer  # an unknown transport: the whole peer, as grpc names it
    host = host.partition("%")[0]  # an IPv6 zone (fe80::1%eth0)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


@dataclass(frozen=True)
class Admission:
    """One call's standing in its address's window: ``used`` counts it too."""

    allowed: bool
    used: int
    limit: int
    reset_seconds: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


class AnonymousRateLimiter:
    """Counts anonymous calls per key in the current window; every call of a process runs on
    its one event loop, so plain dict updates suffice."""

    def __init__(
        self,
        limit: int,
        *,
        clock: Clock = utc_now,
        max_addresses: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.max_addresses = max_addresses
        self._window: dt.datetime | None = None
        self._counts: OrderedDict[str, int] = OrderedDict()
        self.refused = 0
        self.evicted = 0

    @property
    def tracked(self) -> int:
        """Addresses counted in the current window."""
        return len(self._counts)

    def admit(self, key: str) -> Admission:
        """Counts one call of ``key`` and says whether it is within the limit."""
        now = self.clock().astimezone(dt.UTC)
        start = now.replace(second=0, microsecond=0)
        if start != self._window:
            self._window = start
            self._counts.clear()
        used = self._counts.pop(key, 0) + 1
        self._counts[key] = used  # now the most recently seen
        while len(self._counts) > self.max_addresses:
            self._counts.popitem(last=False)
            self.evicted += 1
        allowed = used <= self.limit
        if not allowed:
            self.refused += 1
        reset = max(1, math.ceil((start + WINDOW - now).total_seconds()))
        return Admission(allowed=allowed, used=used, limit=self.limit, reset_seconds=reset)
