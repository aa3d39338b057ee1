"""Where webhooks may POST: the server-side request forgery rules.

- The URL is ``https`` (``http`` too with ``SPOKE_WEBHOOK_ALLOW_HTTP=true``, for tests and
  development), has a host, no user info and no fragment.
- Every address the host resolves to must be global: not loopback, private, link-local
  (which holds the 169.254.169.254 metadata service), shared (100.64/10), multicast,
  reserved or unspecified, IPv4-mapped IPv6 included, unless
  ``SPOKE_WEBHOOK_ALLOW_PRIVATE=true``.
- DNS rebinding: the name is resolved once per attempt, every address is checked, and the
  request is sent to that checked address itself (the URL's host becomes the IP; the
  ``Host`` header and the TLS server name, hence certificate verification, stay the
  original host name). A second lookup by the HTTP client, which could answer
  differently, never happens.

CreateWebhook and UpdateWebhook apply the same checks, so a URL that is refused at
delivery time is refused when it is set (a name that resolves to a private address today
is refused then, too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

MAX_URL = 2048
RESOLVE_TIMEOUT_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(Exception):
    """The URL, or the address its host resolves to, is not one webhooks may reach."""


@dataclass(frozen=True)
class TargetPolicy:
    allow_http: bool = False
    allow_private: bool = False


@dataclass(frozen=True)
class PinnedTarget:
    """A checked URL: ``url`` with the host replaced by ``address``; ``host`` goes into the
    Host header and the TLS server name."""

    url: str
    host: str
    host_header: str
    address: IPAddress


def check_url(url: str, policy: TargetPolicy) -> SplitResult:
    """The parsed URL; TargetRefused says what is wrong with it."""
    if len(url) > MAX_URL:
        raise TargetRefused(f"must be at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"is not a valid URL ({exc})") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes:
        allowed = "https" + (" or http" if policy.allow_http else "")
        raise TargetRefused(f"must be an {allowed} URL")
    if not parts.hostname:
        raise TargetRefused("must name a host")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("must not carry a user name or password")
    if parts.fragment:
        raise TargetRefused("must not have a #fragment")
    if port == 0:
        raise TargetRefused("must not use port 0")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise TargetRefused("must not contain spaces or control characters")
    return parts


def refused_address(address: IPAddress) -> str | None:
    """Why webhooks may not reach ``address`` by default; None when it is global."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refused_address(address.ipv4_mapped)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address (cloud metadata services live there)"
    if address.is_private:
        return "a private address"
    if not address.is_global or address.is_multicast:
        return "not a public address"
    return None


async def resolve(url: str, policy: TargetPolicy) -> PinnedTarget:
    """Checks ``url``, resolves its host once, checks every address, and pins the first."""
    parts = check_url(url, policy)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise TargetRefused(f"host {host!r} does not resolve ({exc or 'timeout'})") from None
        addresses = []
        for info in infos:
            found = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if found not in addresses:
                addresses.append(found)
        if not addresses:
            raise TargetRefused(f"host {host!r} does not resolve")
    if not policy.allow_private:
        for address in addresses:
            why = refused_address(address)
            if why is not None:
                raise TargetRefused(f"host {host!r} resolves to {address}, {why}")
    address = addresses[0]
    shown = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    host_header = parts.netloc.rpartition("@")[2]
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return PinnedTarget(url=pinned, host=host, host_header=host_header, address=address)
