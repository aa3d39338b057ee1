"""The background tasks the server runs beside its calls (health probe, usage flush, cache
listener): how they are stopped, in one place."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancels ``task`` (if any) and waits until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
