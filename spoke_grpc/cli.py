"""The ``spoke-grpc`` command: serve, migrate, users create.

Errors a person can fix (bad settings, bad input, an unreachable database) are one
line on stderr and exit code 1; no tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import psycopg
from psycopg_pool import PoolTimeout
from yoyo.connections import BadConnectionURI

from spoke_grpc import migrations
from spoke_grpc.bootstrap import BootstrapError, ensure_bootstrap_admin
from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.database import is_unavailable
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
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        logging.getLogger("yoyo").setLevel(logging.WARNING)
        code: int = args.run(args, settings)
        return code
    except KeyboardInterrupt:
        return 130
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


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    url = _database_url(settings)
    if settings.auto_migrate and not args.no_migrate:
        applied = migrations.apply(url, settings.migrations_dir)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
    else:
        pending = migrations.pending(url, settings.migrations_dir)
        if pending:
            why = "--no-migrate" if args.no_migrate else "SPOKE_AUTO_MIGRATE=false"
            raise CommandError(
                f"the database has {len(pending)} pending migration(s) ({', '.join(pending)})"
                f" and {why} keeps serve from applying them; run 'spoke-grpc migrate' first"
            )
    return asyncio.run(_run_server(settings, url, args.listen))


async def _run_server(settings: Settings, url: str, listen: str | None) -> int:
    server = SpokeServer(settings, url)
    port = await server.start(listen)
    try:
        token_file = await ensure_bootstrap_admin(server.pool, settings.token_file)
    except BaseException:
        await server.stop(0)
        raise
    if token_file is not None:
        print(f"bootstrap platform-admin token written to {token_file} (mode 0600)", flush=True)
    else:
        log.info("users exist; no bootstrap admin created (see 'spoke-grpc users create')")
    print(
        f"spoke-grpc serving on {(listen or settings.listen).rsplit(':', 1)[0]}:{port}", flush=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signal received; shutting down within %.1fs", settings.shutdown_grace_seconds)
    await server.stop()
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    if args.rollback_all and not args.yes:
        raise CommandError(
            "--rollback-all rolls back every migration, dropping every table and all its data;"
            " pass --yes to confirm (nothing was rolled back)"
        )
    url = _database_url(settings)
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
    url = _database_url(settings)
    if migrations.pending(url, settings.migrations_dir):
        raise CommandError("the database has pending migrations; run 'spoke-grpc migrate' first")
    token = asyncio.run(_create_user(url, args))
    print(token)
    return 0


async def _create_user(url: str, args: argparse.Namespace) -> str:
    new = NewUser(email=args.email, display_name=args.display_name, is_admin=args.admin)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        created = await create_user(conn, new, actor_id=None, method="cli:users create")
    print(
        f"created user {created.user.email} ({created.user.id})"
        + (" as platform admin" if created.user.is_admin else ""),
        file=sys.stderr,
    )
    return created.token.value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
