from __future__ import annotations

import pytest
from pydantic import ValidationError

from crawldex.config import Settings


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRAWLDEX_API_TOKEN", "t")
    monkeypatch.setenv("CRAWLDEX_DATABASE_URL", "postgresql://u@db:5432/crawldex")
    monkeypatch.setenv("CRAWLDEX_QDRANT_URL", "http://qdrant:6333/")
    monkeypatch.setenv("CRAWLDEX_TEI_URL", "")
    monkeypatch.setenv("CRAWLDEX_CHUNK_TOKENS", "200")
    settings = Settings()
    assert settings.api_token is not None
    assert settings.api_token.get_secret_value() == "t"
    assert settings.database_url == "postgresql+asyncpg://u@db:5432/crawldex"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert settings.tei_url is None
    assert settings.chunk_tokens == 200


def test_embedded_defaults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path)
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path / 'crawldex.db'}"
    assert settings.qdrant_url is None
    assert settings.tei_url is None


def test_overlap_must_be_smaller_than_chunk() -> None:
    with pytest.raises(ValidationError, match="OVERLAP"):
        Settings(chunk_tokens=100, chunk_overlap_tokens=100)


def test_secrets_do_not_print() -> None:
    settings = Settings(api_token="very-secret", firecrawl_webhook_secret="also-secret")
    assert "very-secret" not in repr(settings)
    assert "also-secret" not in str(settings)
