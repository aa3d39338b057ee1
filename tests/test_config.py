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
    ],
)
def test_bad_settings_say_which_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(env)
