"""Who may read a module: the one rule (SPEC §3), as SQL that every read composes.

A module is readable by everyone when it is public, and otherwise by its organization's
owner and members and by platform admins. Every query that hands out module data (names,
files, digests, dependency edges, graphs, compile inputs, dependents named in errors)
composes ``readable`` (or ``sees_private``, its second half) into its own SQL instead of
restating the condition, so a new read path cannot get the rule wrong, only forget to
call it: tests/servicers/test_visibility.py walks every RPC as a stranger to catch that.

The reader is embedded as literals (``sql.Literal``), so the fragment drops into a query
with positional or named parameters alike.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from psycopg import sql

from spoke_grpc.types import Principal


@dataclass(frozen=True)
class Reader:
    """Who reads: a user (None: an anonymous caller) and whether a platform admin."""

    user_id: uuid.UUID | None = None
    is_platform_admin: bool = False

    @classmethod
    def of(cls, principal: Principal | None) -> Reader:
        if principal is None:
            return ANONYMOUS
        return cls(principal.user_id, principal.is_admin)


ANONYMOUS = Reader()


def sees_private(reader: Reader, org_id: sql.Composable) -> sql.Composable:
    """True where ``reader`` may read the private modules of the organization whose id is
    ``org_id`` (an SQL expression): a platform admin, the owner, a member."""
    if reader.is_platform_admin:
        return sql.SQL("true")
    if reader.user_id is None:
        return sql.SQL("false")
    return sql.SQL(
        "(EXISTS (SELECT 1 FROM organizations vis_o WHERE vis_o.id = {org}"
        " AND vis_o.owner_id = {user})"
        " OR EXISTS (SELECT 1 FROM organization_members vis_m WHERE vis_m.org_id = {org}"
        " AND vis_m.user_id = {user}))"
    ).format(org=org_id, user=sql.Literal(reader.user_id))


def readable(reader: Reader, module: str = "m") -> sql.Composable:
    """True where ``reader`` may read the module row aliased ``module`` (a row of
    ``modules``; NULL columns, from an outer join that found none, give false)."""
    return sql.SQL("coalesce({public} OR {private}, false)").format(
        public=sql.Identifier(module, "is_public"),
        private=sees_private(reader, sql.Identifier(module, "org_id")),
    )
