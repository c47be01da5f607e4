"""Security settings: URL passwords masked in repr and in the start-up summary; the limiter and CORS
settings as the environment spells them; client addresses as the rate limiter keys them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from crawldex.config import Settings, redact_url
from ingest_api.rate_limit import _address_key


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        (
            "postgresql+asyncpg://crawldex:hunter2@db:5432/crawldex",
            "postgresql+asyncpg://crawldex:***@db:5432/crawldex",
        ),
        ("redis://:hunter2@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:p%40ss@redis:6380", "rediss://default:***@redis:6380"),
        ("http://user:pw@collector:4318/v1/traces?x=a@b", "http://user:***@collector:4318/v1/traces?x=a@b"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("postgresql://postgres@db/crawldex", "postgresql://postgres@db/crawldex"),
        ("sqlite+aiosqlite:////data/crawldex.db", "sqlite+aiosqlite:////data/crawldex.db"),
        ("not a url", "not a url"),
    ],
)
def test_redact_url_masks_only_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_repr_str_and_startup_summary_mask_url_passwords() -> None:
    settings = Settings(
        database_url="postgresql://crawldex:db-pass-1234@db:5432/crawldex",
        redis_url="redis://:redis-pass-5678@redis:6379/0",
        qdrant_url="http://qdrant:6333",
        api_token="api-token-9012",
        qdrant_api_key="qdrant-key-3456",
    )
    for text in (repr(settings), str(settings), settings.startup_summary()):
        for secret in ("db-pass-1234", "redis-pass-5678", "api-token-9012", "qdrant-key-3456"):
            assert secret not in text
    assert "postgresql+asyncpg://crawldex:***@db:5432/crawldex" in settings.startup_summary()
    assert "redis://:***@redis:6379/0" in repr(settings)
    assert (
        settings.database_url == "postgresql+asyncpg://crawldex:db-pass-1234@db:5432/crawldex"
    )  # still usable


def test_limiter_replay_and_cors_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert defaults.rate_limit_enabled is True
    assert defaults.rate_limit_trust_forwarded is False
    assert defaults.cors_allow_origins == []
    assert defaults.webhook_replay_window_seconds == 300
    assert defaults.rate_limit_webhook_per_minute > defaults.rate_limit_api_per_minute
    monkeypatch.setenv("CRAWLDEX_RATE_LIMIT_ENABLED", "false")
    monkeypatch.setenv("CRAWLDEX_RATE_LIMIT_API_PER_MINUTE", "30")
    monkeypatch.setenv("CRAWLDEX_RATE_LIMIT_WEBHOOK_BURST", "7")
    monkeypatch.setenv("CRAWLDEX_RATE_LIMIT_TRUST_FORWARDED", "true")
    monkeypatch.setenv("CRAWLDEX_RATE_LIMIT_FORWARDED_HEADER", "X-Real-IP")
    monkeypatch.setenv("CRAWLDEX_WEBHOOK_REPLAY_WINDOW_SECONDS", "0")
    monkeypatch.setenv("CRAWLDEX_CORS_ALLOW_ORIGINS", '["https://search.example.com"]')
    settings = Settings()
    assert settings.rate_limit_enabled is False
    assert settings.rate_limit_api_per_minute == 30
    assert settings.rate_limit_webhook_burst == 7
    assert settings.rate_limit_trust_forwarded is True
    assert settings.rate_limit_forwarded_header == "X-Real-IP"
    assert settings.webhook_replay_window_seconds == 0
    assert settings.cors_allow_origins == ["https://search.example.com"]


@pytest.mark.parametrize(
    "field", ["rate_limit_api_per_minute", "rate_limit_api_burst", "rate_limit_webhook_per_minute"]
)
def test_limits_below_one_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings.model_validate({field: 0})


def test_negative_replay_window_is_refused() -> None:
    with pytest.raises(ValidationError, match="webhook_replay_window_seconds"):
        Settings(webhook_replay_window_seconds=-1)


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),  # same /64: the same client
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("testclient", None),
        ("203.0.113.7:443", None),
    ],
)
def test_addresses_are_keyed_by_host_and_ipv6_by_its_64(address: str, key: str | None) -> None:
    assert _address_key(address) == key
