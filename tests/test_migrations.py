"""Schema migrations on a real PostgreSQL: apply, roll back everything, apply again, and the
CHECK constraints that keep bad roles, tiers, statuses, limits and names out of the tables."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg.errors import CheckViolation

from spoke_grpc import migrations
from tests import harness

SCHEMA_TABLES = frozenset(
    {
        "users",
        "api_tokens",
        "organizations",
        "organization_members",
        "org_invitations",
        "server_secrets",
        "email_outbox",
        "modules",
        "module_versions",
        "version_files",
        "org_quotas",
        "org_usage_periods",
        "org_api_requests_hourly",
        "usage_flush_writers",
        "audit_events",
        "org_event_counters",
        "events",
        "webhooks",
        "webhook_deliveries",
        "quota_alerts",
    }
)


def _is_yoyo_table(name: str) -> bool:
    return name.startswith("_yoyo") or name == "yoyo_lock"


def public_tables(database_url: str) -> set[str]:
    with harness.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {str(name) for (name,) in rows}


def test_fresh_database_has_no_tables_and_everything_pending(fresh_url: str) -> None:
    assert public_tables(fresh_url) & SCHEMA_TABLES == set()
    pending = migrations.pending(fresh_url, harness.MIGRATIONS)
    assert pending == sorted(pending)
    assert len(pending) >= 5
    assert pending[0] == "0001_users"


def test_apply_rollback_all_and_apply_again(fresh_url: str) -> None:
    applied = migrations.apply(fresh_url, harness.MIGRATIONS)
    assert applied == sorted(applied)
    assert applied[0] == "0001_users"
    assert public_tables(fresh_url) >= SCHEMA_TABLES
    assert migrations.pending(fresh_url, harness.MIGRATIONS) == []
    assert migrations.apply(fresh_url, harness.MIGRATIONS) == []

    rolled_back = migrations.rollback(fresh_url, harness.MIGRATIONS, steps=None)
    assert rolled_back == list(reversed(applied))
    left = public_tables(fresh_url)
    assert left & SCHEMA_TABLES == set()
    assert {t for t in left if not _is_yoyo_table(t)} == set()
    assert migrations.pending(fresh_url, harness.MIGRATIONS) == applied

    assert migrations.apply(fresh_url, harness.MIGRATIONS) == applied
    assert public_tables(fresh_url) >= SCHEMA_TABLES
    assert migrations.pending(fresh_url, harness.MIGRATIONS) == []


def public_schema(url: str) -> set[tuple[str, str]]:
    """What migrations make: columns, indexes, triggers and functions of the public schema."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT 'column', table_name || '.' || column_name FROM information_schema.columns"
            " WHERE table_schema = 'public'"
            " UNION ALL SELECT 'index', indexname FROM pg_indexes WHERE schemaname = 'public'"
            " UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal"
            " UNION ALL SELECT 'function', proname FROM pg_proc"
            "   WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
    return {(kind, name) for kind, name in rows}


def test_rollback_one_step_undoes_only_the_last_migration(fresh_url: str) -> None:
    applied = migrations.apply(fresh_url, harness.MIGRATIONS)
    everything = public_schema(fresh_url)
    assert migrations.rollback(fresh_url, harness.MIGRATIONS) == [applied[-1]]
    assert migrations.pending(fresh_url, harness.MIGRATIONS) == [applied[-1]]
    # Only what the last migration added is gone; what the earlier ones made is all there.
    assert public_schema(fresh_url) < everything
    assert migrations.apply(fresh_url, harness.MIGRATIONS) == [applied[-1]]
    assert public_schema(fresh_url) == everything


@dataclass(frozen=True)
class BadRow:
    statement: str
    constraint: str


BAD_ROWS = [
    pytest.param(
        BadRow(
            "INSERT INTO organization_members (org_id, user_id, role) VALUES (%(org)s, %(user)s,"
            " 'owner')",
            "organization_members_role_check",
        ),
        id="member-role-owner",
    ),
    pytest.param(
        BadRow(
            "INSERT INTO org_quotas (org_id, tier) VALUES (%(org)s, 'huge')",
            "org_quotas_tier_check",
        ),
        id="quota-tier-huge",
    ),
    pytest.param(
        BadRow(
            "UPDATE organizations SET status = 'deleted' WHERE id = %(org)s",
            "organizations_status_check",
        ),
        id="org-status-deleted",
    ),
    pytest.param(
        BadRow(
            "INSERT INTO org_quotas (org_id, tier, max_modules) VALUES (%(org)s, 'small', -1)",
            "org_quotas_max_modules_check",
        ),
        id="quota-negative-max-modules",
    ),
    pytest.param(
        BadRow(
            "INSERT INTO organizations (name, display_name, owner_id, quota_tier)"
            " VALUES ('Bad_Name', 'Bad', %(user)s, 'small')",
            "organizations_name_check",
        ),
        id="org-name-Bad_Name",
    ),
]


def owner_and_org(db: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    """Inserts a user and an organization it owns; returns their ids as query parameters."""
    user = db.execute(
        "INSERT INTO users (email) VALUES (%s) RETURNING id", [f"{name}@example.com"]
    ).fetchone()
    assert user is not None
    org = db.execute(
        "INSERT INTO organizations (name, display_name, owner_id, quota_tier)"
        " VALUES (%s, %s, %s, 'small') RETURNING id",
        [name, name, user[0]],
    ).fetchone()
    assert org is not None
    return {"org": org[0], "user": user[0]}


@pytest.mark.parametrize("bad", BAD_ROWS)
def test_check_constraints_reject_bad_values(db: psycopg.Connection[Any], bad: BadRow) -> None:
    suffix = uuid.uuid4().hex[:10]
    with (
        pytest.raises(CheckViolation) as excinfo,
        db.transaction(force_rollback=True),
    ):
        db.execute(bad.statement, owner_and_org(db, f"check-{suffix}"))
    assert excinfo.value.diag.constraint_name == bad.constraint
    leftover = db.execute(
        "SELECT count(*) FROM users WHERE email = %s", [f"check-{suffix}@example.com"]
    ).fetchone()
    assert leftover == (0,)


@pytest.mark.parametrize(
    "good",
    [
        pytest.param(
            "INSERT INTO organization_members (org_id, user_id, role) VALUES (%(org)s, %(user)s,"
            " 'viewer')",
            id="member-role-viewer",
        ),
        pytest.param(
            "INSERT INTO org_quotas (org_id, tier, max_modules)"
            " VALUES (%(org)s, 'unlimited', NULL)",
            id="quota-unlimited-null-limit",
        ),
        pytest.param(
            "UPDATE organizations SET status = 'suspended' WHERE id = %(org)s",
            id="org-status-suspended",
        ),
    ],
)
def test_check_constraints_accept_good_values(db: psycopg.Connection[Any], good: str) -> None:
    """The constraints are not so strict that valid rows fail too."""
    suffix = uuid.uuid4().hex[:10]
    with db.transaction(force_rollback=True):
        cur = db.execute(good, owner_and_org(db, f"ok-{suffix}"))
        assert cur.rowcount == 1
