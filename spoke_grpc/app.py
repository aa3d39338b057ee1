"""What the servicers share: settings, the connection pool and the page-token signer."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from spoke_grpc.config import Settings
from spoke_grpc.pagination import PageTokens


@dataclass(frozen=True)
class App:
    settings: Settings
    pool: AsyncConnectionPool
    pages: PageTokens
