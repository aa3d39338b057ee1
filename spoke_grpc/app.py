"""What the servicers share: settings and the connection pool."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from spoke_grpc.config import Settings


@dataclass(frozen=True)
class App:
    settings: Settings
    pool: AsyncConnectionPool
