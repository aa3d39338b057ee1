"""The baseline: a bare grpc.aio server that answers every call with its request bytes.

No interceptors, no database: what one Python grpc.aio process can serve on this machine.
``/bench.Echo/Sized`` answers with as many bytes as its request names (ASCII digits; the
bytes made once per size), the baseline for reads with large responses (``echo-20k``).
Prints its port on the first line of stdout and serves until terminated.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from grpc import aio

METHOD = "/bench.Echo/Echo"
SIZED_METHOD = "/bench.Echo/Sized"
_sized: dict[bytes, bytes] = {}


async def echo(request: bytes, context: aio.ServicerContext) -> bytes:
    return request


async def sized(request: bytes, context: aio.ServicerContext) -> bytes:
    response = _sized.get(request)
    if response is None:
        response = _sized[request] = b"x" * int(request)
    return response


async def main() -> int:
    server = aio.server()
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Sized": grpc.unary_unary_rpc_method_handler(sized),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
