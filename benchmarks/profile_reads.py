"""Where a cached read's server time goes: cProfile on the server's event-loop thread.

Starts a SpokeServer in this process (access logs on, INFO, text format, written to a file
as a user's ``serve`` writes them to stderr), drives one read from a client process
(``loadgen``: 2 processes x 32 calls in flight) and prints the profile of the event loop's
thread, sorted by own time. grpc's C core runs outside Python and does not show; what shows
is the Python part of each call: grpc's cython glue, the interceptors, the servicer.

Usage: ``PYTHONPATH=. .venv/bin/python benchmarks/profile_reads.py [GetOrganization|GetVersion]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import sys
import tempfile
from pathlib import Path

from spoke.v1 import module_pb2, module_pb2_grpc, organization_pb2

from benchmarks import loadgen
from benchmarks.throughput import PULL_FILES, pull_file
from spoke_grpc import logs, migrations
from spoke_grpc.bootstrap import ensure_bootstrap_admin
from spoke_grpc.config import REPO_ROOT, Settings
from tests import harness


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("rpc", nargs="?", default="GetOrganization")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spoke-profile-"))
    tmp.chmod(0o755)
    admin_url = harness.admin_url(tmp)
    url = harness.create_database(admin_url, prefix="spoke_profile")
    log_file = (tmp / "access.log").open("w")
    logs.configure("INFO", "text", log_file)
    try:
        migrations.apply(url, REPO_ROOT / "migrations")
        server = harness.ServerThread(Settings(pool_min_size=2, pool_max_size=10), url)
        token_file = server.run(ensure_bootstrap_admin(server.server.pool, tmp / "token"))
        token = token_file.read_text().strip()
        import grpc

        metadata = [("authorization", f"Bearer {token}")]
        with grpc.insecure_channel(server.address) as channel:
            from spoke.v1 import organization_pb2_grpc

            organization_pb2_grpc.OrganizationServiceStub(channel).CreateOrganization(
                organization_pb2.CreateOrganizationRequest(name="prof"), metadata=metadata
            )
            modules = module_pb2_grpc.ModuleServiceStub(channel)
            modules.CreateModule(
                module_pb2.CreateModuleRequest(org="prof", name="pull"), metadata=metadata
            )
            modules.CreateVersion(
                module_pb2.CreateVersionRequest(
                    org="prof",
                    module="pull",
                    version="1.0.0",
                    files=[
                        module_pb2.ProtoFile(path=f"pull/f{i}.proto", content=pull_file(i))
                        for i in range(PULL_FILES)
                    ],
                ),
                metadata=metadata,
            )
        if args.rpc == "GetVersion":
            method = "/spoke.v1.ModuleService/GetVersion"
            body = module_pb2.GetVersionRequest(
                org="prof", module="pull", version="1.0.0"
            ).SerializeToString()
        else:
            method = "/spoke.v1.OrganizationService/GetOrganization"
            body = organization_pb2.GetOrganizationRequest(org="prof").SerializeToString()
        profile = cProfile.Profile()

        async def enable() -> None:
            profile.enable()

        async def disable() -> None:
            profile.disable()

        loadgen.run(server.address, method, [(body, token)], seconds=1.0, warmup=0.5)
        server.run(enable())
        result = loadgen.run(server.address, method, [(body, token)], seconds=args.seconds)
        server.run(disable())
        print(f"{args.rpc}: {result.ok_rate:.0f} OK calls/s under the profiler, {result.codes}")
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        calls = result.codes["OK"] or 1
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats("spoke_grpc|logging|prometheus", args.top)
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        print(f"profiled Python time per OK call: {total / calls * 1e6:.0f} µs")
        print(out.getvalue())
        server.stop()
    finally:
        logging.getLogger().handlers.clear()
        log_file.close()
        harness.drop_database(admin_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
