"""Authenticates the caller from ``authorization: Bearer <token>`` metadata, and reads the
organization the request names, in one statement on the call's connection.

Anonymous calls reach only methods declared ACCESS_ANONYMOUS or ``public_read``; a token
that is sent must be valid even there. Methods that are not org-scoped get their access
checked here (platform admin); org-scoped ones in the org-context interceptor, which uses
the organization read here. Read-only calls are answered from the access cache
(``spoke_grpc.cache``) when it has the answer: no statement at all. A missing org is
remembered like one the caller may not see, so that both cost the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from grpc import aio

from spoke_grpc import tokens
from spoke_grpc.cache import AccessCache
from spoke_grpc.call import current_call, set_call
from spoke_grpc.errors import PermissionDenied, Unauthenticated
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.store import access
from spoke_grpc.types import Access, CallContext, OrgRef, Policy
from spoke_grpc.validation import parse_org_ref

_MAX_TOKEN_LENGTH = 128


class AuthInterceptor(PolicyInterceptor):
    def __init__(self, cache: AccessCache) -> None:
        super().__init__()
        self._cache = cache

    async def _resolve(
        self,
        call: CallContext,
        policy: Policy,
        digest: bytes | None,
        org: OrgRef | None,
        request: Any,
    ) -> access.Resolved:
        """Reads come from the cache when they can; writes always read (and lock) the rows."""
        if not policy.read_only:
            return await access.resolve(
                await call.connection(),
                token_digest=digest,
                org=org,
                lock=True,
                public=policy.public_read,
            )
        key = (digest, request.org if org is not None else None, policy.public_read)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        since = self._cache.generation  # before the read: what changes during it counts
        resolved = await access.resolve(
            await call.connection(),
            token_digest=digest,
            org=org,
            lock=False,
            public=policy.public_read,
        )
        if self._cache.after_miss_read is not None:
            await self._cache.after_miss_read(key)
        if digest is None or resolved.principal is not None:  # unknown tokens are not kept
            self._cache.put(key, resolved, since)
        return resolved

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        call = current_call()
        token = bearer_token(context.invocation_metadata() or ())
        digest = _token_digest(token) if token is not None else None
        if digest is None and not (policy.access is Access.ANONYMOUS or policy.public_read):
            raise Unauthenticated(
                "missing API token: send 'authorization: Bearer spoke_...' metadata"
            )
        org = parse_org_ref(request.org) if policy.org_scoped else None
        principal, org_context = None, None
        if digest is not None or org is not None:
            resolved = await self._resolve(call, policy, digest, org, request)
            principal, org_context = resolved.principal, resolved.org
        if digest is not None and principal is None:
            raise Unauthenticated("invalid or revoked API token")
        if (
            not policy.org_scoped
            and policy.access is Access.PLATFORM_ADMIN
            and not (principal and principal.is_admin)
        ):
            raise PermissionDenied(f"{policy.method} is for platform admins only")
        set_call(replace(call, principal=principal, org=org_context))
        return await call_next(request, context)


def _token_digest(token: str) -> bytes:
    if not token.startswith(tokens.API_TOKEN_PREFIX) or len(token) > _MAX_TOKEN_LENGTH:
        raise Unauthenticated("invalid or revoked API token")
    return tokens.digest(token)


def bearer_token(metadata: Sequence[tuple[str, str | bytes]]) -> str | None:
    """The token of the first ``authorization`` entry, or None when there is none.

    A present but malformed header is an error, not an anonymous call.
    """
    for key, value in metadata:
        if key != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed authorization metadata: expected 'Bearer <token>'")
        return token.strip()
    return None
