"""spoke.v1.QuotaService."""

from __future__ import annotations

import datetime as dt

from grpc import aio
from spoke.v1 import quota_pb2, quota_pb2_grpc

from spoke_grpc import pagination
from spoke_grpc.app import App
from spoke_grpc.call import current_call
from spoke_grpc.domain import quotas as domain
from spoke_grpc.errors import InvalidArgument
from spoke_grpc.servicers.convert import TIER_TO_PROTO, mask_paths, tier_from_proto, timestamp
from spoke_grpc.store import quotas as store
from spoke_grpc.store import usage as usage_store
from spoke_grpc.store.quotas import QuotaRow
from spoke_grpc.tiers import LIMIT_COLUMNS
from spoke_grpc.usage import hour_start, month_end, month_start

_PATHS = ("tier", *LIMIT_COLUMNS)


def quotas_to_proto(row: QuotaRow) -> quota_pb2.Quotas:
    message = quota_pb2.Quotas(tier=TIER_TO_PROTO[row.tier])
    for column in LIMIT_COLUMNS:
        value = getattr(row.limits, column)
        if value is not None:
            setattr(message, column, value)
    return message


def update_from_proto(request: quota_pb2.UpdateQuotasRequest) -> domain.QuotaUpdate:
    """Exactly the masked fields; a listed limit left unset means unlimited."""
    paths = mask_paths(request.update_mask, _PATHS)
    source = request.quotas
    tier = tier_from_proto("quotas.tier", source.tier, required=True) if "tier" in paths else None
    limits: dict[str, int | None] = {}
    for column in LIMIT_COLUMNS:
        if column not in paths:
            continue
        value = getattr(source, column) if source.HasField(column) else None
        if value is not None and value < 0:
            raise InvalidArgument.field(f"quotas.{column}", "must not be negative")
        limits[column] = value
    return domain.QuotaUpdate(tier=tier, limits=limits)


def _usage(
    period: dt.datetime,
    *,
    modules: int,
    versions: int,
    storage_bytes: int,
    compile_jobs: int,
    api_requests: int,
    api_requests_this_hour: int = 0,
) -> quota_pb2.Usage:
    return quota_pb2.Usage(
        modules=modules,
        versions=versions,
        storage_bytes=storage_bytes,
        compile_jobs=compile_jobs,
        api_requests=api_requests,
        api_requests_this_hour=api_requests_this_hour,
        period_start=timestamp(month_start(period)),
        period_end=timestamp(month_end(period)),
    )


class QuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    async def GetQuotas(
        self, request: quota_pb2.GetQuotasRequest, context: aio.ServicerContext
    ) -> quota_pb2.GetQuotasResponse:
        call = current_call()
        row = await store.get_quotas(await call.connection(), call.require_org().id)
        return quota_pb2.GetQuotasResponse(quotas=quotas_to_proto(row))

    async def UpdateQuotas(
        self, request: quota_pb2.UpdateQuotasRequest, context: aio.ServicerContext
    ) -> quota_pb2.UpdateQuotasResponse:
        call = current_call()
        row = await domain.update_quotas(
            await call.connection(),
            call.require_org(),
            update_from_proto(request),
            principal=call.require_principal(),
            method=call.policy.method,
        )
        return quota_pb2.UpdateQuotasResponse(quotas=quotas_to_proto(row))

    async def GetUsage(
        self, request: quota_pb2.GetUsageRequest, context: aio.ServicerContext
    ) -> quota_pb2.GetUsageResponse:
        return quota_pb2.GetUsageResponse(usage=await self._live_usage())

    async def _live_usage(self) -> quota_pb2.Usage:
        """Live gauges, this month's counters and this hour's requests, unflushed ones included."""
        call = current_call()
        org = call.require_org()
        buffer = self._app.usage
        now = buffer.clock()
        month, hour = month_start(now), hour_start(now)
        # Taken before the read: the batch numbers tell which of them the read already saw.
        this_month, this_hour = buffer.unflushed(org.id, month), buffer.unflushed(org.id, hour)
        conn = await call.connection()
        live = await usage_store.live_usage(conn, org.id, month.date(), hour, buffer.writer)
        return _usage(
            now,
            modules=live.modules,
            versions=live.versions,
            storage_bytes=live.storage_bytes,
            compile_jobs=live.compile_jobs,
            api_requests=live.api_requests + this_month.beyond(live.writer_batch),
            api_requests_this_hour=(
                live.api_requests_this_hour + this_hour.beyond(live.writer_batch)
            ),
        )

    async def GetUsageHistory(
        self, request: quota_pb2.GetUsageHistoryRequest, context: aio.ServicerContext
    ) -> quota_pb2.GetUsageHistoryResponse:
        call = current_call()
        org = call.require_org()
        pages = self._app.pages
        page = pages.request(
            "usage_periods", org.id, request.page_size, request.page_token, (pagination.text,)
        )
        now = self._app.usage.clock()
        current = month_start(now).date()
        rows = await usage_store.periods(
            await call.connection(),
            org.id,
            first=month_start(org.org.created_at).date(),
            current=current,
            page=page,
        )
        periods = []
        for row in rows[: page.size]:
            if row.period_start == current:
                periods.append(await self._live_usage())  # this month: real time
                continue
            start = dt.datetime.combine(row.period_start, dt.time(), tzinfo=dt.UTC)
            periods.append(
                _usage(
                    start,
                    modules=row.modules,
                    versions=row.versions,
                    storage_bytes=row.storage_bytes,
                    compile_jobs=row.compile_jobs,
                    api_requests=row.api_requests,
                )
            )
        return quota_pb2.GetUsageHistoryResponse(
            periods=periods,
            next_page_token=pages.next_token(
                "usage_periods", org.id, rows, page, lambda r: [r.period_start.isoformat()]
            ),
        )
