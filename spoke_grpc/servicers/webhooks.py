"""spoke.v1.WebhookService."""

from __future__ import annotations

from grpc import aio
from spoke.v1 import webhook_pb2, webhook_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.domain import webhooks as domain
from spoke_grpc.servicers.convert import mask_paths, timestamp
from spoke_grpc.store import webhooks as store
from spoke_grpc.store.webhooks import DeliveryRow, WebhookRow
from spoke_grpc.webhook_targets import TargetPolicy

_STATE_TO_PROTO = {
    "pending": webhook_pb2.WEBHOOK_DELIVERY_STATE_PENDING,
    "delivered": webhook_pb2.WEBHOOK_DELIVERY_STATE_DELIVERED,
    "failed": webhook_pb2.WEBHOOK_DELIVERY_STATE_FAILED,
}
_WEBHOOK_KEY = (pagination.timestamp, pagination.uuid_part)
_DELIVERY_KEY = (pagination.timestamp, pagination.uuid_part)
_IMMUTABLE_PATHS = (
    "id",
    "org_id",
    "disabled_reason",
    "create_time",
    "update_time",
    "source_org_id",
    "source_module_id",
)


def webhook_to_proto(row: WebhookRow) -> webhook_pb2.Webhook:
    return webhook_pb2.Webhook(
        id=str(row.id),
        org_id=str(row.org_id),
        url=row.url,
        events=row.events,
        description=row.description,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        create_time=timestamp(row.created_at),
        update_time=timestamp(row.updated_at),
        source_org_id=str(row.source_org_id or ""),
        source_module_id=str(row.source_module_id or ""),
    )


def delivery_to_proto(row: DeliveryRow) -> webhook_pb2.WebhookDelivery:
    return webhook_pb2.WebhookDelivery(
        id=str(row.id),
        webhook_id=str(row.webhook_id),
        event_id=str(row.event_id),
        event_type=row.event_type,
        state=_STATE_TO_PROTO[row.state],
        attempts=row.attempts,
        status_code=row.status_code,
        last_error=row.last_error,
        create_time=timestamp(row.created_at),
        last_attempt_time=timestamp(row.last_attempt_at) if row.last_attempt_at else None,
        next_attempt_time=timestamp(row.next_attempt_at) if row.state == "pending" else None,
    )


class WebhookServicer(webhook_pb2_grpc.WebhookServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app
        self._targets = TargetPolicy(
            allow_http=app.settings.webhook_allow_http,
            allow_private=app.settings.webhook_allow_private,
        )

    async def CreateWebhook(
        self, request: webhook_pb2.CreateWebhookRequest, context: aio.ServicerContext
    ) -> webhook_pb2.CreateWebhookResponse:
        call = current_call()
        created = await domain.create_webhook(
            await call.connection(),
            call.require_org(),
            url=request.url,
            events=list(request.events),
            description=request.description,
            source_org=request.source_org,
            source_module=request.source_module,
            key=self._app.webhook_key,
            policy=self._targets,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return webhook_pb2.CreateWebhookResponse(
            webhook=webhook_to_proto(created.webhook), secret=created.secret
        )

    async def ListWebhooks(
        self, request: webhook_pb2.ListWebhooksRequest, context: aio.ServicerContext
    ) -> webhook_pb2.ListWebhooksResponse:
        call = current_call()
        org = call.require_org()
        pages = self._app.pages
        page = pages.request(
            "webhooks", org.id, request.page_size, request.page_token, _WEBHOOK_KEY
        )
        rows = await store.list_webhooks(await call.connection(), org.id, page)
        return webhook_pb2.ListWebhooksResponse(
            webhooks=[webhook_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "webhooks", org.id, rows, page, lambda r: [r.created_at, r.id]
            ),
        )

    async def GetWebhook(
        self, request: webhook_pb2.GetWebhookRequest, context: aio.ServicerContext
    ) -> webhook_pb2.GetWebhookResponse:
        call = current_call()
        row = await domain.get_webhook(
            await call.connection(), call.require_org(), request.webhook_id
        )
        return webhook_pb2.GetWebhookResponse(webhook=webhook_to_proto(row))

    async def UpdateWebhook(
        self, request: webhook_pb2.UpdateWebhookRequest, context: aio.ServicerContext
    ) -> webhook_pb2.UpdateWebhookResponse:
        call = current_call()
        paths = mask_paths(request.update_mask, store.UPDATABLE, _IMMUTABLE_PATHS)
        source = request.webhook
        update = domain.WebhookUpdate(
            url=source.url if "url" in paths else None,
            events=list(source.events) if "events" in paths else None,
            description=source.description if "description" in paths else None,
            enabled=source.enabled if "enabled" in paths else None,
        )
        row = await domain.update_webhook(
            await call.connection(),
            call.require_org(),
            request.webhook_id,
            update,
            policy=self._targets,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return webhook_pb2.UpdateWebhookResponse(webhook=webhook_to_proto(row))

    async def DeleteWebhook(
        self, request: webhook_pb2.DeleteWebhookRequest, context: aio.ServicerContext
    ) -> webhook_pb2.DeleteWebhookResponse:
        call = current_call()
        await domain.delete_webhook(
            await call.connection(),
            call.require_org(),
            request.webhook_id,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return webhook_pb2.DeleteWebhookResponse()

    async def RotateWebhookSecret(
        self, request: webhook_pb2.RotateWebhookSecretRequest, context: aio.ServicerContext
    ) -> webhook_pb2.RotateWebhookSecretResponse:
        call = current_call()
        rotated = await domain.rotate_secret(
            await call.connection(),
            call.require_org(),
            request.webhook_id,
            key=self._app.webhook_key,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return webhook_pb2.RotateWebhookSecretResponse(
            webhook=webhook_to_proto(rotated.webhook), secret=rotated.secret
        )

    async def ListWebhookDeliveries(
        self, request: webhook_pb2.ListWebhookDeliveriesRequest, context: aio.ServicerContext
    ) -> webhook_pb2.ListWebhookDeliveriesResponse:
        call = current_call()
        org = call.require_org()
        conn = await call.connection()
        webhook = await domain.get_webhook(conn, org, request.webhook_id)
        pages = self._app.pages
        scope = f"{org.id}/{webhook.id}"
        page = pages.request(
            "webhook_deliveries", scope, request.page_size, request.page_token, _DELIVERY_KEY
        )
        rows = await store.list_deliveries(conn, org.id, webhook.id, page)
        return webhook_pb2.ListWebhookDeliveriesResponse(
            deliveries=[delivery_to_proto(r) for r in rows[: page.size]],
            next_page_token=pages.next_token(
                "webhook_deliveries", scope, rows, page, lambda r: [r.created_at, r.id]
            ),
        )

    async def RedeliverWebhookDelivery(
        self, request: webhook_pb2.RedeliverWebhookDeliveryRequest, context: aio.ServicerContext
    ) -> webhook_pb2.RedeliverWebhookDeliveryResponse:
        call = current_call()
        row = await domain.redeliver(
            await call.connection(),
            call.require_org(),
            request.webhook_id,
            request.delivery_id,
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return webhook_pb2.RedeliverWebhookDeliveryResponse(delivery=delivery_to_proto(row))
