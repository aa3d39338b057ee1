"""Webhooks: an organization's admins register HTTPS endpoints for its events.

- The URL passes the server-side request forgery rules (``spoke_grpc.webhook_targets``)
  when it is set, and again before every delivery.
- The signing secret is derived, never stored (``spoke_grpc.webhook_secrets``); it is
  returned by CreateWebhook and RotateWebhookSecret only.
- Event types are those of ``spoke_grpc.domain.events`` or ``*``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import AsyncConnection

from spoke_grpc import webhook_secrets
from spoke_grpc.domain.events import SUBSCRIBABLE
from spoke_grpc.domain.modules import parse_module_ref
from spoke_grpc.errors import FailedPrecondition, InvalidArgument, NotFound, PreconditionViolation
from spoke_grpc.store import audit
from spoke_grpc.store import webhooks as store
from spoke_grpc.store.events import PUBLIC_EVENT_TYPE
from spoke_grpc.store.visibility import Reader
from spoke_grpc.store.webhooks import DeliveryRow, Source, WebhookRow
from spoke_grpc.types import OrgContext, Principal
from spoke_grpc.validation import Violations, parse_org_ref, required_uuid
from spoke_grpc.webhook_targets import TargetPolicy, TargetRefused, resolve

MAX_DESCRIPTION = 1000
MAX_EVENTS = 32


@dataclass(frozen=True)
class WebhookWithSecret:
    webhook: WebhookRow
    secret: str


@dataclass(frozen=True)
class WebhookUpdate:
    """New values for exactly the masked fields (None: untouched)."""

    url: str | None = None
    events: Sequence[str] | None = None
    description: str | None = None
    enabled: bool | None = None


def _check_events(violations: Violations, field: str, events: Sequence[str]) -> list[str]:
    if not events:
        violations.add(field, "required: at least one event type, or '*' for all")
        return []
    if len(events) > MAX_EVENTS:
        violations.add(field, f"at most {MAX_EVENTS} event types, got {len(events)}")
        return []
    unknown = [e for e in events if e not in SUBSCRIBABLE]
    if unknown:
        known = ", ".join(sorted(SUBSCRIBABLE))
        violations.add(field, f"unknown event type {unknown[0][:100]!r}; known: {known}")
    return sorted(set(events))


async def _check_url(field: str, url: str, policy: TargetPolicy) -> None:
    if not url:
        raise InvalidArgument.field(field, "required: the endpoint's https URL")
    try:
        await resolve(url, policy)
    except TargetRefused as exc:
        raise InvalidArgument.field(field, f"webhook URL refused: {exc}") from None


async def create_webhook(
    conn: AsyncConnection,
    org: OrgContext,
    *,
    url: str,
    events: Sequence[str],
    description: str,
    key: bytes,
    policy: TargetPolicy,
    principal: Principal,
    method: str,
    source_org: str = "",
    source_module: str = "",
) -> WebhookWithSecret:
    violations = Violations()
    violations.text("url", url, max_length=2048, required=True, multiline=False)
    kinds = _check_events(violations, "events", events)
    violations.text("description", description, max_length=MAX_DESCRIPTION)
    if bool(source_org) != bool(source_module):
        missing = "source_module" if source_org else "source_org"
        violations.add(missing, "required with source_org and source_module: name both")
    elif source_org and kinds != [PUBLIC_EVENT_TYPE]:
        violations.add(
            "events", f"a subscription to a module's versions takes only {PUBLIC_EVENT_TYPE!r}"
        )
    violations.raise_if_any()
    source = await _source(conn, org, source_org, source_module, principal) if source_org else None
    await _check_url("url", url, policy)
    webhook_id = uuid.uuid4()
    salt = webhook_secrets.new_salt()
    row = await store.insert_webhook(
        conn,
        org_id=org.id,
        webhook_id=webhook_id,
        url=url,
        events=kinds,
        description=description,
        secret_salt=salt,
        created_by=principal.user_id,
        source=source,
    )
    await _audit(conn, method, principal, org, row.id)
    return WebhookWithSecret(row, webhook_secrets.secret(key, org.id, row.id, salt))


async def _source(
    conn: AsyncConnection, org: OrgContext, org_ref: str, module_ref: str, principal: Principal
) -> Source:
    """The subscribed module: one the caller may read, and public unless it is this org's.
    A module the caller may not read is NOT_FOUND, with one message whether or not it
    exists."""
    parsed_org = parse_org_ref(org_ref)
    parsed_module = parse_module_ref(module_ref, "source_module")
    source = await store.find_source(
        conn,
        parsed_org.id,
        parsed_org.name,
        parsed_module.id,
        parsed_module.name,
        Reader.of(principal),
    )
    if source is None:
        raise NotFound("module", f"{org_ref}/{module_ref}")
    if source.org_id != org.id and not source.is_public:
        raise FailedPrecondition(
            PreconditionViolation(
                type="MODULE_NOT_PUBLIC",
                subject=f"organizations/{source.org_name}/modules/{source.module_name}",
                description="only public modules of other organizations can be subscribed to",
            )
        )
    return source


async def get_webhook(
    conn: AsyncConnection, org: OrgContext, ref: str, *, lock: bool = False
) -> WebhookRow:
    webhook_id = required_uuid("webhook_id", ref, what="a webhook id (UUID)")
    row = await store.get_webhook(conn, org.id, webhook_id, lock=lock)
    if row is None:
        raise NotFound("webhook", ref)
    return row


async def update_webhook(
    conn: AsyncConnection,
    org: OrgContext,
    ref: str,
    update: WebhookUpdate,
    *,
    policy: TargetPolicy,
    principal: Principal,
    method: str,
) -> WebhookRow:
    violations = Violations()
    changes: dict[str, object] = {}
    if update.url is not None:
        violations.text("webhook.url", update.url, max_length=2048, required=True, multiline=False)
        changes["url"] = update.url
    if update.events is not None:
        changes["events"] = _check_events(violations, "webhook.events", update.events)
    if update.description is not None:
        violations.text("webhook.description", update.description, max_length=MAX_DESCRIPTION)
        changes["description"] = update.description
    violations.raise_if_any()
    if update.url is not None:
        await _check_url("webhook.url", update.url, policy)
    current = await get_webhook(conn, org, ref, lock=True)
    if current.source_module_id is not None and changes.get("events", [PUBLIC_EVENT_TYPE]) != [
        PUBLIC_EVENT_TYPE
    ]:
        raise InvalidArgument.field(
            "webhook.events",
            f"a subscription to a module's versions takes only {PUBLIC_EVENT_TYPE!r}",
        )
    if update.enabled is not None:
        changes["enabled"] = update.enabled
        if update.enabled:
            changes["disabled_reason"] = ""
            changes["consecutive_failures"] = 0
            changes["disabled_at"] = None
        elif current.enabled:
            changes["disabled_reason"] = "disabled by an admin"
    row = await store.update_webhook(conn, org.id, current.id, changes)
    if row is None:
        raise NotFound("webhook", ref)
    await _audit(conn, method, principal, org, row.id, ",".join(sorted(changes)))
    return row


async def delete_webhook(
    conn: AsyncConnection, org: OrgContext, ref: str, *, principal: Principal, method: str
) -> None:
    webhook = await get_webhook(conn, org, ref, lock=True)
    await store.delete_webhook(conn, org.id, webhook.id)
    await _audit(conn, method, principal, org, webhook.id)


async def rotate_secret(
    conn: AsyncConnection,
    org: OrgContext,
    ref: str,
    *,
    key: bytes,
    principal: Principal,
    method: str,
) -> WebhookWithSecret:
    webhook = await get_webhook(conn, org, ref, lock=True)
    salt = webhook_secrets.new_salt()
    row = await store.update_webhook(conn, org.id, webhook.id, {"secret_salt": salt})
    if row is None:
        raise NotFound("webhook", ref)
    await _audit(conn, method, principal, org, webhook.id, "secret")
    return WebhookWithSecret(row, webhook_secrets.secret(key, org.id, row.id, salt))


async def redeliver(
    conn: AsyncConnection,
    org: OrgContext,
    webhook_ref: str,
    delivery_ref: str,
    *,
    principal: Principal,
    method: str,
) -> DeliveryRow:
    delivery_id = required_uuid("delivery_id", delivery_ref, what="a delivery id (UUID)")
    webhook = await get_webhook(conn, org, webhook_ref)
    new_id = await store.requeue(conn, org.id, webhook.id, delivery_id)
    if new_id is None:
        raise NotFound("delivery", delivery_ref)
    row = await store.get_delivery(conn, org.id, webhook.id, new_id)
    if row is None:  # pragma: no cover - inserted just now
        raise NotFound("delivery", delivery_ref)
    await _audit(conn, method, principal, org, webhook.id, f"redeliver {delivery_id}")
    return row


async def _audit(
    conn: AsyncConnection,
    method: str,
    principal: Principal,
    org: OrgContext,
    webhook_id: uuid.UUID,
    note: str = "",
) -> None:
    target = f"organizations/{org.name}/webhooks/{webhook_id}" + (f":{note}" if note else "")
    await audit.record(
        conn,
        audit.AuditEvent(method=method, actor_id=principal.user_id, org_id=org.id, target=target),
    )
