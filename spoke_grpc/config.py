"""Settings, read once from environment variables (documented in the README)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from spoke_grpc import generators
from spoke_grpc.tiers import QuotaTier

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_PREPARE_THRESHOLD = 5  # psycopg's own
REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE_URL_SCHEMES = ("postgresql", "postgres")
_URL_EXAMPLE = "postgresql://user:pass@host:5432/db"
_PASSWORD = re.compile(r"://[^/?#@:]*:([^/?#@]+)@")


class ConfigError(ValueError):
    """A setting has a value the service cannot use."""


@dataclass(frozen=True)
class TlsFiles:
    """The files the service's port serves TLS from (``spoke_grpc.tls`` reads them, and
    again whenever they change). With ``client_ca_file``, clients must present a
    certificate that one of its certificates signed (mutual TLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment.

    ``database_url`` is ``None`` for the embedded PostgreSQL under ``data_dir``.
    ``direct_database_url`` is for what needs a session of its own (migrations, the
    health probe, the mailer, LISTEN), past a transaction-pooling pgbouncer; ``None`` means
    ``database_url``. ``prepare_threshold`` is psycopg's (``None``: never prepare).
    """

    database_url: str | None = None
    direct_database_url: str | None = None
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    startup_options: bool = True
    listen: str = DEFAULT_LISTEN
    data_dir: Path = Path(".spoke")
    default_quota_tier: QuotaTier = QuotaTier.SMALL
    pool_min_size: int = 2
    pool_max_size: int = 10
    pool_timeout_seconds: float = 5.0
    usage_flush_interval_seconds: float = 1.0
    shutdown_grace_seconds: float = 10.0
    health_check_interval_seconds: float = 1.0
    auto_migrate: bool = True
    migrations_dir: Path = field(default_factory=lambda: REPO_ROOT / "migrations")
    bootstrap_token_file: Path | None = None
    log_level: str = "INFO"
    statement_timeout_seconds: float = 30.0
    compile_workers: int = 2
    # Compiles that may wait for a worker beyond those running (None: twice the workers);
    # seconds one may run; and the build cache's bounds (spoke_grpc.compiler).
    compile_queue: int | None = None
    # One organization's share: workers it may run at once, and compiles it may have
    # waiting (None: half the workers, half the queue, at least one; spoke_grpc.compile_queue).
    compile_org_workers: int | None = None
    compile_org_queue: int | None = None
    compile_time_limit_seconds: float = 20.0
    compile_cache_entries: int = 256
    compile_cache_bytes: int = 128 * 2**20
    # Where the code generators are looked up (None: .generators/node_modules/.bin, then
    # PATH), and whether protoc's plugins run under bubblewrap: auto (when it works here),
    # bwrap (required), none (spoke_grpc.generators).
    generators_path: tuple[str, ...] | None = None
    compile_sandbox: str = "auto"
    # The serialized pulls kept per process (spoke_grpc.response_cache); 0: off.
    response_cache_bytes: int = 64 * 2**20
    invitation_ttl_hours: float = 168.0
    smtp_url: str | None = None
    email_from: str = "spoke@localhost"
    email_interval_seconds: float = 1.0
    # How clients reach the service, for the invitation email's example call: host:port
    # (plaintext) or grpcs://host:port (TLS, e.g. at a load balancer). None: ``listen``.
    public_address: str | None = None
    # Operating (README "Operating"): metrics address (None: off), log format, overload cap
    # (0: none) and HTTP/2 connection lifetime and keepalive (0: grpc's default).
    metrics_listen: str | None = None
    log_format: str = "text"
    max_concurrent_calls: int = 100
    max_connection_age_seconds: float = 300.0
    max_connection_age_grace_seconds: float = 30.0
    keepalive_time_seconds: float = 60.0
    # SPOKE_TLS_*: the port serves TLS (None: plaintext).
    tls: TlsFiles | None = None
    # Abuse limits (README "Abuse limits"; 0: none): organizations a user may own and live
    # API tokens a user may hold (platform admins exempt), and anonymous calls per minute
    # per client address.
    max_orgs_per_user: int = 10
    max_tokens_per_user: int = 50
    anonymous_rate_limit: int = 60
    # Webhooks (README "Webhooks and events"): plain-http and private-address targets (off
    # unless for tests and development), how often the dispatcher looks for due deliveries,
    # its concurrent senders, each POST's timeout, the retry backoff (base doubled per
    # failure, capped) and how long a delivery is retried, and how many deliveries in a row
    # may fail for good before the webhook is disabled.
    webhook_allow_http: bool = False
    webhook_allow_private: bool = False
    webhook_interval_seconds: float = 1.0
    webhook_workers: int = 2
    webhook_timeout_seconds: float = 10.0
    webhook_retry_base_seconds: float = 10.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_retry_window_seconds: float = 86400.0
    webhook_max_failures: int = 10
    # EventService.WatchEvents: seconds a send may wait for a slow client before it is cut
    # off, and streams one process serves at once (0: no cap).
    watch_send_timeout_seconds: float = 10.0
    max_watchers: int = 1000

    @property
    def public_target(self) -> tuple[str, bool]:
        """Where clients call (``host:port``), and whether over TLS: as the scheme of
        ``public_address`` says, else as the service's own port does."""
        address = self.public_address or self.listen
        for scheme, tls in (("grpcs://", True), ("grpc://", False)):
            if address.startswith(scheme):
                return address.removeprefix(scheme), tls
        return address, self.tls is not None

    @property
    def token_file(self) -> Path:
        return self.bootstrap_token_file or self.data_dir / "bootstrap-token"

    def direct_url(self, database_url: str) -> str:
        """The URL for connections that need a session of their own, given the pool's URL."""
        return self.direct_database_url or database_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def number(name: str, default: float, *, minimum: float = 0) -> float:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if value < minimum:
                raise ConfigError(f"{name} must be at least {minimum}, got {raw!r}")
            return value

        tier_raw = env.get("DEFAULT_QUOTA_TIER", "") or defaults.default_quota_tier.value
        try:
            tier = QuotaTier(tier_raw.strip().lower())
        except ValueError:
            choices = ", ".join(t.value for t in QuotaTier)
            raise ConfigError(
                f"DEFAULT_QUOTA_TIER must be one of {choices}, got {tier_raw!r}"
            ) from None

        def flag(name: str) -> bool:
            raw = env.get(name) or "false"
            value = _BOOLEANS.get(raw.strip().lower())
            if value is None:
                raise ConfigError(f"{name} must be true or false, got {raw!r}")
            return value

        pool_min = int(number("SPOKE_POOL_MIN_SIZE", defaults.pool_min_size, minimum=1))
        pool_max = int(number("SPOKE_POOL_MAX_SIZE", defaults.pool_max_size, minimum=1))
        if pool_max < pool_min:
            raise ConfigError("SPOKE_POOL_MAX_SIZE must be at least SPOKE_POOL_MIN_SIZE")

        token_file = env.get("SPOKE_BOOTSTRAP_TOKEN_FILE")
        auto_migrate = env.get("SPOKE_AUTO_MIGRATE", "true").strip().lower()
        if auto_migrate not in {"true", "false", "1", "0", "yes", "no"}:
            raise ConfigError(f"SPOKE_AUTO_MIGRATE must be true or false, got {auto_migrate!r}")
        database_url = check_database_url(env.get("DATABASE_URL") or None)
        direct_url = check_database_url(
            env.get("SPOKE_DIRECT_DATABASE_URL") or None, name="SPOKE_DIRECT_DATABASE_URL"
        )
        if direct_url and not database_url:
            raise ConfigError(
                "SPOKE_DIRECT_DATABASE_URL is set but DATABASE_URL is not: set DATABASE_URL"
                " (e.g. the pgbouncer address) too, or unset both for the embedded PostgreSQL"
            )
        sandbox = (env.get("SPOKE_COMPILE_SANDBOX") or defaults.compile_sandbox).strip().lower()
        if sandbox not in {"auto", "bwrap", "none"}:
            raise ConfigError(f"SPOKE_COMPILE_SANDBOX must be auto, bwrap or none, got {sandbox!r}")
        generators_path = env.get("SPOKE_GENERATORS_PATH")
        startup_raw = env.get("SPOKE_STARTUP_OPTIONS") or "true"
        startup_options = _BOOLEANS.get(startup_raw.strip().lower())
        if startup_options is None:
            raise ConfigError(f"SPOKE_STARTUP_OPTIONS must be true or false, got {startup_raw!r}")
        return cls(
            database_url=database_url,
            direct_database_url=direct_url,
            prepare_threshold=parse_prepare_threshold(env.get("SPOKE_PREPARE_THRESHOLD")),
            startup_options=startup_options,
            listen=env.get("SPOKE_LISTEN") or defaults.listen,
            data_dir=Path(env.get("SPOKE_DATA_DIR") or defaults.data_dir),
            default_quota_tier=tier,
            pool_min_size=pool_min,
            pool_max_size=pool_max,
            pool_timeout_seconds=number("SPOKE_POOL_TIMEOUT", defaults.pool_timeout_seconds),
            usage_flush_interval_seconds=number(
                "SPOKE_USAGE_FLUSH_INTERVAL", defaults.usage_flush_interval_seconds
            ),
            shutdown_grace_seconds=number("SPOKE_SHUTDOWN_GRACE", defaults.shutdown_grace_seconds),
            health_check_interval_seconds=number(
                "SPOKE_HEALTH_INTERVAL", defaults.health_check_interval_seconds, minimum=0.05
            ),
            auto_migrate=auto_migrate in {"true", "1", "yes"},
            migrations_dir=Path(env.get("SPOKE_MIGRATIONS_DIR") or defaults.migrations_dir),
            bootstrap_token_file=Path(token_file) if token_file else None,
            log_level=(env.get("SPOKE_LOG_LEVEL") or defaults.log_level).upper(),
            statement_timeout_seconds=number(
                "SPOKE_STATEMENT_TIMEOUT", defaults.statement_timeout_seconds, minimum=0.1
            ),
            compile_workers=int(
                number("SPOKE_COMPILE_WORKERS", defaults.compile_workers, minimum=1)
            ),
            compile_queue=(
                int(number("SPOKE_COMPILE_QUEUE", 0))
                if env.get("SPOKE_COMPILE_QUEUE")
                else defaults.compile_queue
            ),
            compile_org_workers=(
                int(number("SPOKE_COMPILE_ORG_WORKERS", 1, minimum=1))
                if env.get("SPOKE_COMPILE_ORG_WORKERS")
                else defaults.compile_org_workers
            ),
            compile_org_queue=(
                int(number("SPOKE_COMPILE_ORG_QUEUE", 0))
                if env.get("SPOKE_COMPILE_ORG_QUEUE")
                else defaults.compile_org_queue
            ),
            compile_time_limit_seconds=number(
                "SPOKE_COMPILE_TIME_LIMIT", defaults.compile_time_limit_seconds, minimum=0.001
            ),
            compile_cache_entries=int(
                number("SPOKE_COMPILE_CACHE_ENTRIES", defaults.compile_cache_entries)
            ),
            compile_cache_bytes=int(
                number("SPOKE_COMPILE_CACHE_BYTES", defaults.compile_cache_bytes)
            ),
            generators_path=(generators.search_path(generators_path) if generators_path else None),
            compile_sandbox=sandbox,
            response_cache_bytes=int(
                number("SPOKE_RESPONSE_CACHE_BYTES", defaults.response_cache_bytes)
            ),
            invitation_ttl_hours=number(
                "SPOKE_INVITATION_TTL_HOURS", defaults.invitation_ttl_hours, minimum=0.001
            ),
            smtp_url=check_smtp_url(env.get("SPOKE_SMTP_URL") or None),
            email_from=env.get("SPOKE_EMAIL_FROM") or defaults.email_from,
            public_address=check_public_address(env.get("SPOKE_PUBLIC_ADDRESS") or None),
            email_interval_seconds=number(
                "SPOKE_EMAIL_INTERVAL", defaults.email_interval_seconds, minimum=0.01
            ),
            metrics_listen=check_listen(env.get("SPOKE_METRICS_LISTEN") or None),
            log_format=check_log_format(env.get("SPOKE_LOG_FORMAT") or defaults.log_format),
            max_concurrent_calls=int(
                number("SPOKE_MAX_CONCURRENT_CALLS", defaults.max_concurrent_calls)
            ),
            max_connection_age_seconds=number(
                "SPOKE_MAX_CONNECTION_AGE", defaults.max_connection_age_seconds
            ),
            max_connection_age_grace_seconds=number(
                "SPOKE_MAX_CONNECTION_AGE_GRACE", defaults.max_connection_age_grace_seconds
            ),
            keepalive_time_seconds=number("SPOKE_KEEPALIVE_TIME", defaults.keepalive_time_seconds),
            tls=check_tls(
                env.get("SPOKE_TLS_CERT_FILE") or None,
                env.get("SPOKE_TLS_KEY_FILE") or None,
                env.get("SPOKE_TLS_CLIENT_CA_FILE") or None,
            ),
            max_orgs_per_user=int(number("SPOKE_MAX_ORGS_PER_USER", defaults.max_orgs_per_user)),
            max_tokens_per_user=int(
                number("SPOKE_MAX_TOKENS_PER_USER", defaults.max_tokens_per_user)
            ),
            anonymous_rate_limit=int(
                number("SPOKE_ANONYMOUS_RATE_LIMIT", defaults.anonymous_rate_limit)
            ),
            webhook_allow_http=flag("SPOKE_WEBHOOK_ALLOW_HTTP"),
            webhook_allow_private=flag("SPOKE_WEBHOOK_ALLOW_PRIVATE"),
            webhook_interval_seconds=number(
                "SPOKE_WEBHOOK_INTERVAL", defaults.webhook_interval_seconds, minimum=0.01
            ),
            webhook_workers=int(
                number("SPOKE_WEBHOOK_WORKERS", defaults.webhook_workers, minimum=1)
            ),
            webhook_timeout_seconds=number(
                "SPOKE_WEBHOOK_TIMEOUT", defaults.webhook_timeout_seconds, minimum=0.1
            ),
            webhook_retry_base_seconds=number(
                "SPOKE_WEBHOOK_RETRY_BASE", defaults.webhook_retry_base_seconds
            ),
            webhook_retry_max_seconds=number(
                "SPOKE_WEBHOOK_RETRY_MAX", defaults.webhook_retry_max_seconds
            ),
            webhook_retry_window_seconds=number(
                "SPOKE_WEBHOOK_RETRY_WINDOW", defaults.webhook_retry_window_seconds
            ),
            watch_send_timeout_seconds=number(
                "SPOKE_WATCH_SEND_TIMEOUT", defaults.watch_send_timeout_seconds, minimum=0.01
            ),
            max_watchers=int(number("SPOKE_MAX_WATCHERS", defaults.max_watchers)),
            webhook_max_failures=int(
                number("SPOKE_WEBHOOK_MAX_FAILURES", defaults.webhook_max_failures, minimum=1)
            ),
        )


LOG_FORMATS = ("text", "json")


def check_log_format(raw: str) -> str:
    """``SPOKE_LOG_FORMAT``: ``text`` or ``json`` (one JSON object per line)."""
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ConfigError(f"SPOKE_LOG_FORMAT must be text or json, got {raw!r}")
    return value


def check_listen(address: str | None, name: str = "SPOKE_METRICS_LISTEN") -> str | None:
    """``address`` if it is ``host:port`` (``[v6]:port`` for IPv6); ConfigError if not."""
    if address is None:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"{name} must be host:port (e.g. 127.0.0.1:9464), got {address!r}")
    return address


def check_public_address(address: str | None) -> str | None:
    """``SPOKE_PUBLIC_ADDRESS``: ``host:port``, ``grpc://host:port`` or ``grpcs://host:port``."""
    if address is None:
        return None
    bare = address.removeprefix("grpcs://").removeprefix("grpc://")
    if "://" in bare or "/" in bare:
        raise ConfigError(
            "SPOKE_PUBLIC_ADDRESS must be host:port, grpc://host:port or grpcs://host:port"
            f" (e.g. grpcs://spoke.example.com:443), got {address!r}"
        )
    check_listen(bare, "SPOKE_PUBLIC_ADDRESS")
    return address


def check_tls(cert: str | None, key: str | None, client_ca: str | None) -> TlsFiles | None:
    """``SPOKE_TLS_CERT_FILE`` and ``SPOKE_TLS_KEY_FILE``, both or neither, and the optional
    ``SPOKE_TLS_CLIENT_CA_FILE`` (only with them). The files are read at start
    (``spoke_grpc.tls``), where an unreadable or invalid one is reported."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError(
                "SPOKE_TLS_CLIENT_CA_FILE is set but SPOKE_TLS_CERT_FILE and SPOKE_TLS_KEY_FILE"
                " are not: client certificates need a TLS port; set both, or unset it"
            )
        return None
    if cert is None or key is None:
        present, missing = (
            ("SPOKE_TLS_CERT_FILE", "SPOKE_TLS_KEY_FILE")
            if key is None
            else ("SPOKE_TLS_KEY_FILE", "SPOKE_TLS_CERT_FILE")
        )
        raise ConfigError(
            f"{present} is set but {missing} is not: TLS needs both the certificate (chain)"
            " and its private key, as PEM files; set both, or neither for plaintext"
        )
    return TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca is not None else None)


def check_database_url(url: str | None, *, name: str = "DATABASE_URL") -> str | None:
    """``url`` if it is a PostgreSQL URL libpq and yoyo can both use; ConfigError if not.

    ``name`` is the setting the messages name. Error messages never repeat the password.
    """
    if url is None:
        return None
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(f"{name} must be a URL like {_URL_EXAMPLE} (it has no scheme)")
    if scheme not in DATABASE_URL_SCHEMES:
        raise ConfigError(
            f"{name} has scheme {scheme!r}; only postgresql:// and"
            f" postgres:// are supported (e.g. {_URL_EXAMPLE})"
        )
    try:
        conninfo_to_dict(url)
        _ = urlsplit(url).port  # the migrations' URL parser needs one numeric port
    except (psycopg.Error, ValueError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise ConfigError(f"{name} is not a valid URL: {_redact(lines[0], url)}") from None
    return url


_NEVER_PREPARE = {"none", "off", "never", "false"}


def parse_prepare_threshold(raw: str | None) -> int | None:
    """``SPOKE_PREPARE_THRESHOLD``: psycopg's ``prepare_threshold`` (executions of a statement
    before it is prepared on the server; 0 prepares at once), or ``none``/``off`` for never
    (needed behind pgbouncer before 1.21 in transaction mode). Unset: psycopg's 5."""
    if raw is None or raw.strip() == "":
        return DEFAULT_PREPARE_THRESHOLD
    text = raw.strip().lower()
    if text in _NEVER_PREPARE:
        return None
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(
            "SPOKE_PREPARE_THRESHOLD must be a whole number of executions (0 or more) or"
            f" none/off to never prepare statements (behind pgbouncer), got {raw!r}"
        )
    return int(text)


def _redact(text: str, url: str) -> str:
    """``text`` without the password of ``url`` in it."""
    match = _PASSWORD.search(url)
    return text.replace(match.group(1), "***") if match else text


SMTP_DEFAULT_PORTS = {"smtp": 25, "smtps": 465}
_SMTP_EXAMPLE = "smtp://user:pass@mail.example.com:587?starttls=true"
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class SmtpServer:
    """Where invitation emails go, from ``SPOKE_SMTP_URL``.

    ``smtp://[user:pass@]host[:port]`` (plain, port 25; ``?starttls=true`` upgrades it) or
    ``smtps://…`` (implicit TLS, port 465).
    """

    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def check_smtp_url(url: str | None) -> str | None:
    """``url`` if it is a usable ``SPOKE_SMTP_URL``; ConfigError if not."""
    if url is not None:
        parse_smtp_url(url)
    return url


def parse_smtp_url(url: str) -> SmtpServer:
    """The SMTP server ``url`` names; ConfigError (never repeating the password) if none."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SMTP_DEFAULT_PORTS:
        raise ConfigError(
            "SPOKE_SMTP_URL must be an smtp:// or smtps:// URL"
            f" (e.g. {_SMTP_EXAMPLE}); unset it to turn email off"
        )
    parts = urlsplit(url)
    try:
        port = parts.port or SMTP_DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError("SPOKE_SMTP_URL has a bad port: use a number from 1 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"SPOKE_SMTP_URL has no host (e.g. {_SMTP_EXAMPLE})")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError("SPOKE_SMTP_URL takes no path or fragment: only host, port and ?starttls")
    options = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(options) - {"starttls"})
    if unknown:
        raise ConfigError(f"SPOKE_SMTP_URL has unknown options {unknown}: only starttls is known")
    raw = options.get("starttls", ["false"])
    starttls = _BOOLEANS.get(raw[-1].strip().lower()) if len(raw) == 1 else None
    if starttls is None:
        raise ConfigError(f"SPOKE_SMTP_URL option starttls must be true or false, got {raw!r}")
    if starttls and parts.scheme == "smtps":
        raise ConfigError("SPOKE_SMTP_URL: smtps:// is TLS already; starttls=true needs smtp://")
    if (parts.username is None) != (parts.password is None) or parts.username == "":
        raise ConfigError(
            "SPOKE_SMTP_URL needs both a user and a password (user:pass@host), or neither"
        )
    return SmtpServer(
        host=parts.hostname,
        port=port,
        implicit_tls=parts.scheme == "smtps",
        starttls=starttls,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
