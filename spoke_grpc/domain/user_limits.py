"""Per-user caps: the organizations a user may own (``SPOKE_MAX_ORGS_PER_USER``, 10) and the
live API tokens a user may hold (``SPOKE_MAX_TOKENS_PER_USER``, 50); 0 turns a cap off.

Counted from live state, not from history: the organizations the user owns now (deleting
one, or handing it over, frees its place) and the tokens not revoked. The check runs in
the transaction that adds one, after locking the user's row ``FOR NO KEY UPDATE``: two
concurrent creates by one user queue there, so the second counts what the first committed,
on any number of server processes. That lock does not conflict with the ``FOR KEY SHARE``
that foreign keys take on the row, so the user's other writes never wait for it.

Ownership changes hands by ``TransferOwnership`` too, so the new owner's cap is checked
there the same way: without it, one user could create organizations without end and hand
each to an accomplice. Platform admins are exempt (as from organization quotas): as owners,
and as the callers who create or hand over organizations.
"""

from __future__ import annotations

import uuid

from psycopg import AsyncConnection

from spoke_grpc.errors import QuotaExceeded
from spoke_grpc.store import organizations, users
from spoke_grpc.types import Principal

ORGS_SETTING = "SPOKE_MAX_ORGS_PER_USER"
TOKENS_SETTING = "SPOKE_MAX_TOKENS_PER_USER"


async def reserve_organization(conn: AsyncConnection, principal: Principal, limit: int) -> None:
    """Raises unless the caller may own one more organization; holds the user's row lock to
    the end of the transaction, so call it just before the insert."""
    if limit <= 0 or principal.is_admin:
        return
    await _reserve_ownership(
        conn,
        principal.user_id,
        limit,
        advice=(
            "delete an organization you own or transfer its ownership to another member"
            f" first (the server's {ORGS_SETTING})"
        ),
    )


async def reserve_transfer(
    conn: AsyncConnection, principal: Principal, new_owner_id: uuid.UUID, limit: int
) -> None:
    """Raises unless ``new_owner_id`` may own one more organization (a platform admin, as
    the new owner or as the caller, may always)."""
    if limit <= 0 or principal.is_admin:
        return
    await _reserve_ownership(
        conn,
        new_owner_id,
        limit,
        advice=(
            "the new owner must delete or hand over an organization they own first"
            f" (the server's {ORGS_SETTING})"
        ),
    )


async def _reserve_ownership(
    conn: AsyncConnection, user_id: uuid.UUID, limit: int, *, advice: str
) -> None:
    is_admin = await users.lock_user(conn, user_id)
    if is_admin is None or is_admin:
        return  # a missing user fails on its foreign key; an admin is exempt
    owned = await organizations.count_owned(conn, user_id)
    if owned >= limit:
        raise QuotaExceeded(
            quota="organizations_per_user",
            subject=f"users/{user_id}",
            current=owned,
            limit=limit,
            advice=advice,
        )


async def reserve_api_token(conn: AsyncConnection, principal: Principal, limit: int) -> None:
    """Raises unless the caller may hold one more live API token; holds the user's row lock
    to the end of the transaction, so call it just before the insert."""
    if limit <= 0 or principal.is_admin:
        return
    await users.lock_user(conn, principal.user_id)
    live = await users.count_live_tokens(conn, principal.user_id)
    if live >= limit:
        raise QuotaExceeded(
            quota="api_tokens_per_user",
            subject=f"users/{principal.user_id}",
            current=live,
            limit=limit,
            advice=(
                "revoke a token you no longer use (RevokeApiToken) first"
                f" (the server's {TOKENS_SETTING})"
            ),
        )
