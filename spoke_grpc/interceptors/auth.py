"""Authenticates the caller from ``authorization: Bearer <token>`` metadata.

Anonymous calls reach only methods declared ACCESS_ANONYMOUS or ``public_read``; a
token that is sent must be valid even there. Methods that are not org-scoped get
their access checked here (platform admin); org-scoped ones in the org interceptor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import aio
from psycopg_pool import AsyncConnectionPool

from spoke_grpc import tokens
from spoke_grpc.call import set_call
from spoke_grpc.errors import Internal, PermissionDenied, Unauthenticated
from spoke_grpc.interceptors.base import Behavior, PolicyInterceptor
from spoke_grpc.store import users
from spoke_grpc.types import Access, CallContext, Policy, Principal

_MAX_TOKEN_LENGTH = 128


class AuthInterceptor(PolicyInterceptor):
    def __init__(self, pool: AsyncConnectionPool) -> None:
        super().__init__()
        self._pool = pool

    async def intercept(
        self, policy: Policy, request: Any, context: aio.ServicerContext, call_next: Behavior
    ) -> Any:
        if policy.access is Access.UNSPECIFIED:
            raise Internal(f"{policy.method} declares no access policy")
        token = bearer_token(context.invocation_metadata() or ())
        principal = await self._authenticate(token) if token is not None else None
        if principal is None and not (policy.access is Access.ANONYMOUS or policy.public_read):
            raise Unauthenticated(
                "missing API token: send 'authorization: Bearer spoke_...' metadata"
            )
        if (
            not policy.org_scoped
            and policy.access is Access.PLATFORM_ADMIN
            and not (principal and principal.is_admin)
        ):
            raise PermissionDenied(f"{policy.method} is for platform admins only")
        set_call(CallContext(policy=policy, principal=principal))
        return await call_next(request, context)

    async def _authenticate(self, token: str) -> Principal:
        invalid = Unauthenticated("invalid or revoked API token")
        if not token.startswith(tokens.API_TOKEN_PREFIX) or len(token) > _MAX_TOKEN_LENGTH:
            raise invalid
        async with self._pool.connection() as conn:
            principal = await users.principal_for_token(conn, tokens.digest(token))
        if principal is None:
            raise invalid
        return principal


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
