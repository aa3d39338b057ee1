from __future__ import annotations

from pathlib import Path

import pytest

from spoke_grpc.config import ConfigError, Settings
from spoke_grpc.tiers import QuotaTier


def test_defaults_serve_locally_on_embedded_postgres() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None
    assert settings.listen == "127.0.0.1:50051"
    assert settings.default_quota_tier is QuotaTier.SMALL
    assert settings.token_file == Path(".spoke/bootstrap-token")


def test_environment_overrides() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://db/spoke",
            "SPOKE_LISTEN": "0.0.0.0:6000",
            "DEFAULT_QUOTA_TIER": "Medium",
            "SPOKE_POOL_MIN_SIZE": "3",
            "SPOKE_POOL_MAX_SIZE": "30",
            "SPOKE_SHUTDOWN_GRACE": "2.5",
            "SPOKE_AUTO_MIGRATE": "false",
        }
    )
    assert settings.database_url == "postgresql://db/spoke"
    assert settings.listen == "0.0.0.0:6000"
    assert settings.default_quota_tier is QuotaTier.MEDIUM
    assert (settings.pool_min_size, settings.pool_max_size) == (3, 30)
    assert settings.shutdown_grace_seconds == 2.5
    assert settings.auto_migrate is False


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        pytest.param({"DEFAULT_QUOTA_TIER": "huge"}, "DEFAULT_QUOTA_TIER", id="tier"),
        pytest.param({"SPOKE_POOL_MIN_SIZE": "many"}, "SPOKE_POOL_MIN_SIZE", id="not-a-number"),
        pytest.param({"SPOKE_POOL_MAX_SIZE": "0"}, "SPOKE_POOL_MAX_SIZE", id="zero-pool"),
        pytest.param(
            {"SPOKE_POOL_MIN_SIZE": "5", "SPOKE_POOL_MAX_SIZE": "2"}, "at least", id="min-over-max"
        ),
        pytest.param({"SPOKE_SHUTDOWN_GRACE": "-1"}, "SPOKE_SHUTDOWN_GRACE", id="negative"),
        pytest.param({"SPOKE_AUTO_MIGRATE": "perhaps"}, "SPOKE_AUTO_MIGRATE", id="bool"),
        pytest.param({"SPOKE_COMPILE_SANDBOX": "jail"}, "SPOKE_COMPILE_SANDBOX", id="sandbox"),
    ],
)
def test_bad_settings_say_which_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://user:pass@db.example.com:5432/spoke",
        "postgres://db/spoke",
        "postgresql:///spoke?host=/var/run/postgresql",
        "postgresql://postgres:@/spoke?host=/tmp/pgserver",  # the embedded server's form
        "postgresql://[::1]:5432/spoke?sslmode=require&connect_timeout=5",
    ],
)
def test_postgresql_urls_are_accepted(url: str) -> None:
    assert Settings.from_env({"DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        pytest.param("notaurl", "no scheme", id="not-a-url"),
        pytest.param("host=db dbname=spoke", "no scheme", id="key-value-conninfo"),
        pytest.param("mysql://x/y", "scheme 'mysql'", id="mysql"),
        pytest.param("postgresql+psycopg://db/spoke", "scheme 'postgresql+psycopg'", id="driver"),
        pytest.param("POSTGRESQL://db/spoke", "scheme 'POSTGRESQL'", id="upper-case"),
        pytest.param("postgresql://u:s3cret@[::1/spoke", "IPv6", id="unclosed-ipv6"),
        pytest.param("postgresql://db:notaport/spoke", "notaport", id="bad-port"),
        pytest.param("postgresql://db:99999/spoke", "out of range", id="port-range"),
        pytest.param("postgresql://u:s3cret@db/spoke?nosuch=1", "nosuch", id="unknown-option"),
        pytest.param("postgresql://%zz@db/spoke", "percent-encoded", id="bad-escape"),
    ],
)
def test_bad_database_urls_say_what_is_wrong_without_the_password(url: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL") as raised:
        Settings.from_env({"DATABASE_URL": url})
    message = str(raised.value)
    assert fragment in message
    assert "s3cret" not in message
    assert len(message.splitlines()) == 1


def test_empty_database_url_means_embedded() -> None:
    assert Settings.from_env({"DATABASE_URL": ""}).database_url is None


PGBOUNCER = "postgresql://spoke:s3cret@pgbouncer:6432/spoke"
DIRECT = "postgresql://spoke:s3cret@postgres:5432/spoke"


@pytest.mark.parametrize(
    ("raw", "threshold"),
    [
        pytest.param(None, 5, id="unset-psycopg-default"),
        pytest.param("", 5, id="empty"),
        pytest.param("none", None, id="none"),
        pytest.param("OFF", None, id="off"),
        pytest.param("0", 0, id="prepare-at-once"),
        pytest.param("12", 12, id="number"),
    ],
)
def test_prepare_threshold(raw: str | None, threshold: int | None) -> None:
    env = {} if raw is None else {"SPOKE_PREPARE_THRESHOLD": raw}
    assert Settings.from_env(env).prepare_threshold == threshold


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"SPOKE_PREPARE_THRESHOLD": "-1"}, id="negative"),
        pytest.param({"SPOKE_PREPARE_THRESHOLD": "1.5"}, id="fraction"),
        pytest.param({"SPOKE_PREPARE_THRESHOLD": "sometimes"}, id="word"),
        pytest.param({"SPOKE_STARTUP_OPTIONS": "maybe"}, id="startup-options"),
        pytest.param({"SPOKE_DIRECT_DATABASE_URL": DIRECT}, id="direct-without-database-url"),
        pytest.param(
            {"DATABASE_URL": PGBOUNCER, "SPOKE_DIRECT_DATABASE_URL": "mysql://u:s3cret@db/x"},
            id="direct-bad-scheme",
        ),
    ],
)
def test_bad_pooler_settings_say_which_variable(env: dict[str, str]) -> None:
    (name,) = [k for k in env if k != "DATABASE_URL"]
    with pytest.raises(ConfigError, match=name) as raised:
        Settings.from_env(env)
    assert "s3cret" not in str(raised.value)


def test_the_direct_url_defaults_to_database_url() -> None:
    settings = Settings.from_env({"DATABASE_URL": PGBOUNCER})
    assert settings.direct_url(PGBOUNCER) == PGBOUNCER
    assert settings.startup_options is True
    behind = Settings.from_env(
        {
            "DATABASE_URL": PGBOUNCER,
            "SPOKE_DIRECT_DATABASE_URL": DIRECT,
            "SPOKE_STARTUP_OPTIONS": "false",
        }
    )
    assert behind.direct_url(PGBOUNCER) == DIRECT
    assert behind.startup_options is False


def test_abuse_limits_default_and_zero_turns_each_off() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.max_orgs_per_user,
        defaults.max_tokens_per_user,
        defaults.anonymous_rate_limit,
    ) == (10, 50, 60)
    off = Settings.from_env(
        {
            "SPOKE_MAX_ORGS_PER_USER": "0",
            "SPOKE_MAX_TOKENS_PER_USER": "0",
            "SPOKE_ANONYMOUS_RATE_LIMIT": "0",
        }
    )
    assert (off.max_orgs_per_user, off.max_tokens_per_user, off.anonymous_rate_limit) == (0, 0, 0)
    for name in ("SPOKE_MAX_ORGS_PER_USER", "SPOKE_MAX_TOKENS_PER_USER"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: "-1"})
