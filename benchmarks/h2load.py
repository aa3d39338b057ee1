"""The same measurement with h2load (Debian's ``nghttp2-client``), when it is installed.

h2load is a C HTTP/2 client: on a 2-core machine it leaves the server far more CPU than two
Python client processes do, so its ratios are closer to what the server alone can do. It
sends one request body over and over (so it drives reads, not creates), and it sees HTTP
statuses only, not gRPC's: the caller checks the gRPC codes from the server's own metrics
(``spoke_rpc_calls_total``) and from the echo server's answers.

Latencies come from h2load's per-request log (``--log-file``), so p50 and p99 are exact.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from benchmarks.loadgen import Result

CONNECTIONS = 4
STREAMS = 16  # per connection: 64 calls in flight, as the Python client's 2 x 32


def binary() -> str | None:
    return shutil.which("h2load")


def run(
    address: str, method: str, body: bytes, token: str, *, seconds: float, warmup: float
) -> Result:
    """Drives ``method`` for ``seconds`` after ``warmup``; an HTTP 200 counts as "OK"."""
    exe = binary()
    if exe is None:
        raise RuntimeError("h2load is not installed")
    with tempfile.TemporaryDirectory(prefix="spoke-h2load-") as work:
        frame = Path(work, "request")
        frame.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)  # gRPC framing
        log = Path(work, "log")
        headers = ["content-type: application/grpc", "te: trailers"]
        if token:
            headers.append(f"authorization: Bearer {token}")
        command = [
            exe,
            *("-c", str(CONNECTIONS), "-m", str(STREAMS), "-t", "1"),
            *("-D", f"{round(seconds * 1000)}ms", f"--warm-up-time={round(warmup * 1000)}ms"),
            *("-d", str(frame), f"--log-file={log}"),
            *(arg for header in headers for arg in ("-H", header)),
            f"http://{address}{method}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr or done.stdout}")
        # One line per request of the measured duration (the warm-up's are not logged).
        lines = [line.split("\t") for line in log.read_text().splitlines()]
    result = Result(calls=len(lines), seconds=seconds)
    for _, status, micros in lines:
        result.codes["OK" if status == "200" else f"HTTP {status}"] += 1
        result.latencies.append(int(micros) / 1e6)
    return result
