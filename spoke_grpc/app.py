"""What the servicers share: settings, the connection pool, the page-token signer, the
proto compiler's worker pool, the usage buffer, the serialized responses and the webhook
secret key."""

from __future__ import annotations

from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from spoke_grpc.compiler import Compiler
from spoke_grpc.config import Settings
from spoke_grpc.pagination import PageTokens
from spoke_grpc.response_cache import ResponseCache
from spoke_grpc.usage import UsageBuffer


@dataclass(frozen=True)
class App:
    settings: Settings
    pool: AsyncConnectionPool
    pages: PageTokens
    compiler: Compiler
    usage: UsageBuffer
    responses: ResponseCache = field(default_factory=lambda: ResponseCache(0))
    webhook_key: bytes = b""
