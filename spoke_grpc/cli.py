"""The ``spoke-grpc`` command: serve, migrate, users create, health, push, pull.

Errors a person can fix (bad settings, bad input, an unreachable database) are one
line on stderr and exit code 1; no tracebacks. ``push`` and ``pull``
(``spoke_grpc.registry_client``) have exit codes of their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg_pool import PoolTimeout
from yoyo.connections import BadConnectionURI

from spoke_grpc import cpus, logs, migrations, registry_client, tls, tracing, workers
from spoke_grpc.bootstrap import BootstrapError, bootstrap_before_serving
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.database import connect, is_unavailable
from spoke_grpc.domain.users import NewUser, create_user
from spoke_grpc.embedded import start_embedded
from spoke_grpc.errors import SpokeError
from spoke_grpc.server import SpokeServer

log = logging.getLogger("spoke_grpc")


class CommandError(Exception):
    """A one-line error for the person at the terminal."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level, settings.log_format)
        logging.getLogger("yoyo").setLevel(logging.WARNING)
        code: int = args.run(args, settings)
        return code
    except KeyboardInterrupt:
        return 130
    except registry_client.ClientError as exc:
        print(f"spoke-grpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        message = _error_message(exc)
        if message is None:
            raise  # a bug: the traceback is what its reader needs
        print(f"spoke-grpc: error: {message}", file=sys.stderr)
    return 1


def _error_message(exc: Exception) -> str | None:
    """The one line to show for an error a person can fix; None for anything else (bugs)."""
    if isinstance(exc, CommandError | ConfigError | BootstrapError):
        return _first_line(exc)
    if isinstance(exc, SpokeError):
        return exc.message
    if isinstance(exc, BadConnectionURI):
        return f"bad DATABASE_URL: {_first_line(exc)}"
    if is_unavailable(exc) or isinstance(exc, PoolTimeout):  # the pool could not open
        if "unsupported startup parameter" in str(exc):  # pgbouncer refuses libpq options
            return f"{_first_line(exc)}; behind pgbouncer set SPOKE_STARTUP_OPTIONS=false"
        return f"database unavailable: {_first_line(exc)}"
    if isinstance(exc, psycopg.ProgrammingError) and exc.sqlstate is None:
        # Raised by psycopg itself, before any query: e.g. a connection string libpq refuses.
        return f"bad DATABASE_URL: {_first_line(exc)}"
    if isinstance(exc, psycopg.Error):
        return f"database error: {_first_line(exc)}"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spoke-grpc", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help="host:port (default: SPOKE_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--no-migrate", action="store_true", help="do not apply pending migrations at start"
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=0,
        metavar="N",
        help="run N server processes sharing the port (SO_REUSEPORT), supervised; 'auto':"
        " one per CPU this process may use (affinity and cgroup CPU quota)",
    )
    # One of the processes of --workers: shares the port; the supervisor did the bootstrap.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    # A worker's metrics go to this unix socket, for the supervisor to serve.
    serve.add_argument("--metrics-socket", type=Path, help=argparse.SUPPRESS)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply or roll back database migrations")
    group = migrate.add_mutually_exclusive_group()
    group.add_argument("--rollback", action="store_true", help="roll back the last migration")
    group.add_argument(
        "--rollback-all",
        action="store_true",
        help="roll back every migration, dropping every table and its data (needs --yes)",
    )
    group.add_argument("--list", action="store_true", help="list pending migrations")
    migrate.add_argument("--yes", action="store_true", help="confirm --rollback-all")
    migrate.set_defaults(run=_migrate)

    user_commands = commands.add_parser("users", help="manage users").add_subparsers(
        required=True, metavar="ACTION"
    )
    create = user_commands.add_parser("create", help="create a user; prints its API token last")
    create.add_argument("--email", required=True)
    create.add_argument("--display-name", default="")
    create.add_argument("--admin", action="store_true", help="make the user a platform admin")
    create.set_defaults(run=_users_create)

    health = commands.add_parser(
        "health", help="exit 0 if the server answers SERVING, else 1 (for container probes)"
    )
    health.add_argument(
        "--address", help="host:port to ask (default: SPOKE_LISTEN, a wildcard host as loopback)"
    )
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    health.add_argument(
        "--service", default="", help="grpc.health.v1 service name (default: the whole server)"
    )
    # Over TLS (on when SPOKE_TLS_CERT_FILE is set, or with --cacert): see spoke_grpc.tls.
    health.add_argument(
        "--cacert",
        type=Path,
        help="TLS: trust these CA certificates (default: SPOKE_TLS_CERT_FILE, the server's own)",
    )
    health.add_argument(
        "--cert",
        type=Path,
        help="mutual TLS: the client certificate (default: SPOKE_TLS_CERT_FILE)",
    )
    health.add_argument(
        "--key", type=Path, help="mutual TLS: its private key (default: SPOKE_TLS_KEY_FILE)"
    )
    health.add_argument(
        "--server-name",
        help="TLS: the name the server's certificate must carry (default: the host of"
        " --address, else of SPOKE_PUBLIC_ADDRESS, else localhost)",
    )
    health.set_defaults(run=_health)
    registry_client.add_commands(commands)
    return parser


def _database_url(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    try:
        return start_embedded(settings.data_dir)
    except OSError as exc:
        raise CommandError(
            f"cannot start the embedded PostgreSQL under {settings.data_dir}:"
            f" {exc.strerror or _first_line(exc)}; set SPOKE_DATA_DIR to a writable directory"
            " or DATABASE_URL to a PostgreSQL server"
        ) from None


def _worker_count(value: str) -> int:
    """``--workers``: a number of processes, or ``auto`` for the CPUs this one may use."""
    if value == "auto":
        return cpus.available_cpus()
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of workers or 'auto', got {value!r}"
        ) from None


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.workers < 0:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    if not args.worker:
        # Before the embedded PostgreSQL, the migrations and the bootstrap admin: a taken
        # address or an unusable certificate is an error that changes nothing. (The bind
        # itself decides races.)
        workers.check_free(args.listen or settings.listen)
        if settings.tls is not None:
            tls.load(settings.tls)
    url = _database_url(settings)
    direct = settings.direct_url(url)  # yoyo's lock and DDL need a session of their own
    if settings.auto_migrate and not args.no_migrate:
        applied = migrations.apply(direct, settings.migrations_dir)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    else:
        pending = migrations.pending(direct, settings.migrations_dir)
        if pending:
            why = "--no-migrate" if args.no_migrate else "SPOKE_AUTO_MIGRATE=false"
            raise CommandError(
                f"the database has {len(pending)} pending migration(s) ({', '.join(pending)})"
                f" and {why} keeps serve from applying them; run 'spoke-grpc migrate' first"
            )
    if args.workers:
        return workers.supervise(settings, url, args.listen or settings.listen, args.workers)
    return asyncio.run(
        _run_server(
            settings, url, args.listen, worker=args.worker, metrics_socket=args.metrics_socket
        )
    )


async def _run_server(
    settings: Settings,
    url: str,
    listen: str | None,
    *,
    worker: bool,
    metrics_socket: Path | None = None,
) -> int:
    if not worker:  # a worker's supervisor made the bootstrap admin and reports the address
        # Before listening: once health answers SERVING, the token file can be read.
        token_file = await bootstrap_before_serving(url, settings, settings.token_file)
        if token_file is not None:
            print(f"bootstrap platform-admin token written to {token_file} (mode 0600)", flush=True)
        else:
            log.info("users exist; no bootstrap admin created (see 'spoke-grpc users create')")
    traces = tracing.provider_from_env()  # None unless OTEL_* settings ask for traces
    server = SpokeServer(
        settings, url, tracer_provider=traces, reuse_port=worker, metrics_socket=metrics_socket
    )
    port = await server.start(listen)
    # Before saying it serves: a SIGTERM right after that line must drain, not kill.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if not worker:
        host = (listen or settings.listen).rsplit(":", 1)[0]
        print(f"spoke-grpc serving on {host}:{port}", flush=True)
    await stop.wait()
    log.info("signal received; shutting down within %.1fs", settings.shutdown_grace_seconds)
    await server.stop()
    if traces is not None:
        await asyncio.to_thread(traces.shutdown)  # exports the last spans
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.rollback_all and not args.yes:
        raise CommandError(
            "--rollback-all rolls back every migration, dropping every table and all its data;"
            " pass --yes to confirm (nothing was rolled back)"
        )
    url = settings.direct_url(_database_url(settings))
    if args.list:
        for migration_id in migrations.pending(url, settings.migrations_dir):
            print(migration_id)
        return 0
    if args.rollback or args.rollback_all:
        steps = None if args.rollback_all else 1
        done = migrations.rollback(url, settings.migrations_dir, steps=steps)
        print("rolled back: " + (", ".join(done) or "nothing"))
        return 0
    done = migrations.apply(url, settings.migrations_dir)
    print("applied: " + (", ".join(done) or "nothing (up to date)"))
    return 0


def _users_create(args: argparse.Namespace, settings: Settings) -> int:
    url = settings.direct_url(_database_url(settings))
    if migrations.pending(url, settings.migrations_dir):
        raise CommandError("the database has pending migrations; run 'spoke-grpc migrate' first")
    token = asyncio.run(_create_user(url, settings, args))
    print(token)
    return 0


async def _create_user(url: str, settings: Settings, args: argparse.Namespace) -> str:
    new = NewUser(email=args.email, display_name=args.display_name, is_admin=args.admin)
    async with await connect(url, settings) as conn:
        created = await create_user(conn, new, actor_id=None, method="cli:users create")
    print(
        f"created user {created.user.email} ({created.user.id})"
        + (" as platform admin" if created.user.is_admin else ""),
        file=sys.stderr,
    )
    return created.token.value


def _health(args: argparse.Namespace, settings: Settings) -> int:
    address = args.address or _loopback(settings.listen)
    request = health_pb2.HealthCheckRequest(service=args.service)
    probe = tls.ProbeCredentials(
        ca_file=args.cacert,
        cert_file=args.cert,
        key_file=args.key,
        server_name=args.server_name or (_host(args.address) if args.address else None),
    )
    with tls.probe_channel(address, settings, probe) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.NOT_FOUND:
                raise CommandError(f"{address} does not know service {args.service!r}") from None
            reason = code.name if code is not None else type(exc).__name__
            details = exc.details() if isinstance(exc, grpc.Call) else None
            if code is grpc.StatusCode.UNAVAILABLE and details:
                # Why it could not connect: refused, or a TLS handshake that failed.
                reason = f"{reason} ({details.splitlines()[0]})"
            raise CommandError(f"{address} did not answer a health check: {reason}") from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        raise CommandError(f"{address} is {status}")
    return 0


def _loopback(listen: str) -> str:
    """``listen`` with a wildcard host replaced by loopback: where a local probe connects."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "*"):
        return f"127.0.0.1:{port}"
    if host in ("[::]", "::"):
        return f"[::1]:{port}"
    return listen


def _host(address: str) -> str:
    """The host of ``host:port`` (``[v6]:port``), without brackets."""
    return address.rpartition(":")[0].strip("[]") or address


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
